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
    """For bounds (B, G, n) along the axis: the exp lines' slopes on z (B, G, n, n) with a zero
    diagonal and their row sums (B, G, n), the row sums of their intercepts over j != i (B, G, n),
    and the reciprocal's lines on s (B, 1, G, n)."""
    z_lo, z_hi = _diffs(lo, hi)
    off = _off_diagonal(lo.shape[-1], lo)
    e_lo, e_hi = act.interval(_EXP, z_lo, z_hi)
    s_lo, s_hi = _sum_bounds(e_lo, e_hi, off)
    e = act.relax(_EXP, z_lo, z_hi)
    zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
    kl, ku, bl, bu = (torch.where(off, t, zero) for t in (e.lower_slope, e.upper_slope, e.lower_bias, e.upper_bias))
    lines = (kl, ku, kl.sum(-1), ku.sum(-1), bl.sum(-1).unsqueeze(1), bu.sum(-1).unsqueeze(1))
    return lines, act.relax(_RECIPROCAL, s_lo.unsqueeze(1), s_hi.unsqueeze(1))


def softmax_backward(op: O.Softmax, A: Tensor, node, ctx):
    """Rows A (B, R, *shape) of softmax(x) -> coefficients on x, bias (B, R)."""
    lo, hi = ctx.bounds(node.inputs[0])
    B, R = A.shape[:2]
    n = lo.shape[op.axis + 1]

    def groups(t):                          # (B, ..., n at the axis, ...) -> (B, G, n)
        return _last(t, op.axis).reshape(t.shape[0], -1, n)
    (kl, ku, rl, ru, bl, bu), r = ctx.relaxation((node.name, "softmax"),
                                                 lambda l, h: _relaxations(groups(l), groups(h)), lo, hi)
    moved = _last(A, op.axis + 1)
    a = moved.reshape(B, R, -1, n)                                # (B, R, G, n)
    ap, an = a.clamp(min=0), a.clamp(max=0)
    c = ap * r.lower_slope + an * r.upper_slope                   # on s_i
    bias = act.intercept_sum(ap, r.lower_bias) + act.intercept_sum(an, r.upper_bias) + c.flatten(2).sum(2)
    cp, cn = c.clamp(min=0), c.clamp(max=0)                       # on e_ij: c_i (j != i)
    # on z_ij = x_j - x_i: d_ij = cp_i kl_ij + cn_i ku_ij; x_j gets sum_i d_ij, x_i loses sum_j d_ij
    col = torch.matmul(cp.transpose(1, 2), kl) + torch.matmul(cn.transpose(1, 2), ku)   # (B, G, R, n)
    coef = col.transpose(1, 2) - (cp * rl.unsqueeze(1) + cn * ru.unsqueeze(1))
    bias = bias + act.intercept_sum(cp, bl) + act.intercept_sum(cn, bu)
    return [coef.reshape(moved.shape).movedim(-1, op.axis + 2)], bias
