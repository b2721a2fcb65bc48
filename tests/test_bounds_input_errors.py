"""Bad input sets of the bounds API are a ``CertifyError``: a negative or NaN eps, and a centre so
far outside the domain that the clipped ball is empty."""
from __future__ import annotations

import pytest
import torch

import bounds
from certify.errors import CertifyError
from helpers.networks import DT, mlp


def test_negative_eps_is_an_error():
    with pytest.raises(CertifyError):
        bounds.crown(mlp(0), torch.rand(2, 6, dtype=DT), eps=-0.1, domain=(0.0, 1.0))


def test_nan_eps_is_an_error():
    with pytest.raises(CertifyError):
        bounds.crown(mlp(0), torch.rand(2, 6, dtype=DT), eps=float("nan"), domain=(0.0, 1.0))


def test_centre_outside_domain_is_an_error():
    net = mlp(0)
    x = torch.full((1, 6), 0.5, dtype=DT)
    x[0, 0] = 3.0                      # far outside [0, 1]: the clipped ball is empty
    with pytest.raises(CertifyError):
        bounds.crown(net, x, eps=0.1, domain=(0.0, 1.0))
