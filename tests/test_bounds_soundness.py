"""Soundness of every bound method: no sampled point and no PGD point of the input set may
fall outside the proved bounds (random MLP, CNN with BatchNorm, residual CNN, a network with
every other op; L-inf and L2 balls; IBP, CROWN, CROWN-IBP, alpha-CROWN).

Exact check in float64 (tolerance 1e-9); one float32 check with tolerance 1e-5 * scale.
"""
from __future__ import annotations

import pytest
import torch

import bounds
from certify.attack import pgd_margin
from certify.spec.output import margin_values
from certify.spec.sets import ball
from helpers.networks import ALL, centers

METHODS = ["ibp", "crown", "crown-ibp", "alpha"]
EPS = {"inf": {"mlp": 0.08, "cnn_bn": 0.08, "resnet": 0.06, "mixed": 0.03},
       "2": {"mlp": 0.3, "cnn_bn": 0.3, "resnet": 0.3, "mixed": 0.1}}


def _spec(net, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = net.output_size
    C = torch.randn(B, 3, K, generator=g, dtype=torch.float64)
    d = torch.randn(B, 3, generator=g, dtype=torch.float64)
    return C, d


def _sample(s, n):
    """n points of each set (n, B, *shape); clipped L2 balls: uniform in the ball, then projected
    into the domain in one batched call (the set's own sampler projects point by point)."""
    g = torch.Generator().manual_seed(3)
    if s.norm != "2" or s.domain is None:
        return s.sample(n, g)
    pts = ball(s.center, s.eps, 2, None).sample(n, g)
    big = ball(s.center.repeat((n,) + (1,) * (s.center.dim() - 1)), s.eps, 2, s.domain)
    return big.project(pts.reshape((-1,) + tuple(s.center.shape[1:]))).reshape(pts.shape)


def _extremes(net, s, C, d):
    """Sampled margins (n, B, rows) and the PGD minimum / maximum of every row (B, rows)."""
    pts = _sample(s, 5000)                                          # (5000, B, *shape): 10k points for B=2
    assert bool(torch.stack([s.contains(p, 1e-9) for p in pts]).all())
    with torch.no_grad():
        y = net(pts.reshape((-1,) + net.input_shape)).reshape(pts.shape[0], pts.shape[1], -1)
    m = torch.stack([margin_values(y[k], C, d) for k in range(y.shape[0])])   # (n, B, rows)
    _, vmin = pgd_margin(net, s, C, d, per_row=True, steps=20, restarts=2, generator=torch.Generator().manual_seed(4))
    _, vmax = pgd_margin(net, s, -C, -d, per_row=True, steps=20, restarts=2, generator=torch.Generator().manual_seed(5))
    return m, vmin, -vmax


def _check(b, ext, tol):
    m, vmin, vmax = ext
    lo, hi = b.lower, b.upper
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    assert (lo <= hi + tol).all()
    assert (m >= lo - tol).all(), float((lo - m).max())
    assert (m <= hi + tol).all(), float((m - hi).max())
    assert (vmin >= lo - tol).all(), float((lo - vmin).max())
    assert (vmax <= hi + tol).all(), float((vmax - hi).max())


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("name", list(ALL))
def test_no_sample_or_attack_escapes_the_bounds(name, norm):
    net = ALL[name]()
    x = centers(net)
    s = ball(x, EPS[norm][name], norm, (0.0, 1.0))
    C, d = _spec(net, x.shape[0])
    results = {}
    ext = _extremes(net, s, C, d)
    for method in METHODS:
        opts = {"iterations": 8} if method == "alpha" else {}
        b = bounds.compute_bounds(net, s, C, d, method=method, **opts)
        _check(b, ext, 1e-9)
        results[method] = b
    # alpha-CROWN is never looser than CROWN.
    assert (results["alpha"].lower >= results["crown"].lower - 1e-9).all()
    assert (results["alpha"].upper <= results["crown"].upper + 1e-9).all()


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_unclipped_ball_and_box(name):
    from certify.spec.sets import Box
    net = ALL[name]()
    x = centers(net)
    C, d = _spec(net, 2, seed=7)
    for s in (ball(x, 0.05, "inf", None), ball(x, 0.2, 2, None), Box(x - 0.04, x + 0.07)):
        ext = _extremes(net, s, C, d)
        for method in ("crown", "ibp"):
            _check(bounds.compute_bounds(net, s, C, d, method=method), ext, 1e-9)


def test_float32_bounds_hold_with_documented_tolerance():
    net = ALL["resnet"]().to(torch.float32)
    x = centers(net).float()
    s = ball(x, 0.06, "inf", (0.0, 1.0))
    C, d = (t.float() for t in _spec(net, 2))
    b = bounds.crown(net, input_set=s, C=C, d=d)
    scale = float(b.upper.abs().max()) + 1.0
    net64 = net.to(torch.float64)
    s64 = ball(x.double(), 0.06, "inf", (0.0, 1.0))
    pts = s64.sample(5000, torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net64(pts.reshape((-1,) + net.input_shape)).reshape(5000, 2, -1)
    m = torch.stack([margin_values(y[k], C.double(), d.double()) for k in range(5000)])
    tol = 1e-5 * scale
    assert (m >= b.lower.double() - tol).all() and (m <= b.upper.double() + tol).all()


def test_splits_are_sound_on_their_subdomain():
    net = ALL["mlp"]()
    x = centers(net, B=1)
    s = ball(x, 0.15, "inf", (0.0, 1.0))
    inter = bounds.intermediate_bounds(net, s, "crown")
    pre = inter["n0"]
    unstable = ((pre.lower < 0) & (pre.upper > 0)).flatten().nonzero().flatten()
    assert len(unstable) >= 2
    j = int(unstable[0])
    C, d = _spec(net, 1, seed=2)
    pts = s.sample(20000, torch.Generator().manual_seed(9))[:, 0]
    with torch.no_grad():
        vals = net.forward_all(pts)
    for sign in (+1, -1):
        split = torch.zeros(1, 12, dtype=torch.int8)
        split[0, j] = sign
        for method in ("crown", "alpha", "ibp"):
            b = bounds.compute_bounds(net, s, C, d, method=method, splits={"n1": split})
            inside = (vals["n0"][:, j] >= 0) if sign > 0 else (vals["n0"][:, j] <= 0)
            assert int(inside.sum()) > 100
            m = margin_values(vals[net.output][inside], C.expand(int(inside.sum()), -1, -1), d.expand(int(inside.sum()), -1))
            assert (m >= b.lower - 1e-9).all() and (m <= b.upper + 1e-9).all()
        # The split pre-activation bound itself is clamped.
        ib = bounds.intermediate_bounds(net, s, "crown", splits={"n1": split})["n0"]
        assert (ib.lower[0, j] >= 0) if sign > 0 else (ib.upper[0, j] <= 0)
