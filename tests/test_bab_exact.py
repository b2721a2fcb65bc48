"""Branch and bound against an exact MILP (scipy/HiGHS) on small random ReLU networks.

For each random network and random property (an input box and a conjunction ``A y <= b``), the
MILP computes t* = min over the box of max_r (A y - b)_r exactly (big-M from interval bounds);
the property is violated (sat) iff t* <= 0. BaB must agree whenever it answers, answer almost
always, and every sat must carry a counterexample that violates the property in onnxruntime.
"""
from __future__ import annotations

import time

import highspy
import numpy as np
import pytest
import torch

from bounds.bab import verify
from bounds.bab.chain import to_chain
from bounds.bab.relu_split import relu_split_bab
from certify.vnncomp import check_counterexample_ort
from certify.ir import Linear, ReLU
from certify.spec.vnnlib import Region, VnnlibProperty, conjunction_margins
from helpers.oracles import exact_min
from helpers.properties import random_case


@pytest.mark.parametrize("method, sizes, use_milp", [("input", [2, 8, 8, 3], False), ("relu", [3, 6, 6, 2], False),
                                                     ("relu", [4, 10, 3], False), ("input", [3, 6, 6, 6, 2], False),
                                                     ("relu", [3, 8, 8, 2], True)])
def test_bab_agrees_with_milp(method, sizes, use_milp, tmp_path):
    """``use_milp``: ReLU splitting with the HiGHS MILP beside it (either may decide)."""
    decided, sats, unsats = 0, 0, 0
    n = 12
    for seed in range(n):
        net, prop, lo, hi, A, b = random_case(1000 * len(sizes) + seed, sizes)
        # shift b so that t* = -tau is near 0 (the hard cases): t*(b + c) = t*(b) - c
        tau = (0.002 + 0.05 * (seed % 4) / 3) * (1 if seed % 3 else -1)
        b = b + exact_min(net, lo, hi, A, b) + tau
        prop.regions[0].disjuncts[0] = (A, b)
        t_star = exact_min(net, lo, hi, A, b)
        assert t_star == pytest.approx(-tau, abs=1e-6)
        # odd seeds: no attack first, so branch and bound itself must find the sats
        res = verify(net, prop, timeout=20, method=method, pgd_restarts=2, falsify_first=seed % 2 == 0,
                     use_milp=use_milp)
        if abs(t_star) < 1e-6:
            continue   # on the boundary: either answer is within float tolerance
        if res.status == "sat":
            assert t_star < 0, (seed, t_star)
            x, y = res.counterexample
            assert prop.violated_by(x, y)
            path = tmp_path / f"n{seed}.onnx"
            net.to_onnx(path)
            assert check_counterexample_ort(str(path), prop, x, tol=1e-5)
            sats += 1
        elif res.status == "unsat":
            assert t_star > 0, (seed, t_star)
            unsats += 1
        decided += res.status in ("sat", "unsat")
    assert decided >= n - 2
    assert sats >= 1 and unsats >= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_obligations_searched_on_two_threads_agree_with_milp(workers):
    """Without a MILP, ReLU splitting searches two obligations at once (one thread each). Four
    disjuncts per property, each with its exact minimum at -tau_j (sat iff some tau_j > 0): the
    verdicts agree with the exact minima, with one worker as with two."""
    decided = 0
    for seed in range(6):
        net, prop, lo, hi, A, b = random_case(700 + seed, [3, 10, 10, 3])
        rng = np.random.default_rng(seed)
        disjuncts, taus = [], []
        for k in range(4):
            A = rng.normal(size=(1, 3))
            tau = (0.01 + 0.04 * k) * (1 if (seed % 2 and k == 3) else -1)   # odd seeds: the last is violated
            b = np.zeros(1)
            b = b + exact_min(net, lo, hi, A, b) + tau
            disjuncts.append((A, b))
            taus.append(tau)
        prop = VnnlibProperty("random", 3, 3, [Region(lo, hi, disjuncts)])
        res = verify(net, prop, timeout=20, method="relu", pgd_restarts=1, falsify_first=False, use_milp=False,
                     workers=workers)
        if res.status == "sat":
            assert max(taus) > 0 and prop.violated_by(*res.counterexample)
        elif res.status == "unsat":
            assert max(taus) < 0
        decided += res.status in ("sat", "unsat")
    assert decided == 6


