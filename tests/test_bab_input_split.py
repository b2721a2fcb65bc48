"""Input-box clipping (``bounds.bab.box_clip``) and the side-by-side falsifier attacks.

Clipping may only drop points that satisfy the property: on random networks and boxes, every
sampled point whose margins are all <= 0 (a violation of the conjunction) must lie inside the
clipped box, and a box reported empty must contain no such point. Boxes are chosen so that
their bounds are close to 0, where clipping actually cuts.
"""
from __future__ import annotations

import numpy as np
import torch

from bounds.bab.chain import to_chain
from bounds.bab.box_clip import clip_boxes
from bounds.bab.falsify import Falsifier
from bounds.bab.input_split import staged_bounds
from certify.spec.vnnlib import Region, VnnlibProperty
from helpers.networks import random_mlp


def _margins(chain, x, C, d):
    return chain.forward(x) @ C.T + d


def test_clip_keeps_every_violating_point():
    g = torch.Generator().manual_seed(0)
    cut = kept_total = 0
    for trial in range(12):
        net = random_mlp([3, 12, 12, 3], g, dtype=torch.float64)
        chain = to_chain(net)
        C = torch.randn(2, 3, generator=g, dtype=torch.float64)
        N = 32
        lo = torch.rand(N, 3, generator=g, dtype=torch.float64) * 2 - 1
        hi = lo + 0.02 + torch.rand(N, 3, generator=g, dtype=torch.float64) * 0.2
        xs = lo.unsqueeze(1) + torch.rand(N, 4000, 3, generator=g, dtype=torch.float64) * (hi - lo).unsqueeze(1)
        m = _margins(chain, xs.reshape(-1, 3), C, torch.zeros(2, dtype=torch.float64)).reshape(N, 4000, 2)
        # shift d so that about 1% of each box's samples violate (all rows <= 0)
        q = torch.quantile(m.max(-1).values, 0.01, dim=1)                  # (N,)
        d = -q.unsqueeze(1).expand(N, 2).clone()
        res = staged_bounds(chain, lo, hi, C.expand(N, -1, -1), d, 0, "hybrid")
        l2, h2, empty = clip_boxes(lo, hi, res.lam_in, res.lam_lower)
        viol = ((m + d.unsqueeze(1)) <= 0).all(-1)                          # (N, 4000)
        inside = ((xs >= l2.unsqueeze(1)) & (xs <= h2.unsqueeze(1))).all(-1)
        assert not bool((viol & ~inside).any()), f"trial {trial}: a violating point was clipped away"
        assert not bool((viol.any(1) & empty).any()), f"trial {trial}: a box with a violation was called empty"
        assert bool(((l2 >= lo) & (h2 <= hi)).all())
        ok = ~empty
        cut += int((((h2 - l2) < (hi - lo) * 0.999).any(1) & ok).sum()) + int(empty.sum())
        kept_total += N
    assert cut > kept_total // 10, f"clipping cut only {cut} of {kept_total} boxes"


def _lp_feasible(lo, hi, a, b) -> bool:
    """Whether some x in [lo, hi] satisfies a x <= b (scipy's HiGHS, status checked)."""
    from scipy.optimize import linprog
    res = linprog(np.zeros(lo.numel()), A_ub=a.numpy(), b_ub=b.numpy(), bounds=list(zip(lo.tolist(), hi.tolist())),
                  method="highs")
    assert res.status in (0, 2), res.message
    return res.status == 0


