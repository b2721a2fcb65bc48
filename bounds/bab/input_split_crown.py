"""Input-split branch and bound on any network the ``bounds`` engine bounds (residual adds,
max-pooling, sigmoid, ...), in float64, over its rule tables.

Boxes are bounded in batches by CROWN (``graph_bounds``: the engine's intermediate bounds,
then the output's backward pass once more with the box as a differentiable leaf, whose gradient
is the linear lower bound's input coefficients ``lam``: d/dlo + d/dhi = lam). An open box is
split in half along the dimension with the largest |lam| x width of its best row (the one that
drives most of the bound's spread), clipped to the part where its linear bound still allows a
violation (``bounds.bab.box_clip``), and its centre and the corner minimizing its linear bound
are tried as counterexamples. For a conjunction of several rows their mean is bounded too (a
violation needs every row <= 0, so the mean as well). Where CROWN has no rule for some op the
engine's interval bounds (IBP) are used instead, splitting the widest dimension relative to
the root box, with centres as the only candidates.

A box leaves the search only when a float64 bound (> ``PROOF_TOL``) or the clipping proves it:
sound whenever the engine's bounds are; complete only in the limit.
"""
from __future__ import annotations

import time

import torch

from bounds.bab.box_clip import clip_boxes
from bounds.bab.chain_bounds import PROOF_TOL
from bounds.crown import BoundTimeout
from certify.errors import CertifyError
from certify.ir import Network
from certify.spec.sets import Box


def graph_bounds(net64: Network, l: torch.Tensor, h: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                 rows: int, method: str = "crown", deadline: float | None = None):
    """Lower bounds (n, r) of C y + d over the boxes ``l``, ``h`` (n, n_in) float64, C (r, n_out),
    d (r,); with ``method="crown"`` also, per box, the row followed (the best of the first
    ``rows``), (n,), and its linear lower bound's input coefficients (n, n_in) (else None, None).
    Raises ``CertifyError`` when the engine has no rule for an op of ``net64``, ``BoundTimeout``
    past ``deadline``."""
    from bounds import compute_bounds
    from bounds.crown import crown_spec, propagate
    n, shape = l.shape[0], (l.shape[0],) + tuple(net64.input_shape)
    Cb, db = C.unsqueeze(0).expand(n, -1, -1), d.unsqueeze(0).expand(n, -1)
    if method != "crown":
        with torch.no_grad():
            b = compute_bounds(net64, Box(l.reshape(shape), h.reshape(shape)), C=Cb, d=db, method=method, upper=False,
                               deadline=deadline)
        return b.lower.reshape(n, -1), None, None
    cache: dict = {}
    with torch.no_grad():
        vals = propagate(net64, Box(l.reshape(shape), h.reshape(shape)), "crown", relax_cache=cache, deadline=deadline)
    lr, hr = l.detach().clone().requires_grad_(True), h.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        low, _ = crown_spec(net64, vals, Box(lr.reshape(shape), hr.reshape(shape)), Cb, db, upper=False,
                            relax_cache=cache, deadline=deadline)
        row = low.detach()[:, :rows].argmax(1)
        gl, gh = torch.autograd.grad(low.gather(1, row.unsqueeze(1)).sum(), [lr, hr], allow_unused=True)
    lam = torch.zeros_like(l) if gl is None else gl + gh   # None: the output does not depend on the input
    return low.detach(), row, lam


