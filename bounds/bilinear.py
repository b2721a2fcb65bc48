"""Products of two network tensors, ``Mul`` (elementwise, broadcast) and ``MatMul``: IBP and
CROWN rules from McCormick planes.

For a in [la, ua] and b in [lb, ub], whatever their signs,

    lb a + la b - la lb  <=  a b  <=  ub a + la b - la ub

(the planes through the corners (la, lb) and (la, ub), as auto_LiRPA takes them); with alpha
(per output, lower and upper) each line is a convex combination with the other corner's plane,
ua b + ub a - ua ub below and lb a + ua b - ua lb above (every weight in [0, 1] is sound). The interval
of a product is the min / max of its four corner products (exact for a box); a MatMul output's
is the sum of its terms' intervals (exact: one output's terms involve distinct entries). A
``Mul`` of a node with itself is the square (``bounds.activations.SQUARE``): its convex lines
and exact image, not a product of two independent copies. Where an input bound is infinite,
the output takes its interval's constants (slope 0) and the rows that depend on it -inf.
"""
from __future__ import annotations

import torch

from bounds import activations as act
from bounds.smooth import nan_to_inf

Tensor = torch.Tensor


def _corners(la, ua, lb, ub) -> tuple[Tensor, Tensor]:
    p = torch.stack(torch.broadcast_tensors(la * lb, la * ub, ua * lb, ua * ub))
    return nan_to_inf(p.min(0).values, p.max(0).values)


def _lift(t: Tensor, rank: int) -> Tensor:
    """(B, *s) -> (B, 1, 1, ..., *s) with the per-sample dims right-aligned to ``rank`` dims."""
    return t.reshape((t.shape[0], 1) + (1,) * (rank - (t.dim() - 1)) + tuple(t.shape[1:]))


def mul_interval(op, a, b):
    """IBP of a * b (a is b: the same node, so the square)."""
    if a is b:
        return act.interval(act.SQUARE, *a)
    rank = max(a[0].dim(), b[0].dim()) - 1
    la, ua, lb, ub = (_lift(t, rank)[:, 0] for t in (a[0], a[1], b[0], b[1]))
    return _corners(la, ua, lb, ub)


def matmul_interval(op, a, b):
    la, ua = a[0].unsqueeze(-1), a[1].unsqueeze(-1)          # (B, ..., m, k, 1)
    lb, ub = b[0].unsqueeze(-3), b[1].unsqueeze(-3)          # (B, ..., 1, k, n)
    lo, hi = _corners(la, ua, lb, ub)
    return nan_to_inf(lo.sum(-2), hi.sum(-2))


def _unbroadcast(T: Tensor, shape) -> Tensor:
    """Coefficients (B, R, *out) of a broadcast input summed back onto its per-sample ``shape``."""
    lead = T.dim() - 2 - len(shape)
    if lead:
        T = T.sum(tuple(range(2, 2 + lead)))
    dims = tuple(2 + i for i, s in enumerate(shape) if s == 1 and T.shape[2 + i] != 1)
    return T.sum(dims, keepdim=True) if dims else T


def _finite(*ts) -> Tensor:
    ok = torch.isfinite(ts[0])
    for t in ts[1:]:
        ok = ok & torch.isfinite(t)
    return ok


def _split_off(A: Tensor, ok: Tensor, y, ts):
    """Rows A with the outputs where not ``ok`` moved onto the constants of their interval ``y``
    (lo, hi); returns (A where ok, their bias, the bounds ``ts`` with infinite entries zeroed)."""
    zero = torch.zeros((), dtype=A.dtype, device=A.device)
    Ad = torch.where(ok, zero, A)
    bias = act.intercept_sum(Ad.clamp(min=0), y[0].unsqueeze(1)) + act.intercept_sum(Ad.clamp(max=0),
                                                                                     y[1].unsqueeze(1))
    return torch.where(ok, A, zero), bias, tuple(torch.where(torch.isfinite(t), t, zero) for t in ts)


def _square(A, node, ctx):
    lo, hi = ctx.bounds(node.inputs[0])
    alpha = act.split_alpha(act.SQUARE, ctx.alpha(node.name, A.shape[1]))
    r = act.relax(act.SQUARE, lo.unsqueeze(1), hi.unsqueeze(1), alpha)
    Ap = A.clamp(min=0)
    As = A * r.upper_slope + Ap * (r.lower_slope - r.upper_slope)
    bias = act.intercept_sum(A - Ap, r.upper_bias) + act.intercept_sum(Ap, r.lower_bias)
    half = As * 0.5                 # the two (identical) inputs share the coefficients
    return [half, half], bias


