"""Smoothing's radius formulas are tight: on a 1-D half-line classifier (the worst case of each
noise family) the certified radius equals the distance to the boundary, and converting a radius
between norms keeps the ball inside."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from smoothing.noise import NOISES, convert_radius


@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform"])
@pytest.mark.parametrize("dist", [0.05, 0.2, 0.4])
def test_radius_is_exact_on_half_line(name, dist):
    """f(z) = A iff z < a in 1-D, x = a - dist: pA = F(dist); the certified radius must equal dist
    (never exceed it: at x + dist the smoothed classifier is a tie)."""
    sigma = 0.5
    fam = NOISES[name]
    if name == "gaussian":
        pa = float(norm.cdf(dist / sigma))
    elif name == "laplace":
        pa = 1 - 0.5 * math.exp(-dist / sigma)
    else:
        pa = (dist + sigma) / (2 * sigma)
    assert fam.radius(pa, sigma) == pytest.approx(dist, rel=1e-9)


def test_convert_radius_ball_inclusion():
    """Random directions: a vector of q-norm convert_radius(R, p, q, d) has p-norm <= R."""
    g = torch.Generator().manual_seed(0)
    d = 17
    for p, q in [("2", "inf"), ("1", "inf"), ("1", "2"), ("2", "1"), ("inf", "2")]:
        r = convert_radius(1.0, p, q, d)
        v = torch.randn(2000, d, generator=g, dtype=torch.float64)
        v = torch.where(torch.rand(2000, 1, generator=g) < 0.5, v.sign(), v)    # corners too
        qn = {"1": 1, "2": 2, "inf": float("inf")}
        v = v / torch.linalg.vector_norm(v, ord=qn[q], dim=1, keepdim=True) * r
        assert float(torch.linalg.vector_norm(v, ord=qn[p], dim=1).max()) <= 1.0 + 1e-9
