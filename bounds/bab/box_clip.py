"""Input-box clipping: shrink a box to the part where the property can still be violated.

A bound pass gives, for each margin row r of a box [l, u] (centre c, radius rad), a linear
function g_r(x) = lower_r + lam_r . (x - c) + |lam_r| . rad with g_r(x) <= (C z(x) + d)_r for every
x in the box (``DomainBounds.lam_lower`` / ``lam_in``). A violation needs every row <= 0, hence
g_r(x) <= 0 for all r: the half-spaces lam_r . x <= lam_r . c - |lam_r| . rad - lower_r. Tightening
the box to each half-space in turn (dimension i: a_i x_i <= b - sum_{j != i} min_{x_j} a_j x_j)
drops only points that provably satisfy the property, so BaB on the clipped box is still
complete and sound. A box whose clipped interval is empty in some dimension holds no violation.

Rounding: every right-hand side is loosened by 1e-9 x (the magnitude of its terms), far above the
float64 error of the few operations involved, so a clipped box always contains the exact one.

Shapes: lo, hi (B, n_in); lam (B, r, n_in); lower (B, r). Returns the clipped (lo, hi) and a
(B,) mask of boxes proved empty.
"""
from __future__ import annotations

import torch

REL_TOL = 1e-9


def clip_boxes(lo: torch.Tensor, hi: torch.Tensor, lam: torch.Tensor, lower: torch.Tensor):
    c, rad = (hi + lo) / 2, (hi - lo) / 2
    # half-spaces a . x <= b, one per row, from the unclipped box's linear bounds
    a = lam
    b = (a * c.unsqueeze(1)).sum(-1) - (a.abs() * rad.unsqueeze(1)).sum(-1) - lower
    b = b + REL_TOL * (1.0 + lower.abs() + (a.abs() * (c.abs() + rad).unsqueeze(1)).sum(-1))
    ok = torch.isfinite(b)          # an infinite lower bound (empty domain) clips nothing here
    for r in range(a.shape[1]):
        ar, br = a[:, r], b[:, r]
        pos, neg = ar > 0, ar < 0
        mins = torch.where(pos, ar * lo, ar * hi)                  # min of a_j x_j over the box
        rest = mins.sum(1, keepdim=True) - mins                     # (B, n_in)
        slack = REL_TOL * (1.0 + (ar.abs() * torch.maximum(lo.abs(), hi.abs())).sum(1, keepdim=True))
        t = (br.unsqueeze(1) - rest + slack) / torch.where(pos | neg, ar, torch.ones_like(ar))
        use = ok[:, r].unsqueeze(1)
        hi = torch.where(pos & use, torch.minimum(hi, t), hi)
        lo = torch.where(neg & use, torch.maximum(lo, t), lo)
    return lo, hi, (lo > hi).any(1)