def test_two_row_clip_is_empty_exactly_when_the_lp_is_infeasible():
    """For two half-spaces the best pair combination decides emptiness exactly (Farkas), which
    one-row clipping alone does not: random (lam, lower) rows on random boxes, compared with an LP
    over the half-spaces the rows define."""
    from bounds.bab.box_clip import pair_combinations
    g = torch.Generator().manual_seed(5)
    agree = only_pairs = 0
    for trial in range(300):
        n = 2 + trial % 5
        lo = torch.rand(1, n, generator=g, dtype=torch.float64) - 1
        hi = lo + 0.1 + torch.rand(1, n, generator=g, dtype=torch.float64)
        lam = torch.randn(1, 2, n, generator=g, dtype=torch.float64)
        c, rad = (lo + hi) / 2, (hi - lo) / 2
        width = (lam.abs() * rad.unsqueeze(1)).sum(-1)                       # (1, 2)
        lower = -width * torch.rand(1, 2, generator=g, dtype=torch.float64) * 1.2
        a = lam[0]
        b = (a * c).sum(-1) - (a.abs() * rad).sum(-1) - lower[0]
        feasible = _lp_feasible(lo[0], hi[0], a, b)
        pa, pb = pair_combinations(lo, hi, lam, b.unsqueeze(0))
        gap = float(torch.minimum(pa * lo, pa * hi).sum() - pb)
        if abs(gap) < 1e-7:
            continue                          # on the boundary: either answer is within rounding
        _, _, empty = clip_boxes(lo, hi, lam, lower)
        assert bool(empty[0]) == (not feasible), f"trial {trial}: clip says empty={bool(empty[0])}, LP {feasible}"
        agree += 1
        one = torch.zeros(1, dtype=torch.bool)
        for r in range(2):
            one |= clip_boxes(lo, hi, lam[:, r:r + 1], lower[:, r:r + 1])[2]
        only_pairs += int(bool(empty[0]) and not bool(one[0]))
    assert agree > 250 and only_pairs > 0, (agree, only_pairs)


def test_the_graph_search_follows_a_row_that_is_positive_at_the_centre():
    """A row <= 0 at a box's centre is never proved on it: of a conjunction's rows the search
    branches on the best bound among those positive there."""
    from bounds.bab.input_split_crown import _followed_row
    g = torch.Generator().manual_seed(2)
    net = random_mlp([3, 10, 2], g, dtype=torch.float64)
    lo = torch.rand(40, 3, generator=g, dtype=torch.float64) - 1
    hi = lo + 0.5
    C, d = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        y = net((lo + hi) / 2)
    d = -y[:, 0].median() * torch.tensor([1.0, 0.0], dtype=torch.float64) - y[:, 1].median() * torch.tensor([0.0, 1.0], dtype=torch.float64)
    m = y @ C.T + d
    low = torch.randn(40, 2, generator=g, dtype=torch.float64) - 5
    row = _followed_row(net, lo, hi, C, d, low)
    pos = m > 0
    for i in range(40):
        if bool(pos[i].any()):
            assert bool(pos[i, row[i]]), i
            best = low[i].masked_fill(~pos[i], -float("inf")).argmax()
            assert int(row[i]) == int(best)
        else:
            assert int(row[i]) == int(low[i].argmax())
    assert bool((pos.sum(1) == 1).any()) and bool((~pos.any(1)).any())


def test_parallel_pgd_finds_a_narrow_violation():
    g = torch.Generator().manual_seed(3)
    net = random_mlp([4, 16, 16, 2], g)
    x = (torch.rand(20000, 4, generator=g) * 2 - 1)
    with torch.no_grad():
        y = net(x)
    diff = (y[:, 0] - y[:, 1]).double()
    # violation: y0 - y1 <= t, with t chosen so that about 0.05% of the box violates
    t = float(torch.quantile(diff, 0.0005))
    A, b = np.array([[1.0, -1.0]]), np.array([t])
    prop = VnnlibProperty("<test>", 4, 2, [Region(-np.ones(4), np.ones(4), [(A, b)])])
    fal = Falsifier(net, prop, seed=0)
    lo, hi = -torch.ones(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64)
    ce, v = fal.pgd(lo, hi, [(A, b)], steps=60, restarts=1, parallel=500)
    assert v.shape == (1,)
    assert ce is not None
    xs, ys = ce
    assert np.all(xs >= -1) and np.all(xs <= 1)
    assert ys[0] - ys[1] <= t


