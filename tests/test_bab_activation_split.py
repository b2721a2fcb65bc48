"""Activation-split branch and bound on general graphs (residual adds, max-pooling, Sigmoid, Tanh):
verdicts against dense grids on 2-input networks, counterexamples confirmed by onnxruntime, sound
bounds at any stop, the same verdicts as the chain fast path on ReLU chains, beta's gain, and the
soundness of every domain bound against sampled points of the domain."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bounds.bab.activation_split import SplitOptions, activation_split_bab
from bounds.bab.chain import to_chain
from bounds.bab.chain_bounds import PROOF_TOL
from bounds.bab.falsify import Falsifier
from bounds.bab.graph_bounds import Graph, Splits, bound_domains, refresh
from bounds.bab.graph_root import root_bounds
from bounds.bab.relu_split import relu_split_bab
from certify.ir import Tanh
from certify.spec.vnnlib import Region, VnnlibProperty
from certify.vnncomp import check_counterexample_ort
from helpers.networks import DT, maxpool_2d, residual_mlp, resnet, smooth_2d
from helpers.oracles import exact_min, grid_min, grid_points
from helpers.properties import random_case

NETS = {"residual": residual_mlp, "maxpool": maxpool_2d, "sigmoid": smooth_2d,
        "tanh": lambda s: smooth_2d(s, Tanh)}


def _case(net, seed, tau):
    """A box and one margin row whose minimum over the box is tau (by a 401 x 401 grid)."""
    g = np.random.default_rng(seed)
    c0, w = g.uniform(-0.5, 0.5, 2), g.uniform(0.2, 0.5)
    lo, hi = torch.tensor(c0 - w), torch.tensor(c0 + w)
    C = torch.tensor(g.normal(size=(1, 3)))
    gm = float(grid_min(net, lo, hi, C, torch.zeros(1, dtype=DT), 401))
    d = torch.tensor([tau - gm], dtype=DT)
    prop = VnnlibProperty("p", 2, 3, [Region(lo.numpy(), hi.numpy(), [(C.numpy(), (-d).numpy())])])
    return lo, hi, C, d, prop


def _search(net, lo, hi, C, d, prop, seconds, stats=None, **kw):
    fal = Falsifier(net, prop)
    stats = {} if stats is None else stats
    return activation_split_bab(net, lo, hi, C, d, time.monotonic() + seconds,
                                lambda xs: fal.check_points(xs.double(), [(C, -d)]), stats, **kw)


@pytest.mark.parametrize("kind", list(NETS))
def test_verdicts_agree_with_grid_and_onnxruntime(kind, tmp_path):
    """Both signs of the grid minimum (+-0.1: far beyond the grid's resolution for these
    networks), two networks each: every answer agrees, sats carry a counterexample that
    onnxruntime confirms, and most cases are decided."""
    decided = 0
    for seed in range(2):
        net = NETS[kind](seed)
        path = tmp_path / f"{kind}{seed}.onnx"
        net.to(torch.float32).to_onnx(str(path))
        for tau in (0.1, -0.1):
            lo, hi, C, d, prop = _case(net, seed, tau)
            verdict, ce = _search(net, lo, hi, C, d, prop, 5)
            if verdict == "sat":
                assert tau < 0
                x, y = ce
                assert prop.violated_by(x, y)
                assert check_counterexample_ort(str(path), prop, x, tol=1e-5)
            elif verdict == "unsat":
                assert tau > 0
            decided += verdict in ("sat", "unsat")
    assert decided >= 3


@pytest.mark.parametrize("kind", ["residual", "maxpool", "tanh"])
def test_stopping_at_any_time_leaves_a_sound_bound(kind):
    """A search stopped early reports the smallest bound of its open domains, which no sampled
    point of the box goes below; resumed from its state it stays sound and can still decide."""
    net = NETS[kind](0)
    lo, hi, C, d, prop = _case(net, 0, 0.002)
    xs = lo + (hi - lo) * torch.rand(20000, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    xs = torch.cat([xs, grid_points(lo, hi, 101)])
    with torch.no_grad():
        true_min = float((net(xs) @ C.T + d).max(1).values.min())
    state, worst = {}, []
    for _ in range(3):
        stats = {}
        verdict, _ = _search(net, lo, hi, C, d, prop, 0.15, stats, state=state,
                             options=SplitOptions(batch=2, root_iterations=2, root_spec_iterations=2))
        if verdict != "timeout":
            break
        worst.append(stats["worst_open_lower"])
        assert stats["worst_open_lower"] <= true_min + 1e-9
    assert verdict in ("timeout", "unsat")
    assert worst and worst == sorted(worst)      # the open domains' bounds only rise


def test_chain_networks_same_verdicts_as_chain_path():
    """On affine/ReLU chains the general search and ``relu_split_bab`` decide the same way,
    and both agree with the MILP's exact minimum."""
    for seed in range(5):
        net, prop, lo, hi, A, b = random_case(4100 + seed, [3, 8, 8, 2])
        tau = 0.03 if seed % 2 else -0.03
        b = b + exact_min(net, lo, hi, A, b) + tau         # exact minimum of max_r (A y - b)_r: -tau
        C, d = torch.tensor(A), -torch.tensor(b)            # proved: max_r (A y - b)_r > 0
        fal = Falsifier(net, prop)
        tp = (lambda xs: fal.check_points(xs.double(), [(torch.tensor(A), torch.tensor(b))]))
        v_gen, _ = activation_split_bab(net, torch.tensor(lo), torch.tensor(hi), C, d, time.monotonic() + 20, tp, {})
        st = {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}
        v_ch, _ = relu_split_bab(to_chain(net), torch.tensor(lo), torch.tensor(hi), C, d, time.monotonic() + 20, tp, st)
        assert v_gen == v_ch == ("unsat" if tau < 0 else "sat"), (seed, v_gen, v_ch)


