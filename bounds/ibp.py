"""Interval bound propagation: one rule per IR op, in ``IBP_RULES``.

A rule takes the op and one interval ``(lo, hi)`` per node input (tensors (B, *shape)) and
returns the interval of the op's output. Affine ops use the centre/radius form
(``W mid +- |W| rad``), monotone ops are applied to both ends. Every rule is exact for the
box it receives (the tightest box containing the op's image of that box), so IBP is sound.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from certify.ir import ops as O

Interval = tuple[torch.Tensor, torch.Tensor]


def _channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (ndim - 2))


def _linear(op: O.Linear, x: Interval) -> Interval:
    lo, hi = x
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    c = F.linear(mid, op.weight, op.bias)
    r = F.linear(rad, op.weight.abs())
    return c - r, c + r


def _conv(op: O.Conv2d, x: Interval) -> Interval:
    lo, hi = x
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    c = F.conv2d(mid, op.weight, op.bias, op.stride, op.padding, op.dilation, op.groups)
    r = F.conv2d(rad, op.weight.abs(), None, op.stride, op.padding, op.dilation, op.groups)
    return c - r, c + r


def _scale(lo, hi, scale, shift):
    a, b = lo * scale, hi * scale
    return torch.minimum(a, b) + shift, torch.maximum(a, b) + shift


def _const_mul(op: O.ConstMul, x: Interval) -> Interval:
    return _scale(x[0], x[1], op.const, 0.0)


def _const_add(op: O.ConstAdd, x: Interval) -> Interval:
    return x[0] + op.const, x[1] + op.const


def _channel_affine(op, x: Interval) -> Interval:
    scale, shift = op.scale_shift()
    nd = x[0].dim()
    return _scale(x[0], x[1], _channel(scale, nd), _channel(shift, nd))


def _add(op, a: Interval, b: Interval) -> Interval:
    return a[0] + b[0], a[1] + b[1]


def _sub(op, a: Interval, b: Interval) -> Interval:
    return a[0] - b[1], a[1] - b[0]


def _monotone(op, x: Interval) -> Interval:
    """Ops that are non-decreasing in every input (pooling, activations, reshapes)."""
    return op.forward(x[0]), op.forward(x[1])


def _concat(op: O.Concat, *xs: Interval) -> Interval:
    return op.forward(*(x[0] for x in xs)), op.forward(*(x[1] for x in xs))


IBP_RULES = {
    O.Linear: _linear,
    O.Conv2d: _conv,
    O.ConstAdd: _const_add,
    O.ConstMul: _const_mul,
    O.Add: _add,
    O.Sub: _sub,
    O.BatchNorm: _channel_affine,
    O.Normalize: _channel_affine,
    O.AvgPool2d: _monotone,       # non-negative weights
    O.MaxPool2d: _monotone,
    O.Flatten: _monotone,
    O.Reshape: _monotone,
    O.Identity: _monotone,
    O.Concat: _concat,
    O.ReLU: _monotone,
    O.Sigmoid: _monotone,
    O.Tanh: _monotone,
}


def ibp_node(op: O.Op, inputs: list[Interval]) -> Interval:
    """The output interval of ``op`` given its inputs' intervals."""
    try:
        rule = IBP_RULES[type(op)]
    except KeyError:
        from certify.errors import CertifyError
        raise CertifyError(f"IBP has no rule for op {op.kind}") from None
    return rule(op, *inputs)


def ibp_spec(op_out: O.Op, x_in: Interval, C: torch.Tensor, d: torch.Tensor | None) -> Interval:
    """Interval of ``C @ y + d`` where ``y = op_out(x)`` is a Linear output layer: C is folded
    into the layer first (``(C W) x + C b``), which is tighter than bounding y then C y."""
    lo, hi = x_in
    W = torch.einsum("brk,ki->bri", C.to(op_out.weight.dtype), op_out.weight)
    mid, rad = ((hi + lo) / 2).unsqueeze(2), ((hi - lo) / 2).unsqueeze(2)
    c = torch.bmm(W, mid).squeeze(2)
    if op_out.bias is not None:
        c = c + torch.einsum("brk,k->br", C.to(op_out.weight.dtype), op_out.bias)
    r = torch.bmm(W.abs(), rad).squeeze(2)
    if d is not None:
        c = c + d
    return c - r, c + r


def interval_spec(y: Interval, C: torch.Tensor, d: torch.Tensor | None) -> Interval:
    """Interval of ``C @ y + d`` from an interval of y (B, K)."""
    lo, hi = y[0].flatten(1), y[1].flatten(1)
    mid, rad = ((hi + lo) / 2).unsqueeze(2), ((hi - lo) / 2).unsqueeze(2)
    c = torch.bmm(C.to(lo.dtype), mid).squeeze(2)
    r = torch.bmm(C.abs().to(lo.dtype), rad).squeeze(2)
    if d is not None:
        c = c + d
    return c - r, c + r
