"""CROWN's backward rule of Conv2d: the rows it sends to the conv's input are the adjoint of the
convolution (conv_transpose2d), for windows that tile the input (a patch embedding) and for
overlapping, padded, strided and dilated ones; the bounds of a patch-embedding network hold on
sampled points."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from bounds import compute_bounds
from bounds.backward_rules import _conv, _tiles
from certify.ir import Conv2d, Flatten, Linear, ReLU
from certify.spec.sets import Box
from helpers.networks import DT, sequential

CASES = [  # (in shape, out channels, kernel, stride, padding, dilation), the first two tile their input
    ((3, 8, 8), 5, 4, 4, 0, 1), ((2, 6, 9), 4, (2, 3), (2, 3), 0, 1),
    ((3, 9, 9), 5, 4, 4, 0, 1), ((3, 8, 8), 5, 3, 2, 1, 1), ((1, 7, 7), 2, 2, 2, 0, 2), ((3, 8, 8), 4, 4, 2, 0, 1)]


@pytest.mark.parametrize("case", CASES)
def test_rows_on_the_input_are_the_adjoint_of_the_convolution(case):
    shape, out_c, k, stride, pad, dil = case
    g = torch.Generator().manual_seed(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    op = Conv2d(torch.randn(out_c, shape[0], kh, kw, dtype=DT, generator=g), torch.randn(out_c, dtype=DT, generator=g),
                stride, pad, dil)
    out_shape = op.infer_shape([shape])
    assert _tiles(op, shape, out_shape) == (case in CASES[:2])
    A = torch.randn((2, 3) + tuple(out_shape), dtype=DT, generator=g)
    (At,), bias = _conv(op, A, None, types.SimpleNamespace(in_shapes=[shape]))
    x = torch.randn((1,) + shape, dtype=DT, generator=g)
    y = F.conv2d(x, op.weight, op.bias, op.stride, op.padding, op.dilation)
    # A . conv(x) = At . x + bias for every x: the rule is exact
    lhs = (A * y.unsqueeze(1)).flatten(2).sum(2)
    rhs = (At * x.unsqueeze(1)).flatten(2).sum(2) + bias
    assert torch.allclose(lhs, rhs, atol=1e-10, rtol=1e-10)


def test_patch_embedding_network_bounds_hold_on_samples():
    g = torch.Generator().manual_seed(1)
    net = sequential((3, 8, 8), [Conv2d(torch.randn(6, 3, 4, 4, dtype=DT, generator=g) / 4,
                                        torch.randn(6, dtype=DT, generator=g), 4, 0), ReLU(), Flatten(),
                                 Linear(torch.randn(4, 24, dtype=DT, generator=g) / 4, torch.zeros(4, dtype=DT))])
    x = torch.rand((1, 3, 8, 8), dtype=DT, generator=g)
    box = Box(x - 0.1, x + 0.1)
    res = compute_bounds(net, box, method="crown")
    xs = (x - 0.1) + 0.2 * torch.rand((20000, 3, 8, 8), dtype=DT, generator=g)
    xs = torch.cat([xs, torch.where(torch.rand_like(xs) < 0.5, x - 0.1, x + 0.1)])
    with torch.no_grad():
        y = net(xs)
    assert bool((y >= res.lower - 1e-9).all() & (y <= res.upper + 1e-9).all())