def _random_splits(g: Graph, pre: dict, B: int, depth: int, seed: int) -> Splits:
    """B domains of ``depth`` random splits each, at the neurons' split points."""
    from bounds.activations import split_at
    gen = torch.Generator().manual_seed(seed)
    s = Splits.none(B)
    for _ in range(depth):
        j = int(torch.randint(len(g.split_nodes), (1,), generator=gen))
        lo, hi = (t.flatten(1).expand(B, -1) for t in pre[g.split_nodes[j]])
        i = torch.randint(lo.shape[1], (B,), generator=gen)
        li, ui = lo[torch.arange(B), i], hi[torch.arange(B), i]
        p = split_at(g.split_op[j], li, ui) if g.split_op[j].__class__.__name__ != "MaxPool2d" else (li + ui) / 2
        side = torch.randint(2, (B,), generator=gen) * 2 - 1
        s = s.add(torch.full((B,), j), i, p, side)
    return s


@pytest.mark.parametrize("kind", list(NETS))
def test_domain_bounds_hold_on_sampled_points_of_each_domain(kind):
    """Random split domains, bounded with alpha and beta (and with their later bounds
    refreshed): no sampled point that satisfies a domain's splits goes below its bound."""
    net = NETS[kind](1)
    lo, hi, C, d, _ = _case(net, 1, 0.0)
    g = Graph(net)
    pre, alpha = root_bounds(g, lo.reshape(1, -1), hi.reshape(1, -1), C.unsqueeze(0), d.unsqueeze(0), iterations=5)
    B = 12
    splits = _random_splits(g, pre, B, 3, 0)
    ch = g.clamp({k: (l.expand(B, *l.shape[1:]), u.expand(B, *u.shape[1:])) for k, (l, u) in pre.items()}, splits)
    lo_b, hi_b = lo.reshape(1, -1).expand(B, -1), hi.reshape(1, -1).expand(B, -1)
    ch = refresh(g, lo_b, hi_b, ch, splits, g.pre_nodes)
    res = bound_domains(g, lo_b, hi_b, C.expand(B, -1, -1), d.expand(B, -1), ch, splits, iterations=10)
    xs = lo + (hi - lo) * torch.rand(40000, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        vals = g.net64.forward_all(xs)
        out = (vals[g.net64.output].reshape(len(xs), -1) @ C.T + d).max(1).values
    checked = 0
    for b in range(B):
        inside = torch.ones(len(xs), dtype=torch.bool)
        for s in range(splits.depth):
            z = vals[g.split_nodes[int(splits.node[b, s])]].reshape(len(xs), -1)[:, int(splits.neuron[b, s])]
            inside &= (z - splits.point[b, s]) * int(splits.side[b, s]) >= 0
        for k, (l, u) in ch.items():        # the refreshed bounds hold too
            v = vals[k].reshape(len(xs), -1)[inside]
            assert bool((v >= l[b].reshape(-1) - 1e-9).all() & (v <= u[b].reshape(-1) + 1e-9).all()), k
        if bool(inside.any()):
            checked += 1
            assert float(out[inside].min()) >= float(res.lower[b].max()) - 1e-9
        else:
            assert float(res.lower[b].max()) > -1e9      # an empty domain may be anything
    assert checked >= 3


def test_beta_proves_what_the_same_splits_without_beta_cannot():
    """One domain with splits on the first layer: the beta terms raise its bound (to a value
    every sampled point of the domain respects), enough to prove a margin CROWN with the same
    splits and alpha cannot."""
    net = residual_mlp(3)
    lo, hi = torch.tensor([-0.6, -0.4], dtype=DT), torch.tensor([0.5, 0.7], dtype=DT)
    C = torch.tensor([[1.0, -1.0, 0.5]], dtype=DT)
    g = Graph(net)
    d0 = torch.zeros(1, dtype=DT)
    pre, _ = root_bounds(g, lo.reshape(1, -1), hi.reshape(1, -1), C.unsqueeze(0), d0.unsqueeze(0), iterations=5)
    l0, u0 = pre[g.split_nodes[0]]
    unstable = torch.nonzero((l0[0] < 0) & (u0[0] > 0)).flatten()[:3]
    s = Splits.none(1)
    for i in unstable.tolist():
        s = s.add(torch.zeros(1), torch.tensor([i]), torch.zeros(1), torch.tensor([1 if i % 2 else -1]))
    dom = g.clamp(pre, s)
    args = (g, lo.reshape(1, -1), hi.reshape(1, -1), C.unsqueeze(0), d0.unsqueeze(0), dom, s)
    with_beta = float(bound_domains(*args, iterations=40, lr_beta=0.2, stop_when_positive=False).lower.max())
    no_beta = float(bound_domains(*args, iterations=40, use_beta=False, stop_when_positive=False).lower.max())
    assert with_beta > no_beta + 1e-3
    xs = lo + (hi - lo) * torch.rand(50000, 2, dtype=DT, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        vals = g.net64.forward_all(xs)
    z = vals[g.split_nodes[0]]
    inside = torch.ones(len(xs), dtype=torch.bool)
    for k in range(s.depth):
        inside &= z[:, int(s.neuron[0, k])] * int(s.side[0, k]) >= 0
    assert bool(inside.any())
    assert float((vals[g.net64.output][inside] @ C.T).min()) >= with_beta - 1e-9
    d = torch.tensor([-(with_beta + no_beta) / 2], dtype=DT)     # a margin between the two bounds
    args = args[:4] + (d.unsqueeze(0),) + args[5:]
    assert float(bound_domains(*args, iterations=40, lr_beta=0.2).lower.max()) > PROOF_TOL
    assert float(bound_domains(*args, iterations=40, use_beta=False).lower.max()) <= 0


def test_root_bound_is_sound_and_at_least_crown_on_a_residual_cnn():
    """The root's float64 pre-activation bounds contain every sampled point's values, and its
    spec bound is never below CROWN's."""
    from bounds import compute_bounds
    from certify.spec.sets import Box
    net = resnet(0).to(DT)
    x = torch.rand((1,) + net.input_shape, dtype=DT, generator=torch.Generator().manual_seed(3))
    lo, hi = (x - 0.05).reshape(1, -1), (x + 0.05).reshape(1, -1)
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=DT)
    g = Graph(net)
    pre, alpha = root_bounds(g, lo, hi, C.unsqueeze(0), torch.zeros(1, 1, dtype=DT), iterations=10, patience=None)
    res = bound_domains(g, lo, hi, C.unsqueeze(0), torch.zeros(1, 1, dtype=DT), pre, Splits.none(1), alpha=alpha)
    crown = compute_bounds(net, Box(lo.reshape(x.shape), hi.reshape(x.shape)), C.unsqueeze(0), method="crown",
                           upper=False).lower
    assert float(res.lower[0, 0]) >= float(crown[0, 0]) - 1e-9
    xs = lo + (hi - lo) * torch.rand(4000, lo.shape[1], dtype=DT, generator=torch.Generator().manual_seed(4))
    xs = torch.cat([xs, torch.where(torch.rand_like(xs) < 0.5, lo, hi)])        # corners too
    with torch.no_grad():
        vals = net.forward_all(xs.reshape((-1,) + net.input_shape))
    for k, (l, u) in pre.items():
        v = vals[k].reshape(len(xs), -1)
        assert bool((v >= l.reshape(1, -1) - 1e-9).all() & (v <= u.reshape(1, -1) + 1e-9).all()), k
    assert float((vals[net.output].reshape(len(xs), -1) @ C.T).min()) >= float(res.lower[0, 0]) - 1e-9


def test_verify_splits_activations_of_a_residual_network_with_many_inputs(tmp_path):
    """``verify`` with the activation-split stage on a residual network with 16 inputs: its sats are confirmed by onnxruntime, its unsats hold on
    100k sampled points, and it decides every case."""
    from bounds.bab import verify
    net = residual_mlp(5, n_in=16, width=12).to(torch.float32)
    path = tmp_path / "res16.onnx"
    net.to_onnx(str(path))
    g = np.random.default_rng(0)
    verdicts = []
    for k in range(4):
        c = g.uniform(-0.5, 0.5, 16)
        lo, hi = c - 0.15, c + 0.15
        A = g.normal(size=(1, 3))
        xs = torch.tensor(g.uniform(lo, hi, (100000, 16)), dtype=torch.float32)
        with torch.no_grad():
            v = (net(xs).double().numpy() @ A.T)[:, 0]
        b = np.array([v.min() + (0.05 if k % 2 else -0.1)])       # odd k: sampled points violate A y <= b
        prop = VnnlibProperty("p", 16, 3, [Region(lo, hi, [(A, b)])])
        res = verify(net, prop, timeout=20, falsify_first=False, method="activation-split")
        assert res.stats["method"] == "activation-split"
        if res.status == "sat":
            assert check_counterexample_ort(str(path), prop, res.counterexample[0], tol=1e-5)
        elif res.status == "unsat":
            assert k % 2 == 0
        verdicts.append(res.status)
    assert verdicts.count("sat") + verdicts.count("unsat") == 4, verdicts


def test_root_steps_go_on_until_every_obligation_has_a_positive_row():
    """The rows of two obligations bounded at once, the first proved by CROWN already: with
    ``groups`` the steps go on for the second (its bound rises above CROWN's, and stays below
    the sampled minimum), while read as one obligation they stop at once (a positive row)."""
    from bounds.bab.graph_root import all_proved
    assert all_proved(torch.tensor([[1.0, -1.0]])) and not all_proved(torch.tensor([[1.0, -1.0]]), torch.tensor([0, 1]))
    assert all_proved(torch.tensor([[1.0, -1.0, 2.0]]), torch.tensor([0, 0, 1]))
    net = residual_mlp(3)
    lo, hi = torch.tensor([-0.6, -0.4], dtype=DT).reshape(1, -1), torch.tensor([0.5, 0.7], dtype=DT).reshape(1, -1)
    C = torch.tensor([[1.0, -1.0, 0.5], [1.0, -1.0, 0.5]], dtype=DT)
    g = Graph(net)
    d = torch.tensor([[100.0, 0.0]], dtype=DT)
    one = Splits.none(1)
    crown = bound_domains(g, lo, hi, C.unsqueeze(0), d, root_bounds(g, lo, hi, C.unsqueeze(0), d, iterations=0)[0],
                          one).lower[0]
    assert float(crown[0]) > 0 > float(crown[1])
    per = {}
    for name, groups in (("one", None), ("two", torch.tensor([0, 1]))):
        pre, alpha = root_bounds(g, lo, hi, C.unsqueeze(0), d, iterations=20, patience=None, groups=groups)
        per[name] = float(bound_domains(g, lo, hi, C.unsqueeze(0), d, pre, one, alpha=alpha).lower[0, 1])
    assert per["one"] == pytest.approx(float(crown[1]), abs=1e-9)
    assert per["two"] > float(crown[1]) + 1e-3
    xs = lo + (hi - lo) * torch.rand(50000, 2, dtype=DT, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = net.forward_all(xs)[net.output] @ C[1]
    assert float(out.min()) >= per["two"] - 1e-9