def test_unsat_needs_branching_on_a_hard_case():
    """A property whose root bound is negative but which holds: BaB must branch and prove it."""
    for seed in range(40):
        net, prop, lo, hi, A, b = random_case(seed, [2, 12, 12, 2])
        t_star = exact_min(net, lo, hi, A, b)
        if t_star > 1e-3:
            res = verify(net, prop, timeout=20, method="relu", pgd_restarts=1, use_milp=False)
            if res.stats.get("root_lower", 1.0) < 0:
                assert res.status == "unsat" and res.stats["domains"] > 1
                return
    pytest.fail("no random case needed branching")


def test_relu_split_resumed_in_slices_does_what_one_run_does():
    """A search stopped at its deadline and called again with its ``state`` goes on where it
    stopped: in 0.05 s slices (widened when a slice fits no batch) it proves a property that needs ~1000 domains with exactly the
    domains of one uninterrupted run (the batches are the same), never restarting from the root.
    (No alpha/beta steps and no refinement: those stop at the deadline, so slices would loosen them.)"""
    net, prop, lo, hi, A, b = random_case(9, [2, 12, 12, 2])
    assert exact_min(net, lo, hi, A, b) > 1e-3
    chain = to_chain(net)
    C, d = (torch.as_tensor(v) for v in conjunction_margins(A, b))
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    kw = dict(batch=8, iterations=0, recompute=False)
    one = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
    assert relu_split_bab(chain, lo, hi, C, d, time.monotonic() + 60, lambda xs: None, one, **kw)[0] == "unsat"
    assert one["domains"] > 200
    sliced = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
    state, calls, slice_s = {}, 0, 0.05
    while calls < 2000:
        calls += 1
        before = sliced["domains"]
        verdict, _ = relu_split_bab(chain, lo, hi, C, d, time.monotonic() + slice_s, lambda xs: None, sliced,
                                    state=state, **kw)
        if verdict != "timeout":
            break
        assert state["lower"].numel() > 0
        if sliced["domains"] == before:     # a loaded machine: no batch fit into the slice, widen it
            slice_s *= 2
    assert verdict == "unsat" and calls > 3
    assert sliced["domains"] == one["domains"]


@pytest.mark.parametrize("encoding", ["box_encoding", "compact_encoding"])
def test_chain_milp_decisions_match_the_exact_minimum(encoding):
    """``ChainMilp`` over alpha-CROWN root bounds (conjunctions of 1-2 rows), with either
    encoding: a proof only where the exact minimum t* is positive, a candidate only where it is
    negative (and the candidate's float64 value is within the solver tolerance of a violation);
    every case away from 0 decided."""
    import bounds.bab.milp_chain as mc
    from bounds.bab.milp_chain import ChainMilp
    box_encoding = getattr(mc, encoding)
    from bounds.bab.chain_bounds import optimized_pre_bounds
    from certify.spec.vnnlib import conjunction_margins
    proved = found = 0
    for seed in range(10):
        net, prop, lo, hi, A, b = random_case(500 + seed, [3, 10, 10, 3])
        tau = 0.03 * (1 if seed % 2 else -1)
        b = b + exact_min(net, lo, hi, A, b) + tau          # t* = -tau
        ch = to_chain(net)
        l64, h64 = torch.as_tensor(lo).reshape(1, -1), torch.as_tensor(hi).reshape(1, -1)
        pre = optimized_pre_bounds(ch, l64, h64, iterations=5)
        C, d = (torch.as_tensor(v) for v in conjunction_margins(A, b))
        m = ChainMilp(ch, box_encoding(ch, l64[0], h64[0], pre), C, d)
        m.solve(20.0)
        assert m.decided, (seed, m.status)
        if m.proved:
            assert -tau > 0, seed
            proved += 1
        else:
            y = ch.forward(torch.as_tensor(m.candidate).reshape(1, -1))[0].numpy()
            assert -tau < 0 and (A @ y - b).max() < 1e-5, seed
            assert np.all(m.candidate >= lo - 1e-9) and np.all(m.candidate <= hi + 1e-9)
            found += 1
    assert proved >= 3 and found >= 3


