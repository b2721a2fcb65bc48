"""Branch and bound on degenerate input sets: a box of zero width (sat iff its point violates)
and an 'or' of two boxes one of which is empty."""
from __future__ import annotations

import pytest
import torch

from bounds.bab import verify
from certify.spec.vnnlib import parse
from helpers.networks import DT, tie_net, unscaled_mlp
from helpers.properties import box_text


@pytest.mark.parametrize("method", ["input", "relu"])
def test_zero_width_box(method):
    """X fixed to a point: sat iff the point violates (never 'unsat' when it does)."""
    net = unscaled_mlp(3, (2, 8, 6, 3))
    x = [0.3, 0.6]
    with torch.no_grad():
        y = net(torch.tensor([x], dtype=DT))[0]
    prop = parse(box_text(x, x, [(1, float(y[1]) - 1e-3)]), 2, 3)
    assert verify(net, prop, timeout=10, method=method, falsify_first=False).status == "unsat"
    prop = parse(box_text(x, x, [(1, float(y[1]) + 1e-3)]), 2, 3)
    res = verify(net, prop, timeout=10, method=method, falsify_first=True)
    assert res.status == "sat" and prop.violated_by(*res.counterexample)
    assert verify(net, prop, timeout=10, method=method, falsify_first=False).status != "unsat"


def test_zero_width_box_sat_without_initial_attack():
    net = unscaled_mlp(3, (2, 8, 6, 3))
    x = [0.3, 0.6]
    with torch.no_grad():
        y = net(torch.tensor([x], dtype=DT))[0]
    prop = parse(box_text(x, x, [(1, float(y[1]) + 1e-3)]), 2, 3)
    assert verify(net, prop, timeout=10, method="input", falsify_first=False).status == "sat"


def _two_boxes(c):
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(2))
    text += "".join(f"(declare-const Y_{i} Real)\n" for i in range(3))
    text += ("(assert (or (and (>= X_0 0.5) (<= X_0 0.4) (>= X_1 0.0) (<= X_1 1.0))"
             " (and (>= X_0 0.6) (<= X_0 0.9) (>= X_1 0.0) (<= X_1 1.0))))\n"
             f"(assert (<= Y_0 {c}))\n")
    return parse(text, 2, 3)


def test_or_of_boxes_and_empty_box():
    """An 'or' of two input boxes, one empty (lower > upper): only the other can give a 'sat'."""
    net = tie_net()
    prop = _two_boxes(0.55)
    assert len(prop.regions) == 1
    assert verify(net, prop, timeout=10, method="input", falsify_first=False).status == "unsat"
    prop = _two_boxes(0.65)
    res = verify(net, prop, timeout=10, method="input", falsify_first=False)
    assert res.status == "sat" and prop.violated_by(*res.counterexample)
