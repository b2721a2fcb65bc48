"""Softmax along one axis: IBP and CROWN rules.

Along the axis (n entries), y_i = 1 / s_i with s_i = 1 + sum_{j != i} exp(z_ij), z_ij = x_j - x_i
(exactly softmax, with x_i cancelled: the differences are what the bounds see).

* IBP: y_i is increasing in x_i and decreasing in every other x_j, so its tightest box bounds
  are 1 / (1 + sum_j exp(hi_j - lo_i)) and 1 / (1 + sum_j exp(lo_j - hi_i)) (exact), moved
  outward for the rounding of the n-term sums and the divisions.
* CROWN: the composition's relaxations, from the inside out: z_ij in [lo_j - hi_i, hi_j - lo_i],
  exp relaxed on that interval, s_i in the sum of the exp intervals, 1/s relaxed on
  [s_lo, s_hi] (s >= 1); a row's coefficient a_i on y_i takes the reciprocal's lower line when
  a_i >= 0 (else the upper), its coefficient on s_i then picks the exp lines the same way, and
  z_ij = x_j - x_i sends it back onto x_j and -x_i. Cost per row: n^2 per softmax group.
"""
from __future__ import annotations

import torch

from certify.ir import ops as O
from bounds import activations as act

Tensor = torch.Tensor
_EXP, _RECIPROCAL = O.Exp(), O.Reciprocal()


def _last(t: Tensor, axis: int) -> Tensor:
    """(B, ..., n at per-sample ``axis``, ...) -> the axis moved last."""
    return t.movedim(axis + 1, -1)


def _diffs(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds of z_ij = x_j - x_i: (..., n, n) [i, j]."""
    return lo.unsqueeze(-2) - hi.unsqueeze(-1), hi.unsqueeze(-2) - lo.unsqueeze(-1)


def _off_diagonal(n: int, like: Tensor) -> Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=like.device)


def _sum_bounds(e_lo: Tensor, e_hi: Tensor, off: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds of s_i = 1 + sum_{j != i} e_ij, rounded outward (n-term sums of non-negative terms)."""
    n = e_lo.shape[-1]
    tol = 10 * (n + 2) * torch.finfo(e_lo.dtype).eps
    zero = torch.zeros((), dtype=e_lo.dtype, device=e_lo.device)
    s_lo = 1 + torch.where(off, e_lo.clamp(min=0), zero).sum(-1)
    s_hi = 1 + torch.where(off, e_hi, zero).sum(-1)
    return (s_lo * (1 - tol)).clamp(min=1.0), s_hi * (1 + tol)


def softmax_interval(op: O.Softmax, x) -> tuple[Tensor, Tensor]:
    lo, hi = _last(x[0], op.axis), _last(x[1], op.axis)
    n = lo.shape[-1]
    z_lo, z_hi = _diffs(lo, hi)
    off = _off_diagonal(n, lo)
    s_lo, s_hi = _sum_bounds(torch.exp(z_lo), torch.exp(z_hi), off)
    tol = 10 * torch.finfo(lo.dtype).eps
    y_lo = (1.0 / s_hi * (1 - tol)).clamp(0.0, 1.0)
    y_hi = (1.0 / s_lo * (1 + tol)).clamp(0.0, 1.0)
    return y_lo.movedim(-1, op.axis + 1), y_hi.movedim(-1, op.axis + 1)


def _relaxations(lo: Tensor, hi: Tensor):
    """The exp lines on z (B, 1, ..., n, n) and the reciprocal lines on s (B, 1, ..., n)."""
    z_lo, z_hi = _diffs(lo, hi)
    off = _off_diagonal(lo.shape[-1], lo)
    e_lo, e_hi = act.interval(_EXP, z_lo, z_hi)
    s_lo, s_hi = _sum_bounds(e_lo, e_hi, off)
    return act.relax(_EXP, z_lo, z_hi), act.relax(_RECIPROCAL, s_lo, s_hi), off


def softmax_backward(op: O.Softmax, A: Tensor, node, ctx):
    """Rows A (B, R, *shape) of softmax(x) -> coefficients on x, bias (B, R)."""
    lo, hi = ctx.bounds(node.inputs[0])
    ax = op.axis
    e, r, off = ctx.relaxation((node.name, "softmax"),
                               lambda l, h: _relaxations(_last(l, ax).unsqueeze(1), _last(h, ax).unsqueeze(1)), lo, hi)
    a = _last(A, op.axis + 1)                                 # (B, R, ..., n)
    ap, an = a.clamp(min=0), a.clamp(max=0)
    c = ap * r.lower_slope + an * r.upper_slope                 # on s_i
    bias = act.intercept_sum(ap, r.lower_bias) + act.intercept_sum(an, r.upper_bias) + c.flatten(2).sum(2)
    zero = torch.zeros((), dtype=A.dtype, device=A.device)
    cp = torch.where(off, c.clamp(min=0).unsqueeze(-1), zero)       # on e_ij (j != i)
    cn = torch.where(off, c.clamp(max=0).unsqueeze(-1), zero)
    d = cp * e.lower_slope + cn * e.upper_slope                      # on z_ij = x_j - x_i
    bias = bias + act.intercept_sum(cp, e.lower_bias) + act.intercept_sum(cn, e.upper_bias)
    coef = d.sum(-2) - d.sum(-1)
    return [coef.movedim(-1, op.axis + 2)], bias
