"""Adversarial review of bounds.bab.verify + certify.spec.vnnlib on 2-D ReLU nets: every 'sat'
counterexample must lie in the box and violate (re-evaluated here), every 'unsat' must agree with a
dense grid search; boundary cases (violation exactly at equality, zero-width boxes, or-of-boxes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bounds.bab import verify
from certify.ir import Linear, ReLU, sequential
from certify.spec.vnnlib import parse
from test_bounds_nets import random_mlp

DT = torch.float64


def _net(seed, widths=(2, 8, 6, 3)):
    return random_mlp(widths, torch.Generator().manual_seed(seed), bias_scale=0.5, normalize=False, dtype=DT,
                      name=f"net{seed}")


def _text(lo, hi, rows):
    """VNN-LIB: box [lo, hi] and the violation "and over rows (Y_i <= Y_j + c)" given as (i, j)
    pairs with a constant threshold c (Y_i - Y_j <= c written with a literal when j is None)."""
    s = "".join(f"(declare-const X_{i} Real)\n" for i in range(2))
    s += "".join(f"(declare-const Y_{i} Real)\n" for i in range(3))
    for i in range(2):
        s += f"(assert (>= X_{i} {lo[i]!r}))\n(assert (<= X_{i} {hi[i]!r}))\n"
    for i, c in rows:
        s += f"(assert (<= Y_{i} {c!r}))\n"
    return s


def _grid_violation(net, lo, hi, rows, n=401):
    a = torch.linspace(0, 1, n, dtype=DT)
    gx, gy = torch.meshgrid(a, a, indexing="ij")
    lo_t, hi_t = torch.tensor(lo, dtype=DT), torch.tensor(hi, dtype=DT)
    pts = lo_t + (hi_t - lo_t) * torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        y = net(pts)
    v = torch.stack([y[:, i] - c for i, c in rows], 1).max(1).values   # <= 0: violates
    return float(v.min())


def _check(net, prop, res, lo, hi, rows):
    gv = _grid_violation(net, lo, hi, rows)
    if res.status == "sat":
        x, y = res.counterexample
        assert prop.violated_by(x, y), (x, y)
        y2 = net(torch.as_tensor(x, dtype=DT).reshape(1, 2))[0].detach().numpy()
        assert np.allclose(y, y2, atol=1e-9)
        assert all(y2[i] <= c for i, c in rows)
        assert np.all(x >= np.array(lo)) and np.all(x <= np.array(hi))
    elif res.status == "unsat":
        assert gv > 0, f"unsat but a grid point violates (min violation value {gv})"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("method", ["input", "relu"])
def test_bab_agrees_with_grid(seed, method):
    net = _net(seed)
    g = np.random.default_rng(seed)
    c0 = g.uniform(0, 0.7, 2)
    lo, hi = [float(v) for v in c0], [float(v) for v in c0 + g.uniform(0.05, 0.3, 2)]
    a = torch.linspace(0, 1, 101, dtype=DT)
    gx, gy = torch.meshgrid(a, a, indexing="ij")
    with torch.no_grad():
        y = net(torch.tensor(lo, dtype=DT) + (torch.tensor(hi, dtype=DT) - torch.tensor(lo, dtype=DT))
                * torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
    # thresholds near the grid minimum: borderline properties, both outcomes occur, BaB must branch
    rows = [(0, float(y[:, 0].min()) + float(g.uniform(-0.03, 0.03))),
            (2, float(y[:, 2].min()) + float(g.uniform(0.0, 0.5)))]
    prop = parse(_text(lo, hi, rows), 2, 3)
    for ff in (False, True):
        res = verify(net, prop, timeout=20, method=method, falsify_first=ff)
        assert res.status in ("sat", "unsat", "unknown", "timeout")
        _check(net, prop, res, lo, hi, rows)


def _identity_net():
    return sequential((2,), [Linear(torch.eye(3, 2, dtype=DT), torch.zeros(3, dtype=DT)), ReLU(),
                             Linear(torch.eye(3, dtype=DT), torch.zeros(3, dtype=DT))], name="id")


@pytest.mark.parametrize("method", ["input", "relu"])
def test_violation_at_equality_is_not_unsat(method):
    """Y_0 = ReLU(X_0) on X_0 in [0, 1]: Y_0 <= 0 holds at X_0 = 0 (a non-strict VNN-LIB atom),
    so the property is violated: the answer must never be 'unsat'."""
    net = _identity_net()
    prop = parse(_text([0.0, 0.2], [1.0, 0.4], [(0, 0.0)]), 2, 3)
    for ff in (False, True):
        res = verify(net, prop, timeout=10, method=method, falsify_first=ff)
        assert res.status != "unsat"
        if res.status == "sat":
            assert prop.violated_by(*res.counterexample)


@pytest.mark.parametrize("method", ["input", "relu"])
def test_zero_width_box(method):
    """X fixed to a point: sat iff the point violates (never 'unsat' when it does)."""
    net = _net(3)
    x = [0.3, 0.6]
    with torch.no_grad():
        y = net(torch.tensor([x], dtype=DT))[0]
    prop = parse(_text(x, x, [(1, float(y[1]) - 1e-3)]), 2, 3)
    assert verify(net, prop, timeout=10, method=method, falsify_first=False).status == "unsat"
    prop = parse(_text(x, x, [(1, float(y[1]) + 1e-3)]), 2, 3)
    res = verify(net, prop, timeout=10, method=method, falsify_first=True)
    assert res.status == "sat" and prop.violated_by(*res.counterexample)
    assert verify(net, prop, timeout=10, method=method, falsify_first=False).status != "unsat"


def test_zero_width_box_sat_without_initial_attack():
    net = _net(3)
    x = [0.3, 0.6]
    with torch.no_grad():
        y = net(torch.tensor([x], dtype=DT))[0]
    prop = parse(_text(x, x, [(1, float(y[1]) + 1e-3)]), 2, 3)
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
    net = _identity_net()
    prop = _two_boxes(0.55)
    assert len(prop.regions) == 1
    assert verify(net, prop, timeout=10, method="input", falsify_first=False).status == "unsat"
    prop = _two_boxes(0.65)
    res = verify(net, prop, timeout=10, method="input", falsify_first=False)
    assert res.status == "sat" and prop.violated_by(*res.counterexample)


@pytest.mark.parametrize("method", ["input", "relu"])
def test_no_unsat_when_violated_at_equality(method):
    net = _identity_net()
    prop = parse(_text([0.6, 0.0], [0.75, 1.0], [(0, 0.6)]), 2, 3)
    assert prop.violated_by(np.array([0.6, 0.0]), np.array([0.6, 0.0, 0.0]))
    assert verify(net, prop, timeout=10, method=method, falsify_first=False).status != "unsat"


@pytest.mark.parametrize("seed", range(5))
def test_generic_path_sigmoid_net_and_output_atoms(seed):
    """A Sigmoid net (not a ReLU chain: the generic input-split path) and a violation written with
    output-vs-output atoms and a literal on the left: (>= Y_0 Y_1) and (<= c Y_2)."""
    from certify.ir import Sigmoid
    g = torch.Generator().manual_seed(seed)
    net = sequential((2,), [Linear(torch.randn(6, 2, generator=g, dtype=DT) * 3, torch.randn(6, generator=g, dtype=DT)),
                            Sigmoid(), Linear(torch.randn(3, 6, generator=g, dtype=DT), torch.randn(3, generator=g, dtype=DT))])
    rng = np.random.default_rng(seed)
    lo = [float(v) for v in rng.uniform(0, 0.6, 2)]
    hi = [v + 0.3 for v in lo]
    a = torch.linspace(0, 1, 301, dtype=DT)
    gx, gy = torch.meshgrid(a, a, indexing="ij")
    pts = torch.tensor(lo, dtype=DT) + 0.3 * torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        y = net(pts)
    i, j = (0, 1) if bool((y[:, 0] >= y[:, 1]).any()) else (1, 0)   # a satisfiable Y_i >= Y_j
    sel = y[:, i] >= y[:, j]
    c = float(y[sel, 2].max()) + float(rng.uniform(-0.02, 0.01))
    viol_grid = bool((sel & (y[:, 2] >= c)).any())
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(2))
    text += "".join(f"(declare-const Y_{i} Real)\n" for i in range(3))
    text += "".join(f"(assert (>= X_{i} {lo[i]!r}))\n(assert (<= X_{i} {hi[i]!r}))\n" for i in range(2))
    text += f"(assert (>= Y_{i} Y_{j}))\n(assert (<= {c!r} Y_2))\n"
    prop = parse(text, 2, 3)
    res = verify(net, prop, timeout=15, falsify_first=False)
    assert res.stats["method"] == "generic-input"
    if res.status == "unsat":
        assert not viol_grid
    if res.status == "sat":
        x, yv = res.counterexample
        y2 = net(torch.as_tensor(x).reshape(1, 2))[0].detach().numpy()
        assert prop.violated_by(x, y2) and y2[i] >= y2[j] and y2[2] >= c
    if viol_grid:
        assert res.status != "unsat"
