"""``bounds.radius``: the returned radius is one that CROWN proves again and PGD cannot break."""
from __future__ import annotations

import pytest
import torch

import bounds
from certify.attack import pgd_margin
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from helpers.networks import DT, mlp


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_radius_cannot_be_broken(norm):
    net = mlp(4)
    x = torch.rand(6, 6, dtype=DT, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    r, b = bounds.radius(net, x, y, norm=norm, method="crown", tol=1e-5, domain=(0.0, 1.0))
    assert bool((r >= 0).all())
    C = robustness_matrix(y, net.output_size, dtype=DT)
    s = ball(x, r, norm, domain=(0.0, 1.0))
    assert bool((b.lower[r > 0] > 0).all())
    again = bounds.compute_bounds(net, s, C, method="crown")
    assert bool((again.lower[r > 0] > 0).all())
    _, vmin = pgd_margin(net, s, C, per_row=True, steps=50, restarts=3, generator=torch.Generator().manual_seed(1))
    assert bool((vmin[r > 0] > 0).all())
    assert bool((again.lower <= vmin + 1e-9).all())
