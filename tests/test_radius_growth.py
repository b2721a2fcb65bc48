"""Radius searches are not capped by a fixed upper end: certify.spec.radius.bisect_radius doubles
its upper end while an input stays certified (up to a limit: the domain's extent, or none), so
the convex engine's L2 radius reaches what the network allows (here 0.5667, beyond the old 0.5),
and an explicit limit still caps it."""
from __future__ import annotations

import math

import numpy as np
import torch

import bounds
from certify import convex
from certify.cli.main import main
from certify.frontends.torch import from_module
from certify.report.records import read_result_file
from certify.spec.radius import bisect_radius, domain_extent


def _check_of(thresholds):
    calls = []

    def check(sel, eps):
        calls.append(len(sel))
        return eps <= thresholds[sel]
    return check, calls


def test_bisection_grows_its_upper_end_to_the_limit():
    t = torch.tensor([0.3, 0.7, 5.0, 1e6, 0.0], dtype=torch.float64)
    check, _ = _check_of(t)
    r, ok = bisect_radius(check, 5, 0.0, 0.5, 1e-4, check_lo=False, limit=math.inf)
    assert bool(((r <= t) & (r >= t - 1e-4)).all()), r
    check, _ = _check_of(t)
    r, _ = bisect_radius(check, 5, 0.0, 0.5, 1e-4, check_lo=False, limit=2.0)
    assert r[3] == 2.0 and r[2] == 2.0 and abs(float(r[1]) - 0.7) <= 1e-4
    check, _ = _check_of(t)
    r, _ = bisect_radius(check, 5, 0.0, 0.5, 1e-4, check_lo=False)          # no limit given: hi is the limit
    assert float(r.max()) == 0.5
    assert domain_extent((0.0, 1.0), "inf", 4) == 1.0 and domain_extent((0.0, 1.0), 2, 4) == 2.0
    assert domain_extent((0.0, 2.0), "1", 4) == 8.0


def _margin_net() -> torch.nn.Module:
    """Inputs (1, 2, 2) in [0, 1]: logits (1 - 1.5 relu(x_0), 0), so the margin at x_0 = 0.1 falls
    to 0 at an L2 (or L-inf) distance of 0.5667 along x_0."""
    lin1, lin2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    with torch.no_grad():
        lin1.weight.copy_(torch.eye(4))
        lin1.bias.zero_()
        lin2.weight.copy_(torch.tensor([[-1.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        lin2.bias.copy_(torch.tensor([1.0, 0.0]))
    return torch.nn.Sequential(torch.nn.Flatten(), lin1, torch.nn.ReLU(), lin2).double()


def test_convex_l2_radius_goes_past_half_as_crowns_does(tmp_path, capsys):
    net = from_module(_margin_net(), (1, 2, 2))
    x = torch.tensor([[[[0.1, 0.5], [0.5, 0.5]]]], dtype=torch.float64)
    exact = (1 / 1.5) - 0.1
    crown, _ = bounds.radius(net, x, torch.tensor([0]), norm=2, method="crown", domain=(0.0, 1.0))
    lp_r = convex.certified_radius(convex.lp, net, x, torch.tensor([0]), norm=2, domain=(0.0, 1.0), tol=1e-3)
    assert exact - 1e-3 <= float(crown[0]) <= exact and exact - 2e-3 <= float(lp_r[0]) <= exact
    capped = convex.certified_radius(convex.lp, net, x, torch.tensor([0]), norm=2, domain=(0.0, 1.0), limit=0.5)
    assert float(capped[0]) == 0.5
    # the same through the CLI, whose default upper end is the domain's extent (2 for four pixels in L2)
    net.to_onnx(str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", images=x.float().numpy(), labels=np.array([0]))
    out = tmp_path / "r.jsonl"
    assert main(["lp", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--count", "1", "--radius",
                 "--norm", "2", "--quiet", "--out", str(out)]) == 0
    rec = read_result_file(str(out))[1][0]
    assert rec.verdict == "certified" and exact - 2e-3 <= rec.radius <= exact
    assert main(["lp", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--count", "1", "--radius",
                 "--norm", "2", "--max-radius", "0.3", "--quiet"]) == 0
    assert "median over correct 0.30000" in capsys.readouterr().out          # --max-radius caps it
