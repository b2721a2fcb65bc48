"""The verification search as a schedule of stages (``bounds.bab.stages``): verdicts against exact
answers on chain and non-chain networks, the chain fast paths against the general input split,
soundness when stopped at any time, the split choice from the root scores, the stats naming the
deciding stage, networks the bound engine cannot relax, and adding a stage."""
from __future__ import annotations

import importlib
import time

import numpy as np
import pytest
import torch

from bounds.bab import VerifyOptions, verify
from bounds.bab.choice import effective_count, prefer_input_split, split_counts, split_kinds
from bounds.bab.input_split_crown import input_split_graph
from bounds.bab.stages import GraphInputSplit
from certify.errors import CertifyError
from certify.ir import Add, Conv2d, Flatten, Linear, MaxPool2d, Network, Node, ReLU, Reshape, Sigmoid, Tanh, sequential
from certify.spec.vnnlib import Region, VnnlibProperty, conjunction_margins
from certify.vnncomp import check_counterexample_ort
from helpers.networks import DT, mixed, resnet
from helpers.oracles import exact_min
from helpers.properties import random_case

verify_mod = importlib.import_module("bounds.bab.verify")   # (``bounds.bab.verify`` is also the function)


def _lin(g, o, i, scale=1.0):
    return Linear(torch.randn(o, i, generator=g, dtype=DT) * scale / i ** 0.5, 0.2 * torch.randn(o, generator=g, dtype=DT))


def _small_graphs():
    """2-input networks that are not chains: a residual add, a max-pool, Tanh and Sigmoid."""
    g = torch.Generator().manual_seed(3)
    res = Network((2,), [Node("a", _lin(g, 6, 2, 2.0), ("input",)), Node("r", ReLU(), ("a",)),
                         Node("b", _lin(g, 6, 6), ("r",)), Node("s", Add(), ("a", "b")),
                         Node("t", ReLU(), ("s",)), Node("o", _lin(g, 2, 6), ("t",))], name="res")
    pool = sequential((2,), [_lin(g, 8, 2, 2.0), Reshape((2, 2, 2)), MaxPool2d(2, 2), Flatten(), _lin(g, 2, 2)],
                      name="pool")
    smooth = sequential((2,), [_lin(g, 6, 2, 3.0), Tanh(), _lin(g, 6, 6, 2.0), Sigmoid(), _lin(g, 2, 6)],
                        name="smooth")
    return [res, pool, smooth]


def _grid_min(net, base, dims, lo, hi, row, n=201):
    """min over a grid of the box (free dimensions ``dims``, the others at ``base``) of y @ row."""
    a = [torch.linspace(lo[k], hi[k], n, dtype=DT) for k in dims]
    gx, gy = torch.meshgrid(*a, indexing="ij")
    x = torch.as_tensor(base, dtype=DT).repeat(n * n, 1)
    x[:, dims[0]], x[:, dims[1]] = gx.reshape(-1), gy.reshape(-1)
    with torch.no_grad():
        y = net(x.reshape((-1,) + net.input_shape)).reshape(n * n, -1)
    return float((y @ torch.as_tensor(row, dtype=DT)).min())


