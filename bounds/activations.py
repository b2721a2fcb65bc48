"""One record per elementwise nonlinear IR op: the facts every bound engine reads.

``ACTIVATIONS[op class]`` is an ``Activation``:

* ``interval(op, lo, hi) -> (lo', hi')``: the image of [lo, hi] (IBP), exact or moved outward
  for rounding, never NaN (+-inf where the op is unbounded on [lo, hi]);
* ``relax(op, lo, hi, alpha=None) -> Relax``: lines ``ls x + lb <= f(x) <= us x + ub`` valid
  for every x in [lo, hi] (see ``relax`` below for infinite bounds);
* ``unstable(op, lo, hi) -> bool``: where the relaxation is not exact: the neurons that need a
  CROWN bound, get alpha variables and can be split;
* ``alpha_init(op, lo, hi)`` (None: not optimizable): alpha variables in [0, 1] reproducing
  CROWN's lines, (B, n_alpha * shape[0], *shape[1:]) (the lines' parameters stacked along the
  first per-sample axis; ``split_alpha`` cuts them apart); ``relax`` then takes them (one
  tensor for n_alpha = 1, a tuple of n_alpha tensors otherwise). Every alpha in [0, 1] gives
  sound lines; ReLU's is the lower slope, LeakyReLU's a + alpha (1 - a), the smooth ops'
  (lower line, upper line) fractions of the range of f' on [lo, hi];
* ``split_point``: a split of a neuron cuts its pre-activation there (+1: x >= p, -1: x <= p);
  None: the op is not split at a fixed point;
* ``split_mid``: branch and bound may split a neuron at the midpoint of its interval (the smooth
  ops and Floor, whose lines tighten on every sub-interval); ``split_at`` gives either point;
* ``lower_bias_zero``: the lower lines pass through 0 (CROWN skips their intercepts);
  ``alpha_is_lower_slope``: alpha is the lower slope of the unstable neurons and no other line
  depends on it (the lines can be computed once on a conv grid and gathered per window);
  ``ibp_forward``: ``interval`` is ``(op.forward(lo), op.forward(hi))`` (monotone, exact);
  ``bounded``: finite bounds always give finite lines (else ``relax`` checks).

``NEEDS_BOUNDS``: every op class whose backward rule reads bounds of its inputs (these records,
MaxPool2d, and the bilinear and softmax ops): their inputs are the pre-activation nodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from certify.ir import ops as O
from bounds import relaxations as R
from bounds import smooth as S
from bounds.relaxations import Relax

Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    interval: Callable
    relax: Callable
    unstable: Callable
    alpha_init: Callable | None = None
    n_alpha: int = 0
    split_point: float | None = None
    split_mid: bool = False
    lower_bias_zero: bool = False
    alpha_is_lower_slope: bool = False
    ibp_forward: bool = False
    bounded: bool = True


def _forward(op, lo, hi):
    return op.forward(lo), op.forward(hi)


def _everywhere(op, lo, hi):
    return torch.ones_like(lo, dtype=torch.bool)


def _kink(op, lo, hi):
    return R.relu_unstable(lo, hi)


def _leaky_interval(op, lo, hi):
    zero = torch.zeros_like(lo)
    pts = torch.stack([lo, hi, torch.maximum(torch.minimum(zero, hi), lo)])
    v = op.forward(pts)
    return S.nan_to_inf(v.min(0).values, v.max(0).values)


def _smooth(fn: S.Smooth, bounded: bool) -> Activation:
    return Activation(interval=lambda op, lo, hi: S.interval(fn, op, lo, hi),
                      relax=lambda op, lo, hi, alpha=None: S.relax(fn, op, lo, hi, alpha),
                      unstable=_everywhere,
                      alpha_init=lambda op, lo, hi: S.alpha_init(fn, op, lo, hi), n_alpha=2, bounded=bounded,
                      split_mid=True)


def _s_shaped(default: Callable, fn: S.Smooth) -> Activation:
    """Sigmoid / Tanh: CROWN's lines are ``default``'s (bounds/relaxations.py); alpha's have the
    slopes kmin + alpha (kmax - kmin) and sound intercepts (bounds/smooth.py), starting at CROWN's slopes."""
    def relax(op, lo, hi, alpha=None):
        return default(lo, hi) if alpha is None else S.relax(fn, op, lo, hi, alpha)

    def alpha_init(op, lo, hi):
        r = default(lo, hi)
        return S.alpha_init(fn, op, lo, hi, (r.lower_slope, r.upper_slope))
    return Activation(_forward, relax, _everywhere, alpha_init=alpha_init, n_alpha=2, ibp_forward=True, split_mid=True)