def test_compact_encoding_has_the_exact_minimum():
    """``compact_encoding`` (stable ReLUs substituted away) and ``box_encoding`` describe the same
    MILP: solved to optimality, both give the exact minimum t* of max_r (A f(x) - b)_r over the box
    (found independently by ``exact_min``), on boxes of several widths (some with many stable
    neurons, active and inactive, some with none unstable: a plain LP)."""
    from bounds.bab.milp_chain import ChainMilp, box_encoding, compact_encoding
    from bounds.bab.chain_bounds import optimized_pre_bounds
    from certify.solvers.highs import make_highs, set_objective
    from certify.spec.vnnlib import conjunction_margins
    kinds = set()
    for seed in range(8):
        net, prop, lo, hi, A, b = random_case(540 + seed, [3, 12, 12, 3])
        c, r = (lo + hi) / 2, (hi - lo) / 2 * [1.0, 0.3, 0.05, 0.002][seed % 4]
        lo, hi = c - r, c + r
        ch = to_chain(net)
        l64, h64 = torch.as_tensor(lo).reshape(1, -1), torch.as_tensor(hi).reshape(1, -1)
        pre = optimized_pre_bounds(ch, l64, h64, iterations=5)
        C, d = (torch.as_tensor(v) for v in conjunction_margins(A, b))
        opt = []
        for enc in (box_encoding(ch, l64[0], h64[0], pre), compact_encoding(ch, l64[0], h64[0], pre)):
            m = ChainMilp(ch, enc, C, d)
            h = make_highs(m.enc, 30.0, m.options)
            cost = np.zeros(m.enc.A.shape[1])
            cost[-1] = 1.0
            set_objective(h, cost)
            h.run()
            assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
            opt.append(h.getInfo().objective_function_value)
        t_star = exact_min(net, lo, hi, A, b)
        assert abs(opt[0] - t_star) < 1e-6 and abs(opt[1] - t_star) < 1e-6, (seed, opt, t_star)
        kinds.add(sum(int(((a < 0) & (u > 0)).sum()) for a, u in pre) == 0)
    assert kinds == {True, False}


@pytest.mark.parametrize("threads", [1, 2])
def test_milp_queue_decides_obligations_in_turn_and_skips_dropped_ones(threads):
    """``MilpQueue``: one or two threads solve the obligations' MILPs in order until the deadline. Of
    four (t* = +0.03, -0.03, +0.05, -0.05) the proved ones are exactly those with t* > 0, the
    candidates exactly those with t* < 0 (each violating the property within the solver's
    tolerance), and an obligation dropped before its turn (branch and bound decided it) is never
    solved."""
    import time
    from bounds.bab.milp_chain import ChainMilp, MilpQueue, box_encoding
    from bounds.bab.chain_bounds import optimized_pre_bounds
    from certify.spec.vnnlib import conjunction_margins
    net, prop, lo, hi, A, b0 = random_case(520, [3, 10, 10, 3])
    ch = to_chain(net)
    l64, h64 = torch.as_tensor(lo).reshape(1, -1), torch.as_tensor(hi).reshape(1, -1)
    enc = box_encoding(ch, l64[0], h64[0], optimized_pre_bounds(ch, l64, h64, iterations=5))
    t_star = exact_min(net, lo, hi, A, b0)
    taus = [-0.03, 0.03, -0.05, 0.05, -0.04]         # t* = -tau
    jobs = [(A, b0 + t_star + tau) for tau in taus]
    made = []

    def make(j):
        made.append(j)
        C, d = (torch.as_tensor(v) for v in conjunction_margins(*jobs[j]))
        return ChainMilp(ch, enc, C, d)

    q = MilpQueue(range(5), make, time.monotonic() + 60.0, threads=threads)
    q.drop(4)                     # decided elsewhere while the queue works on obligation 0
    q.wait()
    assert 4 not in made and q.solves == 4 and not q._worker.alive()
    assert q.proved == {0, 2}
    assert set(q.candidates) == {1, 3}
    for j, x in q.candidates.items():
        y = ch.forward(torch.as_tensor(x).reshape(1, -1))[0].numpy()
        assert (A @ y - jobs[j][1]).max() < 1e-5


