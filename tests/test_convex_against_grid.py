"""Convex certificates on random 2-D ReLU networks against a dense grid: every certified lower
bound (lp, lp-all, milp, sdp, the L2 LP) lies below the grid minimum, a 'certified' verdict agrees
with the grid, exact MILP matches it, a solver stopped early never certifies, and a MILP
counterexample lies exactly in the set."""
from __future__ import annotations

import pytest
import torch

from certify.convex import lp, milp, sdp
from helpers.networks import DT, unscaled_mlp
from helpers.oracles import grid_min

DOMAIN = (0.0, 1.0)      # every grid below is over the ball clipped to [0, 1]^2


def _case(seed, eps):
    net = unscaled_mlp(seed, (2, 6, 5, 3))
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(1, 2, generator=g, dtype=DT)
    C = torch.randn(1, 3, 3, generator=g, dtype=DT)
    C[0, 2] = C[0, 1]                       # duplicate rows
    d = torch.randn(1, 3, generator=g, dtype=DT)
    lo, hi = (x[0] - eps).clamp(0, 1), (x[0] + eps).clamp(0, 1)
    return net, x, C, d, grid_min(net, lo, hi, C[0], d[0])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_lp_milp_below_grid(seed, eps):
    net, x, C, d, gmin = _case(seed, eps)
    for res in (lp(net, x, domain=DOMAIN, eps=eps, C=C, d=d), lp(net, x, domain=DOMAIN, eps=eps, C=C, d=d, refine="all"),
                milp(net, x, domain=DOMAIN, eps=eps, C=C, d=d, mode="full"), milp(net, x, domain=DOMAIN, eps=eps, C=C, d=d)):
        ok = torch.tensor([s in ("optimal", "dual_feasible") for s in res.status[0]])
        assert bool((res.lower[0][ok] <= gmin[ok] + 1e-6).all()), (res.method, res.lower, gmin)
        if res.verdict[0] == "certified":
            assert bool((gmin > 0).all())
        if res.verdict[0] == "falsified":
            assert bool((gmin < 1e-6).any())
            ce = res.counterexample[0].reshape(1, 2).to(DT)
            # within float32 rounding of the set (see test_milp_counterexample_exactly_in_set)
            assert bool(((ce - x).abs() <= eps + 1e-6).all() and (ce >= 0).all() and (ce <= 1).all())
            assert bool(((net(ce) @ C[0].T + d[0]) < 0).any())
    m = milp(net, x, domain=DOMAIN, eps=eps, C=C, d=d, mode="full")
    if all(s == "optimal" for s in m.status[0]):
        # exact: the grid can only be above the true minimum, and a fine grid is close to it
        assert bool((m.lower[0] <= gmin + 1e-6).all())
        assert bool((gmin - m.lower[0] < 0.05 + 2 * eps).all())


@pytest.mark.parametrize("seed", range(3))
def test_sdp_below_grid(seed):
    net, x, C, d, gmin = _case(seed, 0.1)
    res = sdp(net, x, domain=DOMAIN, eps=0.1, C=C, d=d)
    ok = torch.tensor([s in ("optimal", "dual_feasible") for s in res.status[0]])
    assert bool((res.lower[0][ok] <= gmin[ok] + 1e-6).all()), (res.lower, gmin, res.status)


def test_lp_solver_failure_is_not_certified():
    """An iteration cap that stops HiGHS early must not yield 'certified' from a non-optimal row."""
    net, x, C, d, gmin = _case(0, 0.3)
    res = lp(net, x, domain=DOMAIN, eps=0.3, C=C, d=d, options={"simplex_iteration_limit": 0})
    for b, st in enumerate(res.status):
        if any(s not in ("optimal", "dual_feasible") for s in st):
            assert res.verdict[b] != "certified"
    ok = torch.tensor([s in ("optimal", "dual_feasible") for s in res.status[0]])
    assert bool((res.lower[0][ok] <= gmin[ok] + 1e-6).all())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_lp_l2_below_grid(seed, eps):
    """L2 ball clipped to [0, 1]^2 (centres at a corner, an edge and inside): the SOCP bound must
    lie below the minimum over grid points of the clipped disk."""
    net, _, C, d, _ = _case(seed, 0.0)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.5], [0.4, 0.7]], dtype=DT)[seed % 3:seed % 3 + 1]
    a = torch.linspace(-1, 1, 201, dtype=DT)
    gx, gy = torch.meshgrid(a, a, indexing="ij")
    pts = x[0] + eps * torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    pts = pts[(pts - x[0]).norm(dim=1) <= eps + 1e-12]
    pts = pts[((pts >= 0) & (pts <= 1)).all(1)]
    with torch.no_grad():
        gmin = (net(pts) @ C[0].T + d[0]).min(0).values
    res = lp(net, x, domain=DOMAIN, eps=eps, norm=2, C=C, d=d)
    ok = torch.tensor([s in ("optimal", "dual_feasible") for s in res.status[0]])
    assert bool((res.lower[0][ok] <= gmin[ok] + 1e-6).all()), (res.lower, gmin, res.status)
    if res.verdict[0] == "certified":
        assert bool((gmin > 0).all())


def test_milp_counterexample_exactly_in_set():
    bad = []
    for seed in range(6):
        net, x, C, d, _ = _case(seed, 0.0)
        res = milp(net, x, domain=DOMAIN, eps=0.0, C=C, d=d)
        if res.verdict[0] == "falsified":
            ce = res.counterexample[0].reshape(1, 2)
            if not torch.equal(ce.to(DT), x):
                bad.append((seed, float((ce.to(DT) - x).abs().max())))
    assert not bad, bad
