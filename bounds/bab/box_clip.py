"""Input-box clipping: shrink a box to the part where the property can still be violated.

A bound pass gives, for each margin row r of a box [l, u] (centre c, radius rad), a linear
function g_r(x) = lower_r + lam_r . (x - c) + |lam_r| . rad with g_r(x) <= (C z(x) + d)_r for every
x in the box (``DomainBounds.lam_lower`` / ``lam_in``). A violation needs every row <= 0, hence
g_r(x) <= 0 for all r: the half-spaces lam_r . x <= lam_r . c - |lam_r| . rad - lower_r. Tightening
the box to each half-space in turn (dimension i: a_i x_i <= b - sum_{j != i} min_{x_j} a_j x_j)
drops only points that provably satisfy the property, so BaB on the clipped box is still
complete and sound. A box whose clipped interval is empty in some dimension holds no violation.
With several rows, every convex combination of two half-spaces is implied by them as well; per
pair the one whose minimum over the box most exceeds its right-hand side is added (Farkas: the
box holds no point of both half-spaces iff some combination's minimum exceeds it; that minimum
is concave and piecewise linear in the weight, so the best weight is one where a combined
coefficient changes sign), and the rows are applied twice (each clip tightens the others).

Rounding: every right-hand side is loosened by 1e-9 x (the magnitude of its terms), far above the
float64 error of the few operations involved, so a clipped box always contains the exact one.

Shapes: lo, hi (B, n_in); lam (B, r, n_in); lower (B, r). Returns the clipped (lo, hi) and a
(B,) mask of boxes proved empty.
"""
from __future__ import annotations

import torch

REL_TOL = 1e-9
PAIR_WORK = 2 ** 24   # at most this many (box, pair, weight, dimension) terms for the pair combinations


def clip_boxes(lo: torch.Tensor, hi: torch.Tensor, lam: torch.Tensor, lower: torch.Tensor):
    c, rad = (hi + lo) / 2, (hi - lo) / 2
    # half-spaces a . x <= b, one per row, from the unclipped box's linear bounds
    a = lam
    b = (a * c.unsqueeze(1)).sum(-1) - (a.abs() * rad.unsqueeze(1)).sum(-1) - lower
    b = b + REL_TOL * (1.0 + lower.abs() + (a.abs() * (c.abs() + rad).unsqueeze(1)).sum(-1))
    ok = torch.isfinite(b)          # an infinite lower bound (empty domain) clips nothing here
    a, b = a.masked_fill(~ok.unsqueeze(-1), 0.0), b.masked_fill(~ok, float("inf"))
    R, n = a.shape[1], a.shape[2]
    if R > 1 and lo.shape[0] * R * (R - 1) // 2 * (n + 2) * n <= PAIR_WORK:
        pa, pb = pair_combinations(lo, hi, a, b)
        a, b = torch.cat([a, pa], 1), torch.cat([b, pb], 1)
    for _ in range(2 if a.shape[1] > 1 else 1):
        for r in range(a.shape[1]):
            lo, hi = _clip_row(lo, hi, a[:, r], b[:, r])
    # a row 0 . x <= b < 0 holds nowhere (clipping cannot show it: it has no coefficient to clip by)
    void = ((a.abs().sum(-1) == 0) & (b < 0)).any(1)
    return lo, hi, void | (lo > hi).any(1)


def pair_combinations(lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """For half-spaces a_r . x <= b_r (a (B, R, n), b (B, R); a row with b = inf is void), per
    pair r < s the combination w a_r + (1 - w) a_s, w in [0, 1], maximizing
    min_box(a_w . x) - b_w: (B, P, n) and (B, P), P = R (R - 1) / 2 (module docstring)."""
    R = a.shape[1]
    i, j = torch.triu_indices(R, R, 1, device=a.device)
    ai, aj, bi, bj = a[:, i], a[:, j], b[:, i], b[:, j]             # (B, P, n), (B, P)
    den = aj - ai
    brk = torch.where(den != 0, aj / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
    w = torch.cat([brk.clamp(0.0, 1.0), torch.zeros_like(bi).unsqueeze(-1), torch.ones_like(bi).unsqueeze(-1)], -1)
    aw = w.unsqueeze(-1) * ai.unsqueeze(2) + (1 - w).unsqueeze(-1) * aj.unsqueeze(2)   # (B, P, W, n)
    finite = torch.isfinite(bi) & torch.isfinite(bj)
    bw = w * bi.masked_fill(~finite, 0.0).unsqueeze(-1) + (1 - w) * bj.masked_fill(~finite, 0.0).unsqueeze(-1)
    l, h = lo[:, None, None], hi[:, None, None]
    gap = torch.minimum(aw * l, aw * h).sum(-1) - bw                 # (B, P, W)
    best = gap.argmax(-1, keepdim=True)
    pa = aw.gather(2, best.unsqueeze(-1).expand(-1, -1, -1, aw.shape[-1])).squeeze(2)
    pb = bw.gather(2, best).squeeze(2).masked_fill(~finite, float("inf"))
    return pa.masked_fill(~finite.unsqueeze(-1), 0.0), pb


def _clip_row(lo, hi, ar, br):
    """The box (B, n) tightened to the half-spaces ar . x <= br (ar (B, n), br (B,); a void row
    has ar = 0 and clips nothing)."""
    pos, neg = ar > 0, ar < 0
    mins = torch.where(pos, ar * lo, ar * hi)                      # min of a_j x_j over the box
    rest = mins.sum(1, keepdim=True) - mins                         # (B, n_in)
    slack = REL_TOL * (1.0 + (ar.abs() * torch.maximum(lo.abs(), hi.abs())).sum(1, keepdim=True))
    t = (br.unsqueeze(1) - rest + slack) / torch.where(pos | neg, ar, torch.ones_like(ar))
    hi = torch.where(pos, torch.minimum(hi, t), hi)
    lo = torch.where(neg, torch.maximum(lo, t), lo)
    return lo, hi
