"""The engines checked against each other on the same networks and sets.

For every input: IBP <= CROWN <= alpha-CROWN <= LP (same CROWN pre-activation bounds) <= exact
MILP minimum <= the best PGD value; BaB's verdict on the property "margin > 0" agrees with the
sign of the exact MILP minimum; and the smoothed classifier's certified L2 radius is never
contradicted by an attack on the smoothed prediction's base classifier at the centre.
"""
import numpy as np
import pytest
import torch

import bounds
import certify.convex as convex
from bounds.bab.verify import verify
from certify.attack import pgd_margin
from certify.models import load_bundled
from certify.data import load_dataset
from certify.spec import ball, robustness_matrix
from certify.spec.vnnlib import Region, VnnlibProperty
from helpers.networks import random_mlp

TOL = 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_bound_chain_ibp_crown_alpha_lp_milp_pgd(seed):
    net = random_mlp((4, 12, 12, 3), seed, bias_scale=0.1, name=f"mlp{seed}")
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(3, 4, generator=g)
    y = net(x).argmax(1)
    C = robustness_matrix(y, 3)
    eps = 0.15
    ib = bounds.ibp(net, x, eps=eps, C=C, domain=(0.0, 1.0)).lower
    cr = bounds.crown(net, x, eps=eps, C=C, domain=(0.0, 1.0)).lower
    al = bounds.alpha(net, x, eps=eps, C=C, domain=(0.0, 1.0)).lower
    lp = convex.lp(net, x, eps=eps, C=C, domain=(0.0, 1.0))
    mi = convex.milp(net, x, eps=eps, C=C, mode="full", time_limit=30, domain=(0.0, 1.0))
    assert all(s == "optimal" for st in lp.status for s in st)
    assert all(s == "optimal" for st in mi.status for s in st)
    _, pgd = pgd_margin(net, ball(x, eps, "inf", domain=(0.0, 1.0)), C, per_row=True, steps=40, restarts=3)
    lpl, mil = lp.lower.float(), mi.lower.float()
    assert bool((ib <= cr + TOL).all())
    assert bool((cr <= al + TOL).all())
    assert bool((cr <= lpl + TOL).all())
    assert bool((lpl <= mil + TOL).all())
    assert bool((al <= mil + TOL).all())
    assert bool((mil <= pgd + TOL).all())
    # the exact minimum is attained: PGD's best is usually close to it on such tiny nets
    assert float((pgd - mil).max()) < 0.5


@pytest.mark.parametrize("seed", range(8))
def test_bab_verdict_agrees_with_exact_milp(seed):
    net = random_mlp((3, 8, 8, 2), seed, bias_scale=0.1, name=f"mlp{seed}")
    g = torch.Generator().manual_seed(200 + seed)
    x = torch.rand(1, 3, generator=g)
    sgn = 1.0 if float(net(x)[0, 0] - net(x)[0, 1]) > 0 else -1.0  # the property holds at the centre
    C = torch.tensor([[[sgn, -sgn]]])
    eps = (0.05, 0.15, 0.3)[seed % 3]
    exact = float(convex.milp(net, x, eps=eps, C=C, mode="full", time_limit=30, domain=(0.0, 1.0)).lower[0, 0])
    if abs(exact) < 1e-3:
        pytest.skip("property too close to the boundary for a clear verdict")
    lo, hi = ball(x, eps, "inf", domain=(0.0, 1.0)).box()
    # VNN-LIB semantics: the region describes the violation sgn * (y0 - y1) <= 0
    region = Region(lo[0].double().numpy(), hi[0].double().numpy(), [(np.array([[sgn, -sgn]]), np.array([0.0]))])
    prop = VnnlibProperty("cross-engine", 3, 2, [region])
    res = verify(net, prop, timeout=30)
    assert res.status == ("unsat" if exact > 0 else "sat")
    if res.status == "sat":
        xc, _ = res.counterexample
        xc = torch.as_tensor(np.asarray(xc), dtype=torch.float64).reshape(1, 3)
        assert region.contains(xc.numpy()[0], 1e-9)
        yc = net.to(torch.float64)(xc)
        assert sgn * float(yc[0, 0] - yc[0, 1]) <= 0


def test_engines_agree_on_the_bundled_digits_model():
    """What CROWN certifies, LP and MILP certify too; nothing MILP falsifies is certified anywhere."""
    net = load_bundled("digits-mlp")
    x, y = load_dataset("digits", "test")
    x, y = x[:12], y[:12]
    keep = net(x).argmax(1) == y
    x, y = x[keep], y[keep]
    C = robustness_matrix(y, 10)
    eps = 0.06
    cr = bounds.crown(net, x, eps=eps, C=C, domain=(0.0, 1.0)).lower.min(1).values > 0
    al = bounds.alpha(net, x, eps=eps, C=C, domain=(0.0, 1.0)).lower.min(1).values > 0
    lp = convex.lp(net, x, eps=eps, C=C, domain=(0.0, 1.0))
    mi = convex.milp(net, x, eps=eps, C=C, mode="decision", time_limit=30, domain=(0.0, 1.0))
    lpv = [v == "certified" for v in lp.verdict]
    miv = mi.verdict
    assert "unknown" not in miv
    for b in range(len(y)):
        if cr[b]:
            assert al[b] and lpv[b] and miv[b] == "certified"
        if miv[b] == "falsified":
            assert not (cr[b] or al[b] or lpv[b])
    assert sum(v == "certified" for v in miv) >= int(cr.sum())


def test_milp_with_every_relu_stable_is_the_exact_lp():
    """No unstable ReLU leaves no binary: the MILP is an LP and must still certify (regression:
    HiGHS leaves mip_dual_bound unset for such models)."""
    net = random_mlp((3, 8, 8, 2), 0, bias_scale=0.1, name="mlp0")
    x = torch.rand(1, 3, generator=torch.Generator().manual_seed(200))
    C = torch.tensor([[[1.0, -1.0]]]) * (1 if float(net(x)[0, 0] - net(x)[0, 1]) > 0 else -1)
    cr = bounds.crown(net, x, eps=0.05, C=C, domain=(0.0, 1.0)).lower
    for mode in ("full", "decision"):
        r = convex.milp(net, x, eps=0.05, C=C, mode=mode, domain=(0.0, 1.0))
        assert r.status == [["optimal"]] and r.verdict == ["certified"]
        assert abs(float(r.lower[0, 0]) - float(cr[0, 0])) < 1e-4  # CROWN is exact with all ReLUs stable
