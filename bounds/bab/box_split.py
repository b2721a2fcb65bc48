"""Children of boxes split in half, one child pair per candidate dimension.

Shapes: lo, hi (N, n) boxes; dims (N, k) the dimensions to split, per box. ``halves`` returns
the children (lo, hi) (2 N k, n): first every lower half (box-major, then candidate), then the
upper halves in the same order, and (2 N k,) the index of each child's box. Each child lies in
its box and each pair covers it exactly (the midpoint is shared)."""
from __future__ import annotations

import torch


def halves(lo: torch.Tensor, hi: torch.Tensor, dims: torch.Tensor):
    N, k = dims.shape
    n = lo.shape[1]
    idx = torch.arange(N, device=lo.device).unsqueeze(1).expand(N, k)
    mid = ((lo + hi) / 2)[idx, dims]
    L, H = lo.unsqueeze(1).expand(N, k, n).clone(), hi.unsqueeze(1).expand(N, k, n).clone()
    H_left, L_right = H.clone(), L.clone()
    i0, i1 = idx.reshape(-1), torch.arange(k, device=lo.device).repeat(N)
    H_left[i0, i1, dims.reshape(-1)] = mid.reshape(-1)
    L_right[i0, i1, dims.reshape(-1)] = mid.reshape(-1)
    cl = torch.cat([L.reshape(-1, n), L_right.reshape(-1, n)])
    ch = torch.cat([H_left.reshape(-1, n), H.reshape(-1, n)])
    return cl, ch, torch.arange(N, device=lo.device).repeat_interleave(k).repeat(2)