def test_residual_network_uses_generic_input_split():
    """A residual net is not a chain: BaB splits the input over the bounds engine's CROWN. The
    thresholds sit 0.3 below / 0.05 above the minimum over a fine grid (Lipschitz slack < 0.05)."""
    from certify.ir import Add, Network, Node
    g = torch.Generator().manual_seed(0)
    W1, W2, W3 = (torch.randn(6, 2, generator=g), torch.randn(6, 6, generator=g) / 3, torch.randn(1, 6, generator=g) / 3)
    net = Network((2,), [Node("a", Linear(W1, torch.zeros(6)), ("input",)), Node("r", ReLU(), ("a",)),
                         Node("b", Linear(W2, torch.zeros(6)), ("r",)), Node("s", Add(), ("a", "b")),
                         Node("t", ReLU(), ("s",)), Node("o", Linear(W3, torch.zeros(1)), ("t",))])
    assert to_chain(net) is None
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 401), torch.linspace(-1, 1, 401), indexing="ij"), -1)
    with torch.no_grad():
        m = float(net(grid.reshape(-1, 2)).min())
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    for thr, expect in [(m - 0.3, "unsat"), (m + 0.05, "sat")]:
        prop = VnnlibProperty("res", 2, 1, [Region(lo, hi, [(np.array([[1.0]]), np.array([thr]))])])
        res = verify(net, prop, timeout=30, falsify_first=False)
        assert res.status == expect and res.stats["method"] == "generic-input"


@pytest.mark.parametrize("instability, wait", [(False, True), (True, False)])
def test_input_split_with_box_milps_agrees_with_the_exact_minimum(instability, wait):
    """Input splitting that parks every open box below the root with ``BoxMilps`` (depth 0, any
    number of unstable ReLUs): on cases with the exact minimum t* = +0.02 it proves unsat, with
    MILPs that did prove boxes; with t* = -0.02 it never says unsat, and a sat comes with a point
    that violates the property in float64. The threads are gone after ``close``. Also with the
    instability candidate, and with ``wait=False`` (the search returns while boxes are parked and
    is called again with its state until it decides)."""
    import time
    from bounds.bab.input_split import BoxMilps, input_split_bab
    from certify.spec.vnnlib import conjunction_margins
    used = found = 0
    for seed in range(6):
        net, prop, lo, hi, A, b0 = random_case(700 + seed, [3, 12, 12, 2])
        ch = to_chain(net)
        t_star = exact_min(net, lo, hi, A, b0)
        for tau in (-0.02, 0.02):                      # t* = -tau
            C, d = (torch.as_tensor(v) for v in conjunction_margins(A, b0 + t_star + tau))
            lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)

            def try_points(xs, C=C, d=d):
                m = (ch.forward(xs.double()) @ C.T + d).max(1).values
                i = int(m.argmin())
                return (xs[i].numpy(), None) if m[i] <= 0 else None

            stats = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
            milp = BoxMilps(ch, lo_t, hi_t, C, d, max_unstable=1000, depth=0)
            state, end, verdict = {}, time.monotonic() + 30, "timeout"
            while verdict == "timeout" and time.monotonic() < end:
                verdict, ce = input_split_bab(ch, lo_t, hi_t, C, d, end, try_points, stats, batch=16, iterations=0,
                                              candidates=2, milp=milp, instability=instability, wait=wait,
                                              state=state)
            milp.close()
            assert not milp._worker.alive()
            if tau < 0:
                assert verdict == "unsat", seed
                used += milp.proved
            else:
                assert verdict in ("sat", "timeout", "unknown"), seed
                if verdict == "sat":
                    found += 1
                    x = torch.as_tensor(ce[0]).reshape(1, -1)
                    assert np.all(ce[0] >= lo - 1e-12) and np.all(ce[0] <= hi + 1e-12)
                    assert float((ch.forward(x) @ C.T + d).max()) <= 0
    assert used > 0 and found >= 3


def test_relu_split_worst_open_bound_never_goes_down():
    """A child domain lies inside its parent, so it keeps at least its parent's bound: the worst
    open bound of a search (what it has proved of the whole box), read after every batch (the
    search resumed from its ``state``), never goes down, though a child's own alpha/beta bound
    can be below its parent's (without the parent's bound this fails)."""
    net, prop, lo, hi, A, b = random_case(9, [2, 12, 12, 2])
    chain = to_chain(net)
    C, d = (torch.as_tensor(v) for v in conjunction_margins(A, b))
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    stats = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
    state, worst, polls = {}, [], [0]

    def every_other_poll():   # one batch per call: the search stops at its second poll
        polls[0] += 1
        return polls[0] % 2 == 0

    for _ in range(2000):
        verdict, _ = relu_split_bab(chain, lo, hi, C, d, time.monotonic() + 60, lambda xs: None, stats,
                                    state=state, batch=4, iterations=2, warm_start=False, stop=every_other_poll)
        if verdict != "timeout":
            break
        worst.append(float(state["lower"].min()))
    assert verdict == "unsat" and len(worst) > 20
    assert all(b >= a for a, b in zip(worst, worst[1:]))