ACTIVATIONS: dict[type, Activation] = {
    O.ReLU: Activation(_forward, lambda op, lo, hi, alpha=None: R.relu_relax(lo, hi, alpha), _kink,
                       alpha_init=lambda op, lo, hi: R.relu_adaptive_slope(lo, hi), n_alpha=1, split_point=0.0,
                       lower_bias_zero=True, alpha_is_lower_slope=True, ibp_forward=True),
    O.Sigmoid: _s_shaped(R.sigmoid_relax, S.SIGMOID),
    O.Tanh: _s_shaped(R.tanh_relax, S.TANH),
    # nonlinear ops beyond ReLU / Sigmoid / Tanh
    O.LeakyReLU: Activation(_leaky_interval,
                            lambda op, lo, hi, alpha=None: R.leaky_relu_relax(lo, hi, op.negative_slope, alpha),
                            _kink, alpha_init=lambda op, lo, hi: R.relu_adaptive_slope(lo, hi), n_alpha=1,
                            split_point=0.0),
    O.Exp: _smooth(S.EXP, bounded=False),
    O.Log: _smooth(S.LOG, bounded=False),
    O.Reciprocal: _smooth(S.RECIPROCAL, bounded=False),
    O.Pow: _smooth(S.POW, bounded=False),
    O.Sin: _smooth(S.SIN, bounded=True),
    O.Cos: _smooth(S.COS, bounded=True),
    O.Sign: Activation(_forward, lambda op, lo, hi, alpha=None: R.sign_relax(lo, hi, alpha),
                       lambda op, lo, hi: torch.sign(lo) != torch.sign(hi),
                       alpha_init=lambda op, lo, hi: R.sign_alpha_init(lo, hi), n_alpha=2, split_point=0.0,
                       ibp_forward=True),
    O.Floor: Activation(_forward, lambda op, lo, hi, alpha=None: R.floor_relax(lo, hi, alpha),
                        lambda op, lo, hi: torch.floor(lo) != torch.floor(hi),
                        alpha_init=lambda op, lo, hi: R.floor_alpha_init(lo, hi), n_alpha=2, ibp_forward=True,
                        split_mid=True),
}

NEEDS_BOUNDS: tuple[type, ...] = tuple(ACTIVATIONS) + (O.MaxPool2d, O.Mul, O.MatMul, O.Softmax)
"""Op classes whose backward rule reads the bounds of their inputs."""

UNBOUNDED: tuple[type, ...] = tuple(c for c, a in ACTIVATIONS.items() if not a.bounded) + (O.Mul, O.MatMul)
"""Op classes whose output bounds can be infinite (or overflow) for finite input bounds."""


SQUARE = O.Pow(2.0)
"""The op a ``Mul`` of a node with itself applies (x * x is the square, not a product of two copies)."""


def elementwise_op(node):
    """The elementwise nonlinear op ``node`` applies to its first input (a Mul of a node with
    itself: the square), or None."""
    if type(node.op) in ACTIVATIONS:
        return node.op
    if isinstance(node.op, O.Mul) and node.inputs[0] == node.inputs[1]:
        return SQUARE
    return None


def node_alpha_init(node, ins: list) -> Tensor | None:
    """The initial alpha variables of ``node`` from its inputs' bounds ``ins`` [(lo, hi), ...]:
    its record's ``alpha_init`` where some neuron is unstable, for a product of two tensors
    (Mul, MatMul) zeros (B, 2 * shape[0], *shape[1:]) -- the weights of the second McCormick
    planes in the lower and upper lines, 0 being auto_LiRPA's planes -- else None."""
    op = elementwise_op(node)
    if op is not None:
        rec = ACTIVATIONS[type(op)]
        lo, hi = ins[0]
        if rec.alpha_init is None or not bool(rec.unstable(op, lo, hi).any()):
            return None
        return rec.alpha_init(op, lo, hi)
    if isinstance(node.op, (O.Mul, O.MatMul)):
        lo = ins[0][0]
        shape = (2 * node.shape[0],) + tuple(node.shape[1:])
        return torch.zeros((lo.shape[0],) + shape, dtype=lo.dtype, device=lo.device)
    return None


