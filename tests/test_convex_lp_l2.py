"""Triangle LP over an L2 ball (second-order cone via cvxpy): between CROWN's L2 bound and the
attacks, never above a sampled point, below the SDP of the same pre-activation bounds, solver
agreement, and a time-capped solve that stays valid."""
import numpy as np
import pytest
import torch

import bounds
from certify.attack import pgd_margin
from certify.convex import lp, sdp
from certify.errors import CertifyError
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from helpers.networks import random_mlp


def setup(seed=0, sizes=(4, 12, 12, 3), B=3, eps=0.3):
    g = torch.Generator().manual_seed(seed)
    net = random_mlp(sizes, g)
    x = torch.rand(B, sizes[0], generator=g)
    C = robustness_matrix(net(x).argmax(1), sizes[-1])
    pre = bounds.intermediate_bounds(net.to(torch.float64), ball(x.double(), eps, norm=2, domain=(0.0, 1.0)), method="crown")
    return net, x, C, eps, pre


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2_lp_between_crown_and_attacks(seed):
    net, x, C, eps, pre = setup(seed)
    r = lp(net, x, eps=eps, norm=2, C=C, pre_bounds=pre, domain=(0.0, 1.0))
    assert r.solver == "cvxpy-CLARABEL" and all(s == "optimal" for row in r.status for s in row)
    cr = bounds.crown(net.to(torch.float64), x.double(), eps=eps, norm=2, C=C.double(), domain=(0.0, 1.0)).lower
    assert bool((r.lower >= cr - 1e-6).all()), (r.lower, cr)
    assert float((r.lower - cr).max()) > 1e-3                          # strictly tighter somewhere
    s = ball(x, eps, norm=2, domain=(0.0, 1.0))
    pts = s.sample(4000, generator=torch.Generator().manual_seed(seed))
    vals = torch.einsum("brk,nbk->nbr", C.double(), net.to(torch.float64)(pts.reshape(-1, 4).double()).reshape(4000, -1, 3))
    assert bool((vals.min(0).values >= r.lower - 1e-9).all())
    _, v = pgd_margin(net, s, C, per_row=True, steps=60, restarts=2)
    assert bool((v.double() >= r.lower - 1e-6).all())


def test_l2_lp_solvers_agree_and_sdp_is_tighter():
    net, x, C, eps, pre = setup(0)
    a = lp(net, x, eps=eps, norm=2, C=C, pre_bounds=pre, domain=(0.0, 1.0))
    b = lp(net, x, eps=eps, norm=2, C=C, pre_bounds=pre, solver="scs", domain=(0.0, 1.0))
    assert all(s in ("optimal", "dual_feasible") for row in b.status for s in row)
    assert torch.allclose(a.lower, b.lower, atol=2e-3)
    sd = sdp(net, x[:1], eps=eps, norm=2, C=C[:1], solver="Clarabel",
             pre_bounds={k: (v.lower[:1], v.upper[:1]) for k, v in pre.items()}, domain=(0.0, 1.0))
    assert bool((sd.lower >= a.lower[:1] - 1e-4).all())                # the SDP contains the triangle
    linf = lp(net, x, eps=eps, norm="inf", C=C, domain=(0.0, 1.0))                       # L2 ball inside the L-inf ball
    assert bool((a.lower >= linf.lower - 1e-6).all())


def test_l2_lp_all_and_time_capped_solve_stay_valid():
    net, x, C, eps, pre = setup(1)
    full = lp(net, x, eps=eps, norm=2, C=C, pre_bounds=pre, refine="all", domain=(0.0, 1.0))
    base = lp(net, x, eps=eps, norm=2, C=C, pre_bounds=pre, domain=(0.0, 1.0))
    assert bool((full.lower >= base.lower - 1e-6).all())
    _, v = pgd_margin(net, ball(x, eps, norm=2, domain=(0.0, 1.0)), C, per_row=True, steps=60, restarts=2)
    assert bool((full.lower <= v.double() + 1e-6).all())
    capped = lp(net, x, eps=eps, norm=2, C=C, pre_bounds=pre, time_limit=1e-6, domain=(0.0, 1.0))
    for b, row in enumerate(capped.status):
        for k, s in enumerate(row):
            low = float(capped.lower[b, k])
            assert (s in ("optimal", "dual_feasible") and low <= float(v[b, k]) + 1e-6) or low == -np.inf
            assert s in ("optimal", "dual_feasible") or capped.verdict[b] != "certified"


def test_l2_lp_bad_solver_is_a_certify_error():
    net, x, C, eps, pre = setup(0)
    with pytest.raises(CertifyError, match="solver"):
        lp(net, x, eps=eps, norm=2, C=C, solver="gurobi", domain=(0.0, 1.0))
