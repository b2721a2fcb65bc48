"""LP certificate: dual-rebuilt bound vs the solver reference, vs CROWN, MILP, sampling and PGD,
and solver failures giving unknown. Tiny random ReLU nets; CROWN pre-activation bounds."""
import numpy as np
import pytest
import torch

import bounds
from certify.attack import pgd_margin
from certify.convex import lp, milp
from certify.errors import CertifyError
from certify.ir import Linear, ReLU, Sigmoid, sequential
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from helpers.networks import random_mlp


def setup(sizes=(4, 12, 12, 3), seed=0, B=3, eps=0.15):
    net = random_mlp(sizes, seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(B, sizes[0], generator=g)
    lab = net(x).argmax(1)
    C = robustness_matrix(lab, sizes[-1])
    return net, x, C, eps


def crown_pre(net, x, eps):
    return bounds.intermediate_bounds(net.to(torch.float64), ball(x.double(), eps, domain=(0.0, 1.0)), method="crown")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_between_crown_and_milp_and_below_attacks(seed):
    net, x, C, eps = setup(seed=seed)
    pre = crown_pre(net, x, eps)
    r = lp(net, x, eps=eps, C=C, pre_bounds=pre, domain=(0.0, 1.0))
    assert all(s == "optimal" for row in r.status for s in row)
    cr = bounds.crown(net.to(torch.float64), x.double(), eps=eps, C=C.double(), domain=(0.0, 1.0)).lower
    assert bool((r.lower >= cr - 1e-6).all()), (r.lower, cr)
    m = milp(net, x, eps=eps, C=C, pre_bounds=pre, mode="full", domain=(0.0, 1.0))
    assert bool((r.lower <= m.lower + 1e-5).all())
    # no sampled or attacked point goes below a proved bound
    s = ball(x, eps, domain=(0.0, 1.0))
    pts = s.sample(4000, generator=torch.Generator().manual_seed(seed))
    vals = torch.einsum("brk,nbk->nbr", C.double(), net.to(torch.float64)(pts.reshape(-1, 4).double()).reshape(4000, -1, 3))
    assert bool((vals.min(0).values >= r.lower - 1e-9).all())
    _, v = pgd_margin(net, s, C, per_row=True, steps=40, restarts=2)
    assert bool((v.double() >= r.lower - 1e-5).all())
    # LP is strictly tighter than CROWN somewhere in these nets
    assert float((r.lower - cr).max()) > 1e-4


def test_highspy_matches_scipy_reference_and_lp_all_tighter():
    net, x, C, eps = setup((3, 10, 10, 10, 4), seed=5, B=2, eps=0.2)
    pre = crown_pre(net, x, eps)
    a = lp(net, x, eps=eps, C=C, pre_bounds=pre, domain=(0.0, 1.0))
    b = lp(net, x, eps=eps, C=C, pre_bounds=pre, solver="scipy", domain=(0.0, 1.0))
    assert torch.allclose(a.lower, b.lower, atol=1e-6)
    r = lp(net, x, eps=eps, C=C, pre_bounds=pre, refine="all", domain=(0.0, 1.0))
    assert r.method == "lp-all"
    assert bool((r.lower >= a.lower - 1e-7).all()) and float((r.lower - a.lower).max()) > 1e-5
    m = milp(net, x, eps=eps, C=C, pre_bounds=pre, mode="full", domain=(0.0, 1.0))
    assert bool((r.lower <= m.lower + 1e-5).all())


def test_default_bounds_come_from_crown_and_alpha_is_tighter_or_equal():
    net, x, C, eps = setup(seed=3)
    a = lp(net, x, eps=eps, C=C, domain=(0.0, 1.0))
    b = lp(net, x, eps=eps, C=C, bounds_method="alpha", domain=(0.0, 1.0))
    assert bool((b.lower >= a.lower - 1e-3).all())
    with pytest.raises(CertifyError, match="IBP"):
        lp(net, x, eps=eps, C=C, bounds_method="ibp", domain=(0.0, 1.0))


def test_iteration_cap_gives_unknown_never_certified():
    net, x, C, _ = setup(seed=1, eps=0.0)
    # at eps 0.001 the LP certifies; with a one-iteration simplex cap it must not
    ok = lp(net, x, eps=0.001, C=C, domain=(0.0, 1.0))
    assert ok.verdict == ["certified"] * 3
    r = lp(net, x, eps=0.001, C=C, options={"simplex_iteration_limit": 0, "presolve": "off"}, domain=(0.0, 1.0))
    assert r.verdict == ["unknown"] * 3
    for b, row in enumerate(r.status):
        for k, s in enumerate(row):
            assert s == "optimal" or r.lower[b, k] == -np.inf


def test_bad_inputs_raise_certify_errors():
    net, x, C, eps = setup()
    with pytest.raises(CertifyError, match="solver"):
        lp(net, x, eps=eps, C=C, solver="glpk", domain=(0.0, 1.0))
    with pytest.raises(CertifyError, match="refine"):
        lp(net, x, eps=eps, C=C, refine="some", domain=(0.0, 1.0))
    with pytest.raises(CertifyError, match="shape"):
        lp(net, x, eps=eps, C=C[:, :, :2], domain=(0.0, 1.0))
    bad = sequential((4,), [Linear(torch.randn(5, 4)), Sigmoid(), Linear(torch.randn(2, 5))])
    with pytest.raises(CertifyError, match="Sigmoid"):
        lp(bad, x, eps=eps, domain=(0.0, 1.0))


def test_torch_module_input_matches_ir():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.rand(2, 4)
    C = robustness_matrix(m(x).argmax(1), 3)
    a = lp(m, x, eps=0.1, C=C, domain=(0.0, 1.0))
    net = sequential((4,), [Linear(m[0].weight, m[0].bias), ReLU(), Linear(m[2].weight, m[2].bias)])
    b = lp(net, x, eps=0.1, C=C, domain=(0.0, 1.0))
    assert torch.allclose(a.lower, b.lower, atol=1e-9)
