"""Exact ties: where a margin's minimum over the set is exactly 0 (attained at a point of the set),
no engine may prove it positive: branch and bound never answers 'unsat', bound propagation's
lower bound is not above 0, and no convex certificate says 'certified'."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bounds
from bounds.bab import verify
from certify.convex import lp, milp, sdp
from certify.spec.output import margin_values
from certify.spec.sets import Box
from certify.spec.vnnlib import parse
from helpers.networks import DT, tie_net
from helpers.properties import box_text


@pytest.mark.parametrize("method", ["input", "relu"])
def test_violation_at_equality_is_not_unsat(method):
    """Y_0 = ReLU(X_0) on X_0 in [0, 1]: Y_0 <= 0 holds at X_0 = 0 (a non-strict VNN-LIB atom),
    so the property is violated: the answer must never be 'unsat'."""
    net = tie_net()
    prop = parse(box_text([0.0, 0.2], [1.0, 0.4], [(0, 0.0)]), 2, 3)
    for ff in (False, True):
        res = verify(net, prop, timeout=10, method=method, falsify_first=ff)
        assert res.status != "unsat"
        if res.status == "sat":
            assert prop.violated_by(*res.counterexample)


@pytest.mark.parametrize("method", ["input", "relu"])
def test_no_unsat_when_violated_at_equality(method):
    net = tie_net()
    prop = parse(box_text([0.6, 0.0], [0.75, 1.0], [(0, 0.6)]), 2, 3)
    assert prop.violated_by(np.array([0.6, 0.0]), np.array([0.6, 0.0, 0.0]))
    assert verify(net, prop, timeout=10, method=method, falsify_first=False).status != "unsat"


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_bound_at_exact_tie_not_above_the_minimum(method):
    """y0 = ReLU(x0) on x0 in [0.6, 0.75]; y0 - 0.6 has minimum exactly 0.0 at x0 = 0.6."""
    net = tie_net()
    lo = torch.tensor([[0.6, 0.0]], dtype=DT)
    s = Box(lo, torch.tensor([[0.75, 1.0]], dtype=DT))
    C, d = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=DT), torch.tensor([[-0.6]], dtype=DT)
    assert float(margin_values(net(lo), C, d)) == 0.0
    b = bounds.compute_bounds(net, s, C, d, method=method)
    assert float(b.lower) <= 0.0


def test_exact_tie_is_not_certified():
    """min of y0 - 0.6 over x0 in [0.6, 0.75] is exactly 0 (at x0 = 0.6): no engine may certify."""
    net = tie_net()
    x = torch.tensor([[0.675, 0.5]], dtype=DT)
    C, d = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=DT), torch.tensor([[-0.6]], dtype=DT)
    for res in (lp(net, x, eps=0.075, C=C, d=d, domain=None), milp(net, x, eps=0.075, C=C, d=d, domain=None),
                sdp(net, x, eps=0.075, C=C, d=d, domain=None)):
        assert res.verdict[0] != "certified", (res.method, res.lower)
