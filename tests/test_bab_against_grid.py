"""Branch and bound on random 2-D networks against a dense grid: every 'sat' counterexample lies in
the box and violates the property (re-evaluated here), every 'unsat' agrees with the grid, for
ReLU chains (input and ReLU splitting) and for a Sigmoid network (the general input-split path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bounds.bab import verify
from certify.ir import Linear, sequential
from certify.spec.vnnlib import parse
from helpers.networks import DT, unscaled_mlp
from helpers.oracles import grid_outputs
from helpers.properties import box_text


def _grid_violation(net, lo, hi, rows, n=401):
    y = grid_outputs(net, lo, hi, n)
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
    net = unscaled_mlp(seed, (2, 8, 6, 3))
    g = np.random.default_rng(seed)
    c0 = g.uniform(0, 0.7, 2)
    lo, hi = [float(v) for v in c0], [float(v) for v in c0 + g.uniform(0.05, 0.3, 2)]
    y = grid_outputs(net, lo, hi, 101)
    # thresholds near the grid minimum: borderline properties, both outcomes occur, BaB must branch
    rows = [(0, float(y[:, 0].min()) + float(g.uniform(-0.03, 0.03))),
            (2, float(y[:, 2].min()) + float(g.uniform(0.0, 0.5)))]
    prop = parse(box_text(lo, hi, rows), 2, 3)
    for ff in (False, True):
        res = verify(net, prop, timeout=20, method=method, falsify_first=ff)
        assert res.status in ("sat", "unsat", "unknown", "timeout")
        _check(net, prop, res, lo, hi, rows)


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
    assert "generic-input" in res.stats["method"].split("+")   # alone, or in turns with activation splitting
    if res.status == "unsat":
        assert not viol_grid
    if res.status == "sat":
        x, yv = res.counterexample
        y2 = net(torch.as_tensor(x).reshape(1, 2))[0].detach().numpy()
        assert prop.violated_by(x, y2) and y2[i] >= y2[j] and y2[2] >= c
    if viol_grid:
        assert res.status != "unsat"