def _box_case(net, seed, width=0.3, free=(0, 1)):
    """A box with two free input dimensions (the others fixed), a margin row, and the grid
    minimum of that row over the box: (lo, hi, row, m)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.7, net.input_size)
    lo, hi = base.copy(), base.copy()
    for k in free:
        hi[k] = lo[k] + width
    row = np.zeros(net.output_size)
    row[0], row[1] = 1.0, -1.0
    return lo, hi, row, _grid_min(net, base, list(free), lo, hi, row)


def _prop(net, lo, hi, row, thr):
    """The violation "row . y <= thr" on the box: unsat iff min row . y > thr."""
    return VnnlibProperty("p", net.input_size, net.output_size, [Region(lo, hi, [(row[None, :], np.array([thr]))])])


def _check_sat(net, prop, res, tmp_path, name):
    x, y = res.counterexample
    assert prop.violated_by(x, y)
    path = tmp_path / f"{name}.onnx"
    net.to(torch.float32).to_onnx(path)
    assert check_counterexample_ort(str(path), prop, x, tol=1e-5)


@pytest.mark.parametrize("k", range(3))
def test_non_chain_networks_decided_against_the_grid(k, tmp_path):
    """Residual, max-pool and Tanh/Sigmoid networks (not chains; 2 inputs: the general input
    split, or the root bound): a threshold 0.05 below the grid minimum is proved (the grid's
    Lipschitz slack is far below that), one 0.01 above it is found violated by a point
    onnxruntime confirms; with and without the opening attack."""
    net = _small_graphs()[k]
    lo, hi, row, m = _box_case(net, k, width=0.6)
    for ff in (False, True):
        res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=20, falsify_first=ff)
        assert res.status == "unsat" and res.stats["method"] in ("generic-input", "root")
        prop = _prop(net, lo, hi, row, m + 0.01)
        res = verify(net, prop, timeout=20, falsify_first=ff)
        assert res.status == "sat"
        _check_sat(net, prop, res, tmp_path, f"{k}{ff}")


@pytest.mark.parametrize("build", [resnet, mixed])
def test_image_networks_with_two_free_pixels(build, tmp_path):
    """The helpers' residual CNN and the network using every op, two input pixels free (the
    others fixed): the general input split (without the root alpha-CROWN) proves the threshold
    below the grid minimum (on the residual CNN the root alpha-CROWN alone proves it too); the
    violation above it is found."""
    net = build(0)
    lo, hi, row, m = _box_case(net, 1, width=0.4, free=(3, net.input_size - 5))
    res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=30, falsify_first=False, method="generic-input",
                 root_alpha=0.0)
    assert res.status == "unsat" and res.stats["decided_by"] == "generic-input"
    res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=30, falsify_first=False)
    assert res.status == "unsat" and (build is not resnet or res.stats["decided_by"] == "root")
    prop = _prop(net, lo, hi, row, m + 0.01)
    res = verify(net, prop, timeout=30, falsify_first=False, method="generic-input")
    assert res.status == "sat" and res.stats["found_by"] == "bab"
    _check_sat(net, prop, res, tmp_path, build.__name__)


def test_chain_fast_paths_and_the_general_path_agree():
    """On ReLU chains the general input split (forced by its stage name) gives the verdicts of
    the chain fast paths, and all agree with the exact MILP minimum t* = -tau."""
    agree = 0
    for seed in range(6):
        net, prop, lo, hi, A, b = random_case(300 + seed, [3, 8, 8, 2])
        tau = 0.03 * (1 if seed % 2 else -1)
        b = b + exact_min(net, lo, hi, A, b) + tau
        prop.regions[0].disjuncts[0] = (A, b)
        verdicts = {m: verify(net, prop, timeout=20, method=m, falsify_first=False, use_milp=False).status
                    for m in ("input", "relu", "generic-input")}
        truth = "sat" if tau > 0 else "unsat"
        assert all(v in (truth, "timeout") for v in verdicts.values()), (seed, verdicts)
        agree += len(set(verdicts.values())) == 1
    assert agree >= 5


@pytest.mark.parametrize("method", ["input", "relu", "generic-input"])
def test_stopped_at_any_time_only_sound_verdicts(method):
    """Each search cut off after 0.01 .. 1 s: never a verdict against the exact answer, and the
    progress snapshots count domains that never go down."""
    for seed, tau in [(11, 0.02), (12, -0.02)]:
        net, prop, lo, hi, A, b = random_case(seed, [3, 10, 10, 2])
        b = b + exact_min(net, lo, hi, A, b) + tau
        prop.regions[0].disjuncts[0] = (A, b)
        for timeout in (0.01, 0.05, 0.2, 1.0):
            seen = []
            res = verify(net, prop, timeout=timeout, method=method, falsify_first=False,
                         progress=lambda st: seen.append(st["domains"]))
            assert res.status != ("unsat" if tau > 0 else "sat"), (seed, timeout)
            if res.status == "sat":
                assert prop.violated_by(*res.counterexample)
            assert seen == sorted(seen) and seen[-1] == res.stats["domains"]


def test_general_input_split_resumed_in_slices_does_what_one_run_does():
    """``input_split_graph`` stopped every 0.02 s and called again with its ``state`` goes on
    where it stopped: the same verdict with exactly the domains of one uninterrupted run."""
    net = mixed(0)
    lo, hi, row, m = _box_case(net, 0, width=0.8, free=(3, net.input_size - 5))
    C, d = (torch.as_tensor(v) for v in conjunction_margins(row[None, :], np.array([m - 0.02])))
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    net64 = net.to(torch.float64)

    def counts():
        return {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}

    one = counts()
    assert input_split_graph(net64, lo, hi, C, d, time.monotonic() + 60, lambda xs: None, one, batch=8)[0] == "unsat"
    assert one["domains"] > 10
    sliced, state, calls = counts(), {}, 0
    while True:
        calls += 1
        verdict, _ = input_split_graph(net64, lo, hi, C, d, time.monotonic() + 0.02, lambda xs: None, sliced,
                                       batch=8, state=state)
        if verdict != "timeout":
            break
    assert verdict == "unsat" and calls > 2 and sliced["domains"] == one["domains"]


def test_effective_count_and_the_split_choice_on_numbers():
    assert effective_count(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_count(torch.tensor([3.0, 1.0, 0.0, -2.0])) == pytest.approx(1.6)
    assert effective_count(torch.tensor([])) == 0.0
    counts = split_counts({"input": [torch.ones(5)], "activation": [torch.tensor([1.0, 0.0]), torch.ones(3)]})
    assert counts == pytest.approx({"input": 5.0, "activation": 4.0})
    assert not prefer_input_split(counts) and prefer_input_split({"input": 4.0, "activation": 4.0})


def test_split_kinds_on_numbers():
    """One kind where its count is under half the other's; both, in turns, otherwise."""
    assert split_kinds({"input": 3.0, "activation": 7.0}) == ("input",)
    assert split_kinds({"input": 9.0, "activation": 4.0}) == ("activation",)
    assert split_kinds({"input": 3.0, "activation": 5.9}) == ("input", "activation")
    assert split_kinds({"input": 4.0, "activation": 4.0}) == ("input", "activation")


