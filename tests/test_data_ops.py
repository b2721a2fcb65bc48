"""Data-movement and reduction ops (Slice, Gather, Transpose, Pad, ReduceSum, ReduceMean,
ConvTranspose2d): sound and exact bounds, the ONNX and torch front-end rules against
onnxruntime / the module, the export round trip, and the convex engines on them."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import bounds
from certify.errors import CertifyError
from certify.frontends.onnx import from_model
from certify.frontends.torch import from_module
from certify.ir import (ConvTranspose2d, Gather, Pad, ReduceMean, ReduceSum, Slice, Transpose, sequential)
from certify.ir.export import to_model
from certify.spec.output import margins
from certify.spec.sets import Box, ball
from data_ops_nets import NETS
from test_bounds_soundness import _check, _extremes, _spec

ort = pytest.importorskip("onnxruntime")
TOL = 1e-5


# ----------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("name", list(NETS))
def test_bounds_hold_for_samples_and_attacks_float64(name):
    net = NETS[name]()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((2,) + net.input_shape, generator=g, dtype=torch.float64)
    s = ball(x, 0.25, "inf", None)
    C, d = _spec(net, 2)
    ext = _extremes(net, s, C, d)                  # 10k samples, PGD on every row (min and max)
    res = {}
    for method in ("ibp", "crown", "alpha"):
        res[method] = bounds.compute_bounds(net, s, C, d, method=method, **({"iterations": 8} if method == "alpha" else {}))
        _check(res[method], ext, 1e-9)
    assert (res["alpha"].lower >= res["crown"].lower - 1e-9).all()
    # the ReLUs make the bounds loose: the check is not vacuous
    assert float((ext[1] - res["crown"].lower).max()) > 1e-3


@pytest.mark.parametrize("name", ["slice", "gather", "pad", "reduce", "conv_transpose", "branches"])
def test_bounds_hold_float32(name):
    net = NETS[name]().to(torch.float32)
    net64 = net.to(torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.rand((2,) + net.input_shape, generator=g, dtype=torch.float64)
    C, d = _spec(net, 2, seed=3)
    ext = _extremes(net64, ball(x, 0.25, "inf", None), C, d)
    s32 = ball(x.float(), 0.25, "inf", None)
    for method in ("ibp", "crown", "alpha"):
        b = bounds.compute_bounds(net, s32, C.float(), d.float(), method=method,
                                  **({"iterations": 5} if method == "alpha" else {}))
        scale = float(b.upper.abs().max()) + 1.0
        b64 = type(b)(b.lower.double(), b.upper.double())
        _check(b64, ext, 1e-5 * scale)


def _jacobian(op, in_shape):
    """(J, c) of the affine op on flattened tensors: y = J x + c (float64)."""
    n = math.prod(in_shape)
    basis = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
    out = op.forward(basis.reshape((n + 1,) + tuple(in_shape))).reshape(n + 1, -1)
    return (out[1:] - out[0]).T, out[0]


OPS = {
    "slice": (Slice(1, 4, -1, -3), (2, 6)),
    "gather": (Gather(0, (2, 2, 0), (3,)), (3, 2)),
    "transpose": (Transpose((1, 2, 0)), (2, 3, 2)),
    "pad": (Pad(((0, 1), (2, -1)), -0.7), (2, 3)),
    "reduce_sum": (ReduceSum((0, 2)), (2, 3, 2)),
    "reduce_mean": (ReduceMean((1,), keepdims=True), (2, 3)),
    "conv_transpose": (ConvTranspose2d(torch.randn(4, 2, 3, 2, dtype=torch.float64),
                                       torch.randn(4, dtype=torch.float64), (2, 1), (1, 0), (1, 0), (1, 2), 2),
                       (4, 3, 3)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_ibp_and_crown_are_exact_on_the_op_alone(name):
    """An affine op alone: IBP gives each output's exact range, CROWN each row's exact range."""
    op, shape = OPS[name]
    net = sequential(shape, [op])
    J, c = _jacobian(op, shape)
    g = torch.Generator().manual_seed(0)
    lo = torch.randn((2,) + shape, generator=g, dtype=torch.float64)
    hi = lo + torch.rand((2,) + shape, generator=g, dtype=torch.float64)
    s = Box(lo, hi)
    mid, rad = ((lo + hi) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    ib = bounds.compute_bounds(net, s, method="ibp")
    exact_lo, exact_hi = mid @ J.T + c - rad @ J.abs().T, mid @ J.T + c + rad @ J.abs().T
    assert torch.allclose(ib.lower, exact_lo, atol=1e-12) and torch.allclose(ib.upper, exact_hi, atol=1e-12)
    C = torch.randn(2, 4, net.output_size, generator=g, dtype=torch.float64)
    cr = bounds.compute_bounds(net, s, C, method="crown")
    CJ = torch.matmul(C, J)                                     # (2, 4, n)
    centre = (CJ @ mid.unsqueeze(2)).squeeze(2) + C @ c
    radius = (CJ.abs() @ rad.unsqueeze(2)).squeeze(2)
    assert torch.allclose(cr.lower, centre - radius, atol=1e-12)
    assert torch.allclose(cr.upper, centre + radius, atol=1e-12)


def test_convex_engines_bound_networks_with_these_ops():
    """LP and MILP (the ops as exact sparse maps) agree with sampling and enclose it tightly."""
    from certify.convex import lp, milp
    net = NETS["branches"]()
    x = torch.rand((1,) + net.input_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s = ball(x, 0.2, "inf", None)
    C, d = _spec(net, 1, seed=5)
    m, vmin, vmax = _extremes(net, s, C, d)
    r_lp = lp(net, x, input_set=s, C=C, d=d)
    r_milp = milp(net, x, input_set=s, C=C, d=d, mode="full")
    for r in (r_lp, r_milp):
        assert all(st == "optimal" for st in r.status[0])
        assert (m >= r.lower - 1e-7).all() and (vmin >= r.lower - 1e-7).all()
    assert (r_milp.lower >= r_lp.lower - 1e-7).all()
    # MILP is exact: PGD's minimum is attained up to the attack's own gap
    assert float((vmin - r_milp.lower).max()) < 1e-3