def input_split_graph(net64: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                      deadline: float, try_points, stats: dict, batch: int = 64, min_width: float = 1e-9,
                      state: dict | None = None, stop=None, clip: bool = True, mean_row: bool = True,
                      bound_deadline: float | None = None):
    """Prove max_r (C y + d)_r > 0 on [lo, hi] (n_in,) float64; C (r, n_out), d (r,).

    ``try_points(xs (N, n_in)) -> counterexample or None``. ``stop()``: polled before each batch,
    True ends the call as a timeout. ``state``: a dict that keeps the open boxes (and the bound
    method) at a timeout; passed back, the search goes on where it stopped. Counts go to
    ``stats`` (domains, bound_calls, time_bound, time_falsify; ``bound_method`` "ibp" when CROWN
    had no rule). ``bound_deadline``: a bound call still running then ends the call as a timeout
    (the boxes stay open; ``deadline`` itself is only checked between calls, so that resumed
    short calls still progress). Returns ("unsat", None), ("sat", ce), ("timeout", None) or ("unknown", None)."""
    r0 = C.shape[0]                     # branching follows the original rows only
    C, d = C.double(), d.double()
    if mean_row and r0 > 1:
        C, d = torch.cat([C, C.mean(0, keepdim=True)]), torch.cat([d, d.mean(0, keepdim=True)])
    root_w = (hi - lo).double().reshape(-1).clamp(min=1e-12)
    if state and "stack" in state:
        stack, method = state.pop("stack"), state.pop("method")
    else:
        stack, method = [(lo.reshape(1, -1).double(), hi.reshape(1, -1).double())], "crown"

    def bound(l, h):
        nonlocal method
        t = time.monotonic()
        try:
            out = graph_bounds(net64, l, h, C, d, r0, method, bound_deadline)
        except CertifyError:
            if method != "crown":
                raise
            method = stats["bound_method"] = "ibp"   # an op without a CROWN rule: interval bounds
            out = graph_bounds(net64, l, h, C, d, r0, method, bound_deadline)
        stats["bound_calls"] += 1
        stats["domains"] += l.shape[0]
        stats["time_bound"] += time.monotonic() - t
        return out

    while stack:
        if time.monotonic() > deadline or (stop is not None and stop()):
            if state is not None:
                state.update(stack=stack, method=method)
            return "timeout", None
        l, h = torch.cat([s[0] for s in stack]), torch.cat([s[1] for s in stack])
        stack = [(l[:-batch], h[:-batch])] if l.shape[0] > batch else []
        l, h = l[-batch:], h[-batch:]
        try:
            low, row, lam = bound(l, h)
        except BoundTimeout:            # the boxes go back on the stack, open
            if state is not None:
                state.update(stack=stack + [(l, h)], method=method)
            return "timeout", None
        open_ = ~(low.max(1).values > PROOF_TOL)
        if not bool(open_.any()):
            continue
        l, h, low = l[open_], h[open_], low[open_]
        width = h - l
        if lam is None:
            score, cand = width / root_w, (l + h) / 2
        else:
            row, lam = row[open_], lam[open_]
            if clip:   # the followed row's half-space: a violation needs that row <= 0 as well
                ridx = torch.arange(l.shape[0], device=l.device)
                l, h, empty = clip_boxes(l, h, lam.unsqueeze(1), low[ridx, row].unsqueeze(1))
                if bool(empty.any()):
                    stats["clipped_empty"] = stats.get("clipped_empty", 0) + int(empty.sum())
                    keep = ~empty
                    l, h, lam = l[keep], h[keep], lam[keep]
                    if l.shape[0] == 0:
                        continue
                width = h - l
            score = lam.abs() * width + 1e-12 * width / root_w
            cand = torch.cat([(l + h) / 2, torch.where(lam > 0, l, h)])
        t = time.monotonic()
        ce = try_points(cand)
        stats["time_falsify"] += time.monotonic() - t
        if ce is not None:
            return "sat", ce
        score = score.masked_fill(width <= min_width, -1.0)
        top, dim = score.max(1)
        if bool((top < 0).any()):       # a box too thin to split and still open
            return "unknown", None
        idx = torch.arange(l.shape[0], device=l.device)
        mid = ((l + h) / 2)[idx, dim]
        h_left, l_right = h.clone(), l.clone()
        h_left[idx, dim] = mid
        l_right[idx, dim] = mid
        stack.append((torch.cat([l, l_right]), torch.cat([h_left, h])))
    return "unsat", None