@pytest.mark.parametrize("k", range(3))
def test_both_searches_in_turns_decide_against_the_grid(k, tmp_path):
    """``method="both"`` (input and activation splitting in turns, each going on where its last
    turn stopped) on the residual, max-pool and Tanh/Sigmoid networks: the threshold below the
    grid minimum is proved, the one above it violated by a point onnxruntime confirms."""
    net = _small_graphs()[k]
    lo, hi, row, m = _box_case(net, k, width=0.6)
    res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=20, falsify_first=False, method="both")
    assert res.status == "unsat" and res.stats["method"] == "generic-input+activation-split"
    prop = _prop(net, lo, hi, row, m + 0.01)
    res = verify(net, prop, timeout=20, falsify_first=False, method="both")
    assert res.status == "sat"
    _check_sat(net, prop, res, tmp_path, f"both{k}")


def test_both_searches_in_turns_on_chains_against_milp():
    """On ReLU chains the chain fast paths in turns agree with the exact MILP minimum."""
    for seed in range(4):
        net, prop, lo, hi, A, b = random_case(320 + seed, [3, 8, 8, 2])
        tau = 0.03 * (1 if seed % 2 else -1)
        b = b + exact_min(net, lo, hi, A, b) + tau
        prop.regions[0].disjuncts[0] = (A, b)
        res = verify(net, prop, timeout=20, method="both", falsify_first=False, use_milp=False)
        assert res.status == ("sat" if tau > 0 else "unsat") and res.stats["method"] == "input+relu", (seed, res.status)
        if res.status == "sat":
            assert prop.violated_by(*res.counterexample)