def test_pgd_from_given_starts_reaches_a_basin_that_random_starts_miss():
    """``starts``: one attack from each given point. The violation value is 1 - 4 relu(0.5 -
    |x - x0|_1) on [-1, 1]^12: flat (zero gradient) outside an L1 ball of radius 0.5 around x0 and
    violated only within 0.25 of x0. Random restarts never land in the ball; attacks started
    within it (one start outside the box, clipped into it) reach the violation."""
    from certify.ir import Linear, ReLU, sequential
    n = 12
    x0 = torch.linspace(-0.5, 0.5, n)
    eye = torch.eye(n)
    net = sequential((n,), [Linear(torch.cat([eye, -eye]), torch.cat([-x0, x0])), ReLU(),
                            Linear(-torch.ones(1, 2 * n), torch.tensor([0.5])), ReLU(),
                            Linear(torch.tensor([[-4.0], [0.0]]), torch.tensor([1.0, 0.0]))])
    A, b = np.array([[1.0, -1.0]]), np.array([0.0])
    prop = VnnlibProperty("<test>", n, 2, [Region(-np.ones(n), np.ones(n), [(A, b)])])
    fal = Falsifier(net, prop, seed=0)
    lo, hi = -torch.ones(1, n, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)
    ce, _ = fal.pgd(lo, hi, [(A, b)], steps=20, restarts=8)
    assert ce is None
    g = torch.Generator().manual_seed(1)
    near = x0.double() + 0.4 / n * (torch.rand(8, n, generator=g, dtype=torch.float64) * 2 - 1)
    near[0, 0] = 3.0
    ce, v = fal.pgd(lo, hi, [(A, b)], steps=20, restarts=1, starts=near)
    assert ce is not None
    xs, ys = ce
    assert np.all(xs >= -1) and np.all(xs <= 1) and ys[0] - ys[1] <= 0
    assert np.abs(xs - x0.numpy()).sum() <= 0.25 + 1e-6


def test_paused_search_continues_to_the_same_verdict():
    """A search stopped by its deadline and continued from ``state`` decides what an uninterrupted
    one decides, bounding no box twice (the domain counts add up)."""
    from bounds.bab.input_split import input_split_bab
    g = torch.Generator().manual_seed(5)
    net = random_mlp([3, 16, 16, 2], g, dtype=torch.float64)
    chain = to_chain(net)
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    xs = torch.rand(20000, 3, generator=g, dtype=torch.float64) * 2 - 1
    m = _margins(chain, xs, C, torch.zeros(1, dtype=torch.float64))[:, 0]
    d = torch.tensor([-float(m.min()) + 0.2], dtype=torch.float64)     # sampled minimum 0.2 above 0: unsat
    import time

    def run(pauses):
        st, state = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}, {}
        verdict = "timeout"
        for k in range(pauses + 1):
            until = time.monotonic() + (30.0 if k == pauses else 0.0)
            verdict, _ = input_split_bab(chain, lo, hi, C, d, until, lambda x: None, st, batch=8, iterations=0,
                                         candidates=2, state=state)
            if verdict != "timeout":
                break
        return verdict, st["domains"], state

    whole, n_whole, _ = run(0)
    paused, n_paused, state = run(3)
    assert whole == paused == "unsat"
    assert n_whole > 10                      # a real search, not a root proof
    assert n_whole == n_paused and not state


def test_face_biased_sampling_finds_a_violation_on_the_boundary():
    """``Falsifier.sample``: y0 = 1000 sum_i relu(distance of x_i to within 0.001 of a chosen face)
    on [0, 1]^5 reaches 3.5 only when 4 of the 5 coordinates sit (almost) on their faces (x0..x2
    up, x3, x4 down): a uniform sample lands there with probability ~1e-12, PGD sees zero gradient
    outside the slabs, the box's corners give 2 and 3. Samples pinned to faces find it, inside
    the box exactly, and what they return violates the property."""
    from certify.ir import Linear, ReLU, sequential
    n = 5
    sign = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    net = sequential((n,), [Linear(torch.diag(sign), torch.tensor([-0.999] * 3 + [0.001] * 2)), ReLU(),
                            Linear(torch.cat([1000 * torch.ones(1, n), torch.zeros(1, n)]), torch.zeros(2))])
    A, b = np.array([[-1.0, 1.0]]), np.array([-3.5])          # violation: y0 - y1 >= 3.5
    lo_np, hi_np = np.zeros(n), np.ones(n)
    prop = VnnlibProperty("<test>", n, 2, [Region(lo_np, hi_np, [(A, b)])])
    fal = Falsifier(net, prop, seed=0)
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    assert fal.check_points(torch.stack([lo, hi, (lo + hi) / 2])) is None
    ce, _ = fal.pgd(lo.unsqueeze(0), hi.unsqueeze(0), [(A, b)], steps=50, restarts=1, parallel=2000)
    assert ce is None
    assert fal.sample(lo, hi, [(A, b)], face=0.0) is None                  # uniform samples miss it
    ce = fal.sample(lo, hi, [(A, b)], n=50000, face=0.3)
    assert ce is not None
    xs, ys = ce
    assert np.all(xs >= 0) and np.all(xs <= 1) and ys[0] - ys[1] >= 3.5
    assert int(np.isclose(xs, [1, 1, 1, 0, 0], atol=0.001).sum()) >= 4


