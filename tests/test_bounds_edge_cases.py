"""Bound propagation on edge cases: saturated Sigmoid/Tanh, MaxPool ties and overlapping windows,
AvgPool with padding, a DAG with Concat/Add/Sub; eps = 0, inputs at the domain's edges, boxes with
zero-width dims, L2 balls clipped by the domain; duplicate rows of C with offsets d; random ReLU
splits. No sampled, corner or PGD point may violate a bound; batch 1 and batch many agree."""
from __future__ import annotations

import pytest
import torch

import bounds
from certify.attack import pgd_margin
from certify.ir import (Add, AvgPool2d, Concat, Conv2d, Flatten, Linear, MaxPool2d, Network, Node, ReLU,
                        Sigmoid, Sub, Tanh, sequential)
from certify.spec.output import margin_values
from certify.spec.sets import Box, ball
from helpers.networks import DT, mlp

METHODS = ["ibp", "crown", "crown-ibp", "alpha"]


def _r(g, *s, sc=1.0):
    return torch.randn(*s, generator=g, dtype=DT) * sc


def _net(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name == "sig_big":     # saturated sigmoid / tanh (pre-activations of size ~10-30)
        return sequential((3,), [Linear(_r(g, 5, 3, sc=8), _r(g, 5, sc=3)), Sigmoid(),
                                 Linear(_r(g, 4, 5, sc=2), _r(g, 4)), Tanh(), Linear(_r(g, 3, 4, sc=2), _r(g, 3))])
    if name == "tanh_big":
        return sequential((3,), [Linear(_r(g, 5, 3, sc=30), _r(g, 5, sc=10)), Tanh(), Linear(_r(g, 3, 5), _r(g, 3))])
    if name == "mp_ties":     # zero conv weights: every pooling window is an exact tie
        return sequential((1, 4, 4), [Conv2d(torch.zeros(2, 1, 3, 3, dtype=DT), _r(g, 2), 1, 1), MaxPool2d(2, 2, 0),
                                      Flatten(), Linear(_r(g, 3, 8), _r(g, 3))])
    if name == "mp_overlap":
        return sequential((2, 4, 4), [Conv2d(_r(g, 2, 2, 3, 3), _r(g, 2), 1, 1), ReLU(), MaxPool2d(3, 1, 1),
                                      Flatten(), Linear(_r(g, 3, 32), _r(g, 3))])
    if name == "avgpad":
        return sequential((1, 4, 4), [Conv2d(_r(g, 2, 1, 3, 3), _r(g, 2), 1, 1), ReLU(), AvgPool2d(3, 2, 1, False),
                                      Flatten(), Linear(_r(g, 3, 8), _r(g, 3))])
    if name == "avgpad_inc":
        return sequential((1, 4, 4), [Conv2d(_r(g, 2, 1, 3, 3), _r(g, 2), 1, 1), Tanh(), AvgPool2d(3, 2, 1, True),
                                      Flatten(), Linear(_r(g, 3, 8), _r(g, 3))])
    nodes = [Node("a", Linear(_r(g, 4, 3), _r(g, 4)), ("input",)), Node("r", ReLU(), ("a",)),
             Node("b", Linear(_r(g, 4, 3), _r(g, 4)), ("input",)), Node("s", Sigmoid(), ("b",)),
             Node("cat", Concat(0), ("r", "s")), Node("l", Linear(_r(g, 4, 8), _r(g, 4)), ("cat",)),
             Node("r2", ReLU(), ("l",)), Node("add", Add(), ("r2", "a")), Node("sub", Sub(), ("add", "b")),
             Node("o", Linear(_r(g, 3, 4), _r(g, 3)), ("sub",))]
    return Network((3,), nodes, name="dag")


NETS = ["sig_big", "tanh_big", "mp_ties", "mp_overlap", "avgpad", "avgpad_inc", "dag"]


def _sets(net):
    g = torch.Generator().manual_seed(7)
    x = torch.rand((3,) + net.input_shape, generator=g, dtype=DT)
    x[0].fill_(0.0)
    x[1].fill_(1.0)                     # centres at the domain's corners: clipping
    hi = (x + 0.3 * torch.rand(x.shape, generator=g, dtype=DT)).clamp(max=1.0)
    hi.reshape(3, -1)[:, 0] = x.reshape(3, -1)[:, 0]     # a zero-width dimension
    unit = (0.0, 1.0)
    return [ball(x, 0.0, "inf", unit), ball(x, 0.06, "inf", unit), ball(x, 0.3, "2", unit), ball(x, 0.0, "2", unit),
            Box(x, hi)]


def _spec(net, g):
    K = net.output_size
    C = _r(g, 3, 4, K)
    d = _r(g, 3, 4)
    C[:, 1], d[:, 1] = C[:, 0], d[:, 0]      # duplicate rows (row 2 of C: same as row 0 with another d)
    C[:, 2] = C[:, 0]
    return C, d


def _observed(net, s, C, d):
    pts = s.sample(600, torch.Generator().manual_seed(1))
    if s.norm != "2":
        lo, hi = s.box()
        pts = torch.cat([pts, lo[None], hi[None]])
    with torch.no_grad():
        y = net(pts.reshape((-1,) + net.input_shape)).reshape(pts.shape[0], pts.shape[1], -1)
    m = torch.stack([margin_values(y[k], C, d) for k in range(y.shape[0])])
    kw = dict(per_row=True, steps=15, restarts=1)
    _, vmin = pgd_margin(net, s, C, d, generator=torch.Generator().manual_seed(4), **kw)
    _, vmax = pgd_margin(net, s, -C, -d, generator=torch.Generator().manual_seed(5), **kw)
    return torch.minimum(m.min(0).values, vmin), torch.maximum(m.max(0).values, -vmax)


@pytest.mark.parametrize("name", NETS)
def test_edge_nets_and_sets_sound(name):
    net = _net(name)
    g = torch.Generator().manual_seed(11)
    for s in _sets(net):
        C, d = _spec(net, g)
        mn, mx = _observed(net, s, C, d)
        for m in METHODS:
            b = bounds.compute_bounds(net, s, C, d, method=m)
            assert torch.isfinite(b.lower).all() and torch.isfinite(b.upper).all(), (m, s.norm)
            assert float((b.lower - mn).max()) <= 1e-9, (m, s.norm, float((b.lower - mn).max()))
            assert float((mx - b.upper).max()) <= 1e-9, (m, s.norm, float((mx - b.upper).max()))
            assert torch.equal(b.lower[:, 0], b.lower[:, 1]) or m == "alpha"   # duplicate rows


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_eps_zero_is_the_point(method):
    net = _net("dag")
    x = torch.rand(4, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    C, d = _spec(net, torch.Generator().manual_seed(3))
    C, d = torch.cat([C, C[:1]]), torch.cat([d, d[:1]])
    b = bounds.compute_bounds(net, ball(x, 0.0, "inf", domain=(0.0, 1.0)), C, d, method=method)
    m = margin_values(net(x), C, d)
    assert torch.allclose(b.lower, m, atol=1e-9) and torch.allclose(b.upper, m, atol=1e-9)


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_batch_one_equals_batch_many(method):
    net = _net("mp_overlap")
    x = torch.rand((5,) + net.input_shape, dtype=DT, generator=torch.Generator().manual_seed(2))
    C = _r(torch.Generator().manual_seed(3), 5, 2, 3)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2], dtype=DT)
    full = bounds.compute_bounds(net, ball(x, eps, "inf", domain=(0.0, 1.0)), C, method=method)
    for i in range(5):
        one = bounds.compute_bounds(net, ball(x[i:i + 1], float(eps[i]), "inf", domain=(0.0, 1.0)), C[i:i + 1], method=method)
        assert torch.allclose(one.lower, full.lower[i:i + 1], atol=1e-10, rtol=1e-10)
        assert torch.allclose(one.upper, full.upper[i:i + 1], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 2, 3, 4])
