"""L1 balls: the set itself (containment, projection, uniform samples, the box hull), and sound
IBP / CROWN / alpha-CROWN bounds on them (dual-norm concretization eps * max|A|): no sampled point
(uniform in the ball, its vertices x0 +- eps e_i) or PGD point may violate a bound; on a linear
network CROWN's bound is the exact minimum (attained at a vertex)."""
from __future__ import annotations

import pytest
import torch

import bounds
from certify.attack import pgd_margin
from certify.errors import CertifyError
from certify.spec import L1Ball, ball
from certify.spec.output import margin_values


def _vertices(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(2n, B, n): x0 +- eps e_i, the vertices of the L1 ball."""
    n = x[0].numel()
    E = torch.eye(n, dtype=x.dtype).reshape((n,) + tuple(x.shape[1:]))
    return torch.cat([x.unsqueeze(0) + eps * E.unsqueeze(1), x.unsqueeze(0) - eps * E.unsqueeze(1)])


def test_l1_ball_set_operations():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, dtype=torch.float64, generator=gen)
    s = ball(x, 0.3, 1)
    assert isinstance(s, L1Ball) and s.norm == "1" and s.domain is None
    lo, hi = s.box()
    assert torch.allclose(lo, x - 0.3) and torch.allclose(hi, x + 0.3)
    pts = s.sample(4000, gen)
    d = (pts - x).abs().sum(-1)
    assert bool((d <= 0.3 + 1e-12).all()) and bool(s.contains(pts[0]).all())
    # uniform in the ball: the L1 norm of a uniform point in a 5-dim ball has P(||.|| <= r) = (r/eps)^5
    frac = float((d <= 0.3 * 0.5 ** (1 / 5)).double().mean())
    assert abs(frac - 0.5) < 0.03
    far = x + torch.randn(3, 5, dtype=torch.float64, generator=gen)
    p = s.project(far)
    assert bool(s.contains(p, 1e-9).all())
    assert torch.allclose((p - x).abs().sum(1), torch.full((3,), 0.3, dtype=torch.float64))   # onto the surface
    inside = x + 0.01
    assert torch.equal(s.project(inside), inside)
    # the projection is the nearest point: no sampled point of the ball is closer to ``far``
    best = (pts - far).norm(dim=-1).min(0).values
    assert bool(((p - far).norm(dim=1) <= best + 1e-9).all())
    clipped = ball(x, 0.3, "l1", domain=(0.0, 1.0))
    q = clipped.project(far)
    assert bool(clipped.contains(q, 1e-6).all()) and bool(((q >= 0) & (q <= 1)).all())
    with pytest.raises(CertifyError, match="unsupported norm 3"):
        ball(x, 0.1, 3)


def _net(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Sigmoid(),
                               torch.nn.Linear(16, 4)).double()


@pytest.mark.parametrize("domain", [None, (0.0, 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_l1_bounds_hold_on_samples_vertices_and_pgd(seed, domain):
    from certify.frontends.torch import from_module
    net = from_module(_net(seed), (6,))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 6, dtype=torch.float64, generator=gen)
    C = torch.randn(4, 3, 4, dtype=torch.float64, generator=gen)
    eps = 0.5
    s = ball(x, eps, 1, domain)
    pts = s.sample(3000 if domain is None else 600, gen)     # a clipped sample is projected: slower
    if domain is None:
        pts = torch.cat([pts, _vertices(x, eps)])
    vals = torch.stack([margin_values(net(p), C) for p in pts])             # (n, B, rows)
    steps = 60 if domain is None else 25
    _, attacked = pgd_margin(net, s, C, per_row=True, steps=steps, restarts=3, generator=gen)
    attacked_max = -pgd_margin(net, s, -C, per_row=True, steps=steps, restarts=3, generator=gen)[1]
    lows = {}
    for method in ("ibp", "crown", "crown-ibp", "alpha"):
        b = bounds.compute_bounds(net, s, C, method=method)
        lo, hi = b.lower.detach(), b.upper.detach()
        lows[method] = lo
        assert bool((vals >= lo - 1e-9).all()), method
        assert bool((vals <= hi + 1e-9).all()), method
        assert bool((attacked >= lo - 1e-9).all()) and bool((attacked_max <= hi + 1e-9).all()), method
    assert bool((lows["alpha"] >= lows["crown"] - 1e-9).all())
    assert float((lows["crown"] - lows["ibp"]).max()) > 0     # the dual norm beats the box hull somewhere


def test_crown_on_a_linear_network_is_the_exact_l1_minimum():
    torch.manual_seed(3)
    lin = torch.nn.Linear(7, 3).double()
    x = torch.rand(2, 7, dtype=torch.float64)
    C = torch.randn(2, 2, 3, dtype=torch.float64)
    b = bounds.crown(lin, x, eps=0.25, norm=1, C=C)
    # min over the L1 ball of (C W) x' + C b: at the vertex along the largest |coefficient|
    A = C @ lin.weight.detach()
    exact = torch.einsum("brn,bn->br", A, x) + C @ lin.bias.detach() - 0.25 * A.abs().amax(-1)
    assert torch.allclose(b.lower, exact, atol=1e-12)
    verts = _vertices(x, 0.25)
    at_vertices = torch.stack([margin_values(lin(v), C) for v in verts]).min(0).values
    assert torch.allclose(at_vertices, exact, atol=1e-12)
    r, _ = bounds.radius(lin, x, torch.tensor([0, 1]), norm=1, method="crown")
    assert r.shape == (2,)


def test_engines_without_l1_refuse_it_naming_the_norm():
    from certify import convex
    lin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.rand(1, 3)
    C = torch.tensor([[[1.0, -1.0]]])
    for fn in (convex.lp, convex.sdp, convex.milp):
        with pytest.raises(CertifyError, match="not an L1 ball"):
            fn(lin, x, eps=0.1, norm=1, C=C)
    with pytest.raises(CertifyError, match="second-order-cone constraint"):
        convex.milp(lin, x, eps=0.1, norm=2, C=C)
