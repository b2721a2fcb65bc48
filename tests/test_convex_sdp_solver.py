"""SDP at its defaults: the solver chosen by the size of the PSD matrix (SCS up to SCS_MAX_DIM rows,
the first-order solver above), the CLI saying which one runs, and every row's bound at least the
triangle LP's certified bound of the same pre-activation bounds (both are sound lower bounds, so
their max is), whatever the solver did, and still below sampled margins."""
from __future__ import annotations

import pytest
import torch

import bounds
from certify.cli.main import main
from certify.convex import lp, sdp
from certify.convex.sdp import SCS_MAX_DIM, choose_solver, matrix_dim
from certify.frontends.torch import from_module
from certify.models import load_bundled
from certify.spec import ball


def _net(n_in: int, hidden: int, seed: int = 0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                            torch.nn.ReLU(), torch.nn.Linear(hidden, 3))
    return from_module(m, (n_in,)).to(torch.float64)


def test_the_solver_is_chosen_by_the_matrix_size():
    assert matrix_dim(load_bundled("digits-mlp")) == 64 + 24 + 24 + 1
    assert choose_solver(SCS_MAX_DIM) == "SCS" and choose_solver(SCS_MAX_DIM + 1) == "first-order"
    small, big = _net(6, 5), _net(300, 60)
    x = torch.rand(1, 6, dtype=torch.float64)
    C = torch.tensor([[[1.0, -1.0, 0.0]]], dtype=torch.float64)
    assert sdp(small, x, eps=0.05, C=C, max_iters=50).solver == "cvxpy-SCS"
    assert matrix_dim(big) == 421
    r = sdp(big, torch.rand(1, 300, dtype=torch.float64), eps=0.001, C=C, iters=2, time_limit=1.0)
    assert r.solver == "first-order" and r.status[0][0] in ("optimal", "dual_feasible", "lanczos_estimate")


@pytest.mark.parametrize("solver, kw", [("first-order", {"iters": 2, "time_limit": 0.2}),
                                        ("first-order", {"iters": 40}), ("SCS", {"max_iters": 20})])
@pytest.mark.parametrize("seed", [0, 1])
def test_sdp_is_never_below_the_lp_and_below_samples(solver, kw, seed):
    net = _net(5, 8, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 5, dtype=torch.float64, generator=gen)
    C = torch.randn(2, 3, 3, dtype=torch.float64, generator=gen)
    eps = 0.15
    pre = bounds.intermediate_bounds(net, ball(x, eps, "inf", (0.0, 1.0)), method="crown")
    a = lp(net, x, eps=eps, C=C, domain=(0.0, 1.0), pre_bounds=pre)
    s = sdp(net, x, eps=eps, C=C, domain=(0.0, 1.0), pre_bounds=pre, solver=solver, **kw)
    assert all(st in ("optimal", "dual_feasible") for row in s.status for st in row)
    assert bool((s.lower >= a.lower).all()), (s.lower, a.lower)           # exactly: the same LP solves
    pts = ball(x, eps, "inf", (0.0, 1.0)).sample(3000, gen)
    vals = torch.stack([torch.einsum("brk,bk->br", C, net(p)) for p in pts])
    assert bool((vals.min(0).values >= s.lower - 1e-9).all())


def test_cli_says_which_sdp_solver_runs(capsys):
    assert main(["sdp", "digits-mlp", "--count", "1", "--eps", "0.02", "--solver", "first-order",
                 "--time-limit", "0.2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "PSD matrix 113 x 113 (inputs + hidden units + 1): solver first-order (--solver)" in err
    from certify.cli.convex import _announce_sdp_solver
    assert _announce_sdp_solver(load_bundled("digits-mlp"), "auto") == "SCS"
    assert "solver SCS (auto: SCS up to 400 rows, first-order above)" in capsys.readouterr().err
