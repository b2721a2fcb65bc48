"""Input-split branch and bound for networks that are not affine/ReLU chains (residual adds,
max-pooling, sigmoid, ...), over the ``bounds`` engine's CROWN in float64.

Each box is bounded by ``bounds.compute_bounds(net, Box, C, d, method="crown")``; an open box
is split in half along its widest dimension relative to the root box, and its centre is tried
as a counterexample. Sound whenever the engine's bounds are; complete only in the limit.
"""
from __future__ import annotations

import time

import torch

from certify.ir import Network
from certify.spec.sets import Box
from bounds.bab.chain_bounds import PROOF_TOL


def input_split_crown(net64: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                        deadline: float, try_points, stats: dict, batch: int = 64, min_width: float = 1e-9):
    """Prove max_r (C y + d)_r > 0 on [lo, hi] (n_in,); same returns as ``input_split_bab``."""
    from bounds import compute_bounds
    shape = tuple(net64.input_shape)
    root_w = (hi - lo).double().clamp(min=1e-12)
    stack_lo, stack_hi = [lo.reshape(1, -1).double()], [hi.reshape(1, -1).double()]
    while stack_lo:
        if time.monotonic() > deadline:
            return "timeout", None
        l, h = torch.cat(stack_lo), torch.cat(stack_hi)
        stack_lo, stack_hi = ([l[:-batch]], [h[:-batch]]) if l.shape[0] > batch else ([], [])
        l, h = l[-batch:], h[-batch:]
        n = l.shape[0]
        t = time.monotonic()
        with torch.no_grad():
            b = compute_bounds(net64, Box(l.reshape((n,) + shape), h.reshape((n,) + shape)),
                               C=C.double().unsqueeze(0).expand(n, -1, -1), d=d.double().unsqueeze(0).expand(n, -1),
                               method="crown", upper=False)
        stats["bound_calls"] += 1
        stats["domains"] += n
        stats["time_bound"] += time.monotonic() - t
        open_ = ~(b.lower.reshape(n, -1).max(1).values > PROOF_TOL)
        if not bool(open_.any()):
            continue
        l, h = l[open_], h[open_]
        ce = try_points((l + h) / 2)
        if ce is not None:
            return "sat", ce
        rel = (h - l) / root_w
        dim = rel.argmax(1)
        idx = torch.arange(l.shape[0])
        if bool(((h - l)[idx, dim] <= min_width).any()):
            return "unknown", None
        mid = ((l + h) / 2)[idx, dim]
        h_left, l_right = h.clone(), l.clone()
        h_left[idx, dim] = mid
        l_right[idx, dim] = mid
        stack_lo.append(torch.cat([l, l_right]))
        stack_hi.append(torch.cat([h_left, h]))
    return "unsat", None