def test_instability_shares_add_up_to_the_unstable_neurons():
    """``_forward_pre``'s instability: each unstable neuron's range is shared out over the inputs,
    so per box the shares add up to the number of unstable neurons; an input of width 0 has none."""
    from bounds.bab.chain_bounds import _forward_pre
    g = torch.Generator().manual_seed(3)
    chain = to_chain(random_mlp([4, 16, 16, 16, 3], g, dtype=torch.float64))
    lo = torch.rand(64, 4, generator=g, dtype=torch.float64) * 2 - 1
    hi = lo + torch.rand(64, 4, generator=g, dtype=torch.float64) * 0.5
    hi[:, 2] = lo[:, 2]
    inst = []
    out = _forward_pre(chain, lo, hi, inst=inst)
    unstable = sum(((l < 0) & (u > 0)).sum(1) for l, u in out).double()
    assert unstable.sum() > 100
    assert torch.allclose(inst[0].sum(1), unstable, rtol=1e-9, atol=1e-9)
    assert bool((inst[0] >= 0).all()) and bool((inst[0][:, 2] == 0).all())


def _blind_spot_chain():
    """f(x) = x_0 + 0.1 + [relu(x_1) + relu(-x_1) - relu(x_1) - relu(-x_1)] (= x_0 + 0.1): CROWN's
    bound has coefficient 0 on x_1 but a gap of half x_1's width from the four unstable ReLUs."""
    from bounds.bab.chain import Chain
    w1 = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]], dtype=torch.float64)
    w2 = torch.tensor([[1.0, -1, 1, 1, -1, -1]], dtype=torch.float64)
    return Chain([w1, w2], [torch.zeros(6, dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64)])


