"""SDP certificate: below the exact MILP minimum and below attacks, valid for any dual point
(random multipliers, SCS stopped after a few iterations, the first-order solver), L2 balls."""
import numpy as np
import pytest
import torch

from certify.attack import pgd_margin
from certify.convex import milp, sdp
from certify.convex.problem import prepare
from certify.convex.sdp import solve_cvxpy
from certify.convex.sdp_dual import Multipliers, bound_from, families
from certify.ir import Linear, ReLU, sequential
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from helpers.networks import random_mlp


def case(seed=0, sizes=(3, 6, 6, 3), eps=0.2):
    net = random_mlp(sizes, seed)
    x = torch.rand(1, sizes[0], generator=torch.Generator().manual_seed(seed))
    C = robustness_matrix(net(x).argmax(1), sizes[-1])
    return net, x, C, eps


@pytest.mark.parametrize("seed", [0, 1])
def test_sdp_below_milp_and_pgd(seed):
    net, x, C, eps = case(seed)
    exact = milp(net, x, eps=eps, C=C, mode="full", domain=(0.0, 1.0)).upper   # margin at a real point
    r = sdp(net, x, eps=eps, C=C, solver="Clarabel", domain=(0.0, 1.0))
    assert all(s in ("optimal", "dual_feasible") for s in r.status[0])
    assert bool((r.lower <= exact + 1e-9).all())
    assert bool(torch.isfinite(r.lower).all())
    _, v = pgd_margin(net, ball(x, eps, domain=(0.0, 1.0)), C, per_row=True, steps=40)
    assert bool((r.lower <= v.double() + 1e-6).all())
    # the relaxation is not vacuous: within 50% of the exact margin range on these nets
    assert bool((r.lower >= exact - 0.5 * (1 + exact.abs())).all()), (r.lower, exact)


def test_scs_stopped_early_still_gives_a_valid_bound():
    net, x, C, eps = case(2)
    exact = milp(net, x, eps=eps, C=C, mode="full", domain=(0.0, 1.0)).upper[0]   # margin at a real point
    prob = prepare(net, x, eps=eps, C=C, domain=(0.0, 1.0))
    for r in range(C.shape[1]):                # SCS's own dual point, capped at 15 iterations
        val, status = solve_cvxpy(families(prob, 0, r), "SCS", max_iters=15)
        assert status == "dual_feasible" and np.isfinite(val) and val <= float(exact[r]) + 1e-9
    res = sdp(net, x, eps=eps, C=C, solver="SCS", max_iters=15, domain=(0.0, 1.0))
    assert all(s == "dual_feasible" for s in res.status[0])
    assert bool((res.lower[0] <= exact + 1e-9).all())


def test_any_multipliers_give_a_valid_bound():
    net, x, C, eps = case(3)
    exact = milp(net, x, eps=eps, C=C, mode="full", domain=(0.0, 1.0)).upper[0]
    prob = prepare(net, x, eps=eps, C=C, domain=(0.0, 1.0))
    rng = np.random.default_rng(0)
    for r in range(C.shape[1]):
        f = families(prob, 0, r)
        for _ in range(5):
            z = Multipliers.zeros(f)
            lam = Multipliers([rng.exponential(size=a.shape) for a in z.A], [rng.exponential(size=a.shape) for a in z.B],
                              [rng.normal(size=a.shape) for a in z.C], rng.exponential(size=z.D.shape), 0.0,
                              [rng.exponential(size=a.shape) for a in z.F])
            assert bound_from(f, lam, [float(rng.normal() * 5)]) <= float(exact[r]) + 1e-9


def test_first_order_solver_is_valid_and_useful():
    net, x, C, eps = case(4, eps=0.1)
    exact = milp(net, x, eps=eps, C=C, mode="full", domain=(0.0, 1.0)).upper   # margin at a real point
    r = sdp(net, x, eps=eps, C=C, solver="first-order", iters=150, domain=(0.0, 1.0))
    assert bool((r.lower <= exact + 1e-9).all())
    assert bool(torch.isfinite(r.lower).all())


def test_l2_ball():
    net, x, C, eps = case(5, eps=0.3)
    r = sdp(net, x, eps=eps, norm=2, C=C, solver="Clarabel", domain=(0.0, 1.0))
    s = ball(x, eps, norm=2, domain=(0.0, 1.0))
    pts = s.sample(5000, generator=torch.Generator().manual_seed(0))[:, 0]
    vals = net.to(torch.float64)(pts.double()) @ C[0].double().T
    assert bool((vals.min(0).values >= r.lower[0] - 1e-9).all())
    linf = sdp(net, x, eps=eps, norm="inf", C=C, solver="Clarabel", domain=(0.0, 1.0))
    assert bool((r.lower >= linf.lower - 1e-6).all())      # the L2 ball lies inside the L-inf ball


def test_sdp_at_least_lp_and_tighter_somewhere():
    from certify.convex import lp
    torch.manual_seed(0)
    net = sequential((2,), [Linear(torch.randn(8, 2), torch.randn(8)), ReLU(), Linear(torch.randn(8, 8), torch.randn(8)),
                            ReLU(), Linear(torch.randn(3, 8), torch.randn(3))])
    x = torch.rand(1, 2)
    a = lp(net, x, eps=0.3, domain=None)
    for solver in ("Clarabel", "first-order"):
        r = sdp(net, x, eps=0.3, domain=None, solver=solver, iters=50)
        assert bool((r.lower >= a.lower - 1e-4).all()), (solver, r.lower, a.lower)
    r = sdp(net, x, eps=0.3, domain=None, solver="Clarabel")
    exact = milp(net, x, eps=0.3, domain=None, mode="full").upper
    assert float((r.lower - a.lower).max()) > 0.1                 # 8.56 vs 8.37 on row 1
    assert bool((r.lower <= exact + 1e-9).all())