def test_random_splits_sound_on_their_subdomain(seed):
    """Random +1/-1/0 splits on the unstable ReLUs: the bounds (and intermediate bounds) must hold
    at every sampled point of the ball that satisfies the splits."""
    net = mlp(seed, widths=(2, 8, 8, 3))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 2, generator=g, dtype=DT)
    s = ball(x, 0.3, "inf", (0.0, 1.0))
    pre = {n.name: n.inputs[0] for n in net.nodes if isinstance(n.op, ReLU)}
    ib = bounds.intermediate_bounds(net, s, method="crown")
    splits = {}
    for r, p in pre.items():
        unstable = (ib[p].lower < 0) & (ib[p].upper > 0)
        choice = torch.randint(0, 3, ib[p].lower.shape, generator=g).to(torch.int8) - 1
        splits[r] = torch.where(unstable, choice, torch.zeros_like(choice))
    C, d = torch.randn(2, 3, 3, generator=g, dtype=DT), torch.randn(2, 3, generator=g, dtype=DT)
    pts = s.sample(20000, g)
    vals = net.forward_all(pts.reshape(-1, 2))
    ok = torch.ones(pts.shape[:2], dtype=torch.bool)
    for r, p in pre.items():
        z = vals[p].reshape(pts.shape[0], 2, -1)
        ok &= ~(((splits[r] > 0) & (z < 0)) | ((splits[r] < 0) & (z > 0))).any(-1)
    assert bool(ok.any())
    y = vals[net.output].reshape(pts.shape[0], 2, -1)
    m = torch.stack([margin_values(y[k], C, d) for k in range(y.shape[0])])
    for method in METHODS:
        b = bounds.compute_bounds(net, s, C, d, method=method, splits=splits)
        for i in range(2):
            if ok[:, i].any():
                mm = m[ok[:, i], i]
                assert float((b.lower[i] - mm.min(0).values).max()) <= 1e-9, method
                assert float((mm.max(0).values - b.upper[i]).max()) <= 1e-9, method
    for method in ["ibp", "crown", "alpha"]:
        ib2 = bounds.intermediate_bounds(net, s, method=method, splits=splits)
        for r, p in pre.items():
            z = vals[p].reshape(pts.shape[0], 2, -1)
            for i in range(2):
                if ok[:, i].any():
                    zz = z[ok[:, i], i]
                    assert float((ib2[p].lower[i] - zz.min(0).values).max()) <= 1e-9
                    assert float((zz.max(0).values - ib2[p].upper[i]).max()) <= 1e-9