def test_instability_candidate_splits_the_input_the_scores_cannot_see():
    """On ``_blind_spot_chain`` over x_0 in [0, 1], x_1 in [-1, 1] (minimum 0.1: unsat), the score
    |coefficient| x width never picks x_1, so the 1-candidate search only thins x_0 out and ends
    without a proof; with the instability candidate it splits x_1 and proves the box at once."""
    import time
    from bounds.bab.input_split import input_split_bab
    chain = _blind_spot_chain()
    lo, hi = torch.tensor([0.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    C, d = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    xs = lo + torch.rand(10000, 2, dtype=torch.float64) * (hi - lo)
    assert float(chain.forward(xs).min()) >= 0.1 - 1e-12

    def run(instability):
        st = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
        verdict, _ = input_split_bab(chain, lo, hi, C, d, time.monotonic() + 10, lambda x: None, st, batch=8,
                                     iterations=0, candidates=1, instability=instability)
        return verdict, st["domains"]

    blind, _ = run(False)
    seen, n = run(True)
    assert blind in ("unknown", "timeout")
    assert seen == "unsat" and n <= 16


def test_graph_search_stops_inside_a_bound_call_at_its_deadline():
    """A CROWN pass past its deadline raises ``BoundTimeout``; the graph search then ends as a
    timeout and keeps the box it was bounding open in its state (a resumed call goes on with it)."""
    import time

    import pytest

    import bounds.bab.input_split_crown as isc
    from bounds.crown import BoundTimeout
    net = random_mlp([3, 8, 2], torch.Generator().manual_seed(0), dtype=torch.float64)
    lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    C, d = torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.tensor([100.0], dtype=torch.float64)
    with pytest.raises(BoundTimeout):
        isc.graph_bounds(net, lo, hi, C, d, 1, deadline=time.monotonic() - 1)
    stats = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
    state: dict = {}
    verdict, _ = isc.input_split_graph(net, lo[0], hi[0], C, d, time.monotonic() + 60, lambda xs: None, stats,
                                       state=state, bound_deadline=time.monotonic() - 1)
    assert verdict == "timeout" and stats["bound_calls"] == 0
    assert torch.equal(torch.cat([s[0] for s in state["todo"]]), lo)
    verdict, _ = isc.input_split_graph(net, lo[0], hi[0], C, d, time.monotonic() + 60, lambda xs: None, stats,
                                       state=state)
    assert verdict == "unsat"


def test_widest_candidate_splits_the_input_the_scores_cannot_see():
    """``_blind_spot_chain`` as a general network: with one candidate (the best score) the graph
    input split only thins x_0 out and ends without a proof; with the widest-input candidate
    beside it, it splits x_1 at 0 and proves the box (minimum 0.1) in a few boxes."""
    import time

    from bounds.bab.input_split_crown import input_split_graph
    from certify.ir import Linear, ReLU, sequential
    chain = _blind_spot_chain()
    net = sequential((2,), [Linear(chain.weights[0], chain.biases[0]), ReLU(), Linear(chain.weights[1], chain.biases[1])])
    lo, hi = torch.tensor([0.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    C, d = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)

    def run(k):
        st = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
        verdict, _ = input_split_graph(net, lo, hi, C, d, time.monotonic() + 5, lambda x: None, st, batch=64,
                                       candidates=k)
        return verdict, st["domains"]

    assert run(1)[0] in ("unknown", "timeout")
    verdict, n = run(2)
    assert verdict == "unsat" and n <= 16


def test_parent_bounds_keep_the_graph_input_split_exact():
    """With each child's pre-activation bounds intersected with its parent's (``reuse_parent``),
    the graph input split still decides thresholds just below and above the exact minimum (MILP)
    of small ReLU networks, and the reference never loosens a box's CROWN bounds below the
    sampled minimum."""
    import time

    from bounds.bab.input_split_crown import graph_bounds, input_split_graph
    from helpers.oracles import exact_min
    from helpers.properties import random_case
    for seed in range(4):
        net, prop, lo, hi, A, b = random_case(500 + seed, [3, 10, 10, 2])
        m = exact_min(net, lo, hi, A, b)
        net64 = net.to(torch.float64)
        lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
        for tau, truth in ((-0.02, "unsat"), (0.02, "sat")):
            C, d = torch.as_tensor(A, dtype=torch.float64), -torch.as_tensor(b + m + tau, dtype=torch.float64)
            found = []

            def try_points(xs, C=C, d=d):
                with torch.no_grad():
                    v = (net64(xs.reshape((-1,) + net64.input_shape)).reshape(xs.shape[0], -1) @ C.T + d).max(1).values
                return xs[v.argmin()] if bool((v <= 0).any()) else None

            st = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
            verdict, ce = input_split_graph(net64, lo_t, hi_t, C, d, time.monotonic() + 20, try_points, st, batch=32,
                                            candidates=3, reuse_parent=True)
            assert verdict == truth, (seed, tau, verdict)
        keep: dict = {}
        C, d = torch.as_tensor(A, dtype=torch.float64), -torch.as_tensor(b, dtype=torch.float64)
        graph_bounds(net64, lo_t[None], hi_t[None], C, d, 1, keep=keep)
        g = torch.Generator().manual_seed(seed)
        sub_lo = lo_t + (hi_t - lo_t) * 0.5 * torch.rand(lo_t.shape, generator=g, dtype=torch.float64)
        sub_hi = sub_lo + (hi_t - sub_lo) * torch.rand(lo_t.shape, generator=g, dtype=torch.float64)
        low, _, _ = graph_bounds(net64, sub_lo[None], sub_hi[None], C, d, 1, reference=keep)
        xs = sub_lo + (sub_hi - sub_lo) * torch.rand(20000, lo_t.numel(), generator=g, dtype=torch.float64)
        with torch.no_grad():
            y = net64(xs.reshape((-1,) + net64.input_shape)).reshape(xs.shape[0], -1)
        assert float(low.max()) <= float((y @ C.T + d).max(1).values.min()) + 1e-9