def record(op) -> Activation | None:
    """The record of ``op``'s class, or None (not an elementwise nonlinear op)."""
    return ACTIVATIONS.get(type(op))


def split_at(op, lo: Tensor, hi: Tensor) -> Tensor | None:
    """Where branch and bound splits the neurons of ``op`` with pre-activation bounds [lo, hi]: the
    record's ``split_point``, or the intervals' midpoints (``split_mid``); None: not split."""
    rec = ACTIVATIONS.get(type(op))
    if rec is None:
        return None
    if rec.split_point is not None:
        return torch.full_like(lo, rec.split_point)
    return (lo + hi) / 2 if rec.split_mid else None


def split_alpha(op, alpha: Tensor | None, dim: int = 2):
    """Alpha variables as ``relax`` takes them: one tensor, or a tuple of the lines' parameters."""
    if alpha is None:
        return None
    n = ACTIVATIONS[type(op)].n_alpha
    return alpha if n == 1 else tuple(alpha.chunk(n, dim=dim))


def interval(op, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The image of [lo, hi] under ``op`` (IBP)."""
    return ACTIVATIONS[type(op)].interval(op, lo, hi)


def relax(op, lo: Tensor, hi: Tensor, alpha=None, finite: bool = False) -> Relax:
    """The record's lines, with finite slopes always: where a bound is infinite or the record has
    no finite line (1/x over an interval containing 0, exp overflowing, ...), the line is the
    constant of the interval (slope 0, intercept the interval's end, which may be -inf / +inf).
    ``finite``: the caller knows every bound is finite (no check for a bounded record)."""
    rec = ACTIVATIONS[type(op)]
    if finite and rec.bounded:
        return rec.relax(op, lo, hi, alpha)
    fin = torch.isfinite(lo) & torch.isfinite(hi)
    all_fin = bool(fin.all())
    if all_fin and rec.bounded:
        return rec.relax(op, lo, hi, alpha)
    l, h = lo, hi
    if not all_fin:
        zero = torch.zeros_like(lo)
        l, h = torch.where(fin, lo, zero), torch.where(fin, hi, zero)
    r = rec.relax(op, l, h, alpha)
    ok_lo = fin & torch.isfinite(r.lower_slope) & torch.isfinite(r.lower_bias)
    ok_up = fin & torch.isfinite(r.upper_slope) & torch.isfinite(r.upper_bias)
    if bool(ok_lo.all() & ok_up.all()):
        return r
    c_lo, c_up = rec.interval(op, lo, hi)
    zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
    return Relax(torch.where(ok_lo, r.lower_slope, zero), torch.where(ok_lo, r.lower_bias, c_lo),
                 torch.where(ok_up, r.upper_slope, zero), torch.where(ok_up, r.upper_bias, c_up))


def intercept_sum(C: Tensor, b: Tensor, finite: bool = False) -> Tensor:
    """sum over the features of ``C * b`` (C (B, R, *shape); b (B, 1 or R, *shape)) with 0 * inf = 0;
    a nonzero coefficient on an infinite intercept gives -inf (the callers pass C <= 0 with upper
    intercepts and C >= 0 with lower ones, so every such term is -inf). ``finite``: b is known finite."""
    B, R = C.shape[:2]
    fin = None if finite else torch.isfinite(b)
    if finite or bool(fin.all()):
        if b.shape[1] == 1:
            return torch.bmm(C.reshape(B, R, -1), b.reshape(B, -1, 1)).squeeze(2)
        return (C * b).flatten(2).sum(2)
    bf = torch.where(fin, b, torch.zeros((), dtype=b.dtype, device=b.device))
    out = (C * bf).flatten(2).sum(2)
    hit = ((C != 0) & ~fin).flatten(2).any(2)
    return torch.where(hit, torch.full_like(out, -float("inf")), out)


def needs_bounds(op) -> bool:
    return isinstance(op, NEEDS_BOUNDS)


__all__ = ["Activation", "ACTIVATIONS", "NEEDS_BOUNDS", "UNBOUNDED", "SQUARE", "elementwise_op", "node_alpha_init",
           "record", "split_at", "split_alpha", "interval", "relax",
           "intercept_sum", "needs_bounds"]