def mul_backward(op, A, node, ctx):
    """Rows A (B, R, *out) of a * b -> coefficients on a and on b, bias (B, R)."""
    if node.inputs[0] == node.inputs[1]:
        return _square(A, node, ctx)
    (la, ua), (lb, ub) = ctx.bounds(node.inputs[0]), ctx.bounds(node.inputs[1])
    sa, sb = ctx.in_shapes
    rank = A.dim() - 2
    la, ua, lb, ub = (_lift(t, rank) for t in (la, ua, lb, ub))
    bias = torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device)
    ok = _finite(la, ua, lb, ub)
    if not bool(ok.all()):
        y = mul_interval(op, (la[:, 0], ua[:, 0]), (lb[:, 0], ub[:, 0]))
        A, bias, (la, ua, lb, ub) = _split_off(A, ok, y, (la, ua, lb, ub))
    Ap = A.clamp(min=0)
    An = A - Ap
    w = _plane_weights(ctx.alpha(node.name, A.shape[1]))
    if w is None:                   # auto_LiRPA's planes
        coef_a = Ap * lb + An * ub
        coef_b = A * la
        bias = bias - ((Ap * (la * lb)).flatten(2).sum(2) + (An * (la * ub)).flatten(2).sum(2))
    else:                           # lower = (1 - al) P1 + al P2, upper = (1 - au) Q1 + au Q2
        L0, L1, U0, U1 = Ap * (1 - w[0]), Ap * w[0], An * (1 - w[1]), An * w[1]
        coef_a = (L0 + U1) * lb + (L1 + U0) * ub
        coef_b = (L0 + U0) * la + (L1 + U1) * ua
        k = L0 * (la * lb) + L1 * (ua * ub) + U0 * (la * ub) + U1 * (ua * lb)
        bias = bias - k.flatten(2).sum(2)
    return [_unbroadcast(coef_a, sa), _unbroadcast(coef_b, sb)], bias


def _plane_weights(alpha):
    """alpha (B, R, 2 * out[0], ...) -> (lower, upper) weights of the second planes, or None."""
    if alpha is None:
        return None
    return tuple(a.clamp(0.0, 1.0) for a in alpha.chunk(2, dim=2))


def matmul_backward(op, A, node, ctx):
    """Rows A (B, R, ..., m, n) of a @ b -> coefficients on a (B, R, ..., m, k) and b (B, R, ..., k, n)."""
    (la, ua), (lb, ub) = ctx.bounds(node.inputs[0]), ctx.bounds(node.inputs[1])
    la, ua, lb, ub = (t.unsqueeze(1) for t in (la, ua, lb, ub))
    bias = torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device)
    fa, fb = _finite(la, ua), _finite(lb, ub)
    if not bool(fa.all() & fb.all()):
        ok = fa.all(-1).unsqueeze(-1) & fb.all(-2).unsqueeze(-2)         # outputs with finite terms
        y = matmul_interval(op, (la[:, 0], ua[:, 0]), (lb[:, 0], ub[:, 0]))
        A, bias, (la, ua, lb, ub) = _split_off(A, ok, y, (la, ua, lb, ub))
    Ap = A.clamp(min=0)
    An = A - Ap
    T = lambda t: t.transpose(-1, -2)  # noqa: E731
    mm = torch.matmul
    w = _plane_weights(ctx.alpha(node.name, A.shape[1]))
    if w is None:                   # auto_LiRPA's planes
        coef_a = mm(Ap, T(lb)) + mm(An, T(ub))
        coef_b = mm(T(la), A)
        k = Ap * mm(la, lb) + An * mm(la, ub)
    else:                           # per output: lower = (1 - al) P1 + al P2, upper = (1 - au) Q1 + au Q2
        L0, L1, U0, U1 = Ap * (1 - w[0]), Ap * w[0], An * (1 - w[1]), An * w[1]
        coef_a = mm(L0 + U1, T(lb)) + mm(L1 + U0, T(ub))
        coef_b = mm(T(la), L0 + U0) + mm(T(ua), L1 + U1)
        k = L0 * mm(la, lb) + L1 * mm(ua, ub) + U0 * mm(la, ub) + U1 * mm(ua, lb)
    return [coef_a, coef_b], bias - k.flatten(2).sum(2)