def _margin_prop(net, width, seed):
    """A box of half-width ``width`` around a random point and the violation y0 - y1 <= a value
    below the centre's margin (open at the root, not violated at the centre)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(net.input_size, generator=g, dtype=DT).numpy()
    with torch.no_grad():
        y = net(torch.as_tensor(c).reshape((1,) + net.input_shape)).reshape(-1).numpy()
    gap = float(y[0] - y[1])
    A = np.array([[1.0, -1.0, 0.0]])
    return VnnlibProperty("p", net.input_size, 3, [Region(c - width, c + width, [(A, np.array([gap - 0.3 * abs(gap) - 0.05]))])])


def test_split_choice_follows_the_root_scores():
    """A deep convolutional network fed by 16 inputs is searched by input splitting (at most 16
    input directions, far more unstable neurons carrying the intercepts); a 200-input MLP by ReLU
    splitting (the bound's spread is shared by most of the 200 inputs)."""
    g = torch.Generator().manual_seed(0)

    def conv(o, i):
        return Conv2d(torch.randn(o, i, 3, 3, generator=g, dtype=DT) / (3 * i ** 0.5),
                      0.1 * torch.randn(o, generator=g, dtype=DT), padding=1)

    cnn = sequential((16,), [_lin(g, 64, 16), Reshape((1, 8, 8)), conv(4, 1), ReLU(), conv(4, 4), ReLU(),
                             conv(4, 4), ReLU(), conv(4, 4), ReLU(), Flatten(), _lin(g, 3, 256)])
    mlp = sequential((200,), [_lin(g, 32, 200), ReLU(), _lin(g, 32, 32), ReLU(), _lin(g, 3, 32)])
    for net, width, want in [(cnn, 0.5, "input"), (mlp, 0.05, "relu")]:
        prop = _margin_prop(net, width, 1)
        res = verify(net, prop, timeout=1.0, falsify_first=False)
        counts = res.stats["split_counts"]
        assert res.stats["method"] == want, counts
        if want == "input":
            assert counts["input"] <= 16 < counts["activation"]
        else:
            assert counts["input"] > 50 > counts["activation"]
        if res.status == "sat":
            assert prop.violated_by(*res.counterexample)


def test_stats_name_the_deciding_stage():
    net, prop, lo, hi, A, b = random_case(21, [3, 8, 8, 2])
    t_star = exact_min(net, lo, hi, A, b)

    def with_tau(tau):
        prop.regions[0].disjuncts[0] = (A, b + t_star + tau)
        return prop

    st = verify(net, with_tau(0.5), timeout=10).stats            # violated widely: the opening attack
    assert st["decided_by"] == "falsify" and st["found_by"] in ("pgd", "sample") and st["method"] is None
    res = verify(net, with_tau(0.02), timeout=20, falsify_first=False, method="relu", use_milp=False)
    assert res.status == "sat" and res.stats["decided_by"] == "relu" and res.stats["found_by"] == "bab"
    res = verify(net, with_tau(-0.02), timeout=20, falsify_first=False)
    # (the method may be two searches in turns, "input+relu": the deciding one is one of them)
    assert res.status == "unsat" and set(res.stats["decided_by"].split("+")) <= {*res.stats["method"].split("+"), "milp"}
    assert sum(res.stats["proved_by"].values()) == 1 and res.stats["passes"][0]["stage"] == res.stats["method"]
    res = verify(net, with_tau(-5.0), timeout=20, falsify_first=False)   # the root bound proves it
    assert res.status == "unsat" and res.stats["method"] == "root" and res.stats["decided_by"] == "root"


def test_an_op_without_a_crown_rule_still_gets_a_verdict(monkeypatch):
    """With Tanh missing from CROWN's rule table the general input split falls back to interval
    bounds and still decides both thresholds (stats say so); with it missing from IBP as well,
    no proof is possible: ``unknown`` (never a crash), the attack still finds a violation."""
    ibp, linear = importlib.import_module("bounds.ibp"), importlib.import_module("bounds.backward_rules")
    net = sequential((2,), [Linear(torch.tensor([[2.0, -1.0], [1.0, 1.5]], dtype=DT), torch.zeros(2, dtype=DT)),
                            Tanh(), Linear(torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=DT), torch.zeros(2, dtype=DT))])
    lo, hi, row, m = _box_case(net, 7, width=0.5)
    monkeypatch.delitem(linear.BACKWARD_RULES, Tanh)
    res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=20, falsify_first=False)
    assert res.status == "unsat" and res.stats["bound_method"] == "ibp" and res.stats["method"] == "generic-input"
    res = verify(net, _prop(net, lo, hi, row, m + 0.01), timeout=20, falsify_first=False)
    assert res.status == "sat"
    monkeypatch.delitem(ibp.IBP_RULES, Tanh)
    res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=5, falsify_first=False)
    assert res.status == "unknown" and "Tanh" in res.stats["error"]
    assert verify(net, _prop(net, lo, hi, row, m + 0.05), timeout=5).status == "sat"


def test_options_are_checked():
    with pytest.raises(CertifyError, match="quickly"):
        VerifyOptions().with_fields(quickly=0.1)
    net, prop, *_ = random_case(1, [2, 4, 2])
    with pytest.raises(CertifyError, match="method"):
        verify(net, prop, timeout=1, method="beta")
    with pytest.raises(CertifyError, match="unknown option"):
        verify(net, prop, timeout=1, options=VerifyOptions(seed=3), restarts=2)


def test_a_new_split_stage_is_one_class_and_one_line(monkeypatch):
    """A search added to ``SPLIT_STAGES`` (here a counting copy of the general input split,
    declared as an activation split) is found by name and by the automatic choice, runs through
    the same schedule, and the stats name it."""
    runs = []

    class Counting(GraphInputSplit):
        name, splits = "counting", "activation"

        def prepare(self, obs):     # no root pass: the search itself decides
            return self.order(obs)

        def run(self, ob, until):
            runs.append(ob.index)
            return super().run(ob, until)

    monkeypatch.setattr(verify_mod, "SPLIT_STAGES", verify_mod.SPLIT_STAGES + [Counting])
    net = _small_graphs()[0]
    lo, hi, row, m = _box_case(net, 2, width=0.6)
    res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=20, method="counting", falsify_first=False)
    assert res.status == "unsat" and res.stats["method"] == res.stats["decided_by"] == "counting" and runs
    res = verify(net, _prop(net, lo, hi, row, m - 0.05), timeout=20, falsify_first=False)
    assert res.status == "unsat" and set(res.stats["split_counts"]) == {"input", "activation"}
