"""Concretization: the minimum of a linear function ``A . x + c`` over an input set.

``A`` has shape (B, R, *input_shape), ``c`` (B, R); the result is (B, R) lower bounds, one
per row, each the exact minimum over the set (or over a superset of it):

* box (and the L-inf ball, clipped or not, which is a box): ``A.mid - |A|.rad``;
* L2 ball: ``A.center - eps ||A||_2``; L1 ball: ``A.center - eps ||A||_inf`` (the dual norms:
  the dual of L1 is L-inf, the largest |A_j|). A ball clipped to a domain is a subset of both
  the ball and the box ``input_set.box()``, so the larger of the two minima is taken: both are
  sound, the max is tighter.
"""
from __future__ import annotations

import torch

from certify.spec.sets import BOX_NORMS, InputSet


# Outward rounding of the concretization's own arithmetic: the computed minimum is lowered by
# ROUND * unit roundoff * (|A| . (|mid| + rad)), which covers the rounding of the last dot products
# (so a minimum that is attained, e.g. exactly 0 at a tie, is never reported above itself).
ROUND = 4.0
# dual norm of each ball's norm, over the features of a row (B, R, n) -> (B, R)
DUAL_NORMS = {"2": lambda A: A.norm(dim=2), "1": lambda A: A.abs().amax(dim=2)}


def _box_min(A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    mid = ((hi + lo) / 2).flatten(1).unsqueeze(2)         # (B, n, 1)
    rad = ((hi - lo) / 2).flatten(1).unsqueeze(2)
    Af = A.flatten(2)                                     # (B, R, n)
    absA = torch.bmm(Af.abs(), torch.cat([rad, mid.abs() + rad], 2))   # (B, R, 2)
    slack = ROUND * torch.finfo(A.dtype).eps * absA[..., 1]
    return torch.bmm(Af, mid).squeeze(2) - absA[..., 0] - slack


def concretize_lower(A: torch.Tensor, input_set: InputSet) -> torch.Tensor:
    """min over x in the set of ``A . x`` for every row: (B, R)."""
    lo, hi = input_set.box()
    if lo.dtype != A.dtype:
        lo, hi = lo.to(A.dtype), hi.to(A.dtype)
    box = _box_min(A, lo, hi)
    if input_set.norm in BOX_NORMS:
        return box
    center = input_set.center.to(A.dtype)
    eps = torch.as_tensor(input_set.eps, dtype=A.dtype)
    eps = eps.expand(A.shape[0]) if eps.dim() == 0 else eps
    Af = A.flatten(2)
    nrm = DUAL_NORMS[input_set.norm](Af)
    slack = ROUND * torch.finfo(A.dtype).eps * (torch.bmm(Af.abs(), center.abs().flatten(1).unsqueeze(2)).squeeze(2)
                                                + eps.unsqueeze(1) * nrm)
    ball = torch.bmm(Af, center.flatten(1).unsqueeze(2)).squeeze(2) - eps.unsqueeze(1) * nrm - slack
    if input_set.domain is None:
        return ball
    return torch.maximum(ball, box)
