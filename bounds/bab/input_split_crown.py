"""Input-split branch and bound on any network the ``bounds`` engine bounds (residual adds,
max-pooling, sigmoid, ...), in float64, over its rule tables.

Boxes are bounded in batches by CROWN (``graph_bounds``: the engine's intermediate bounds,
then the output's backward pass once more with the box as a differentiable leaf, whose gradient
is the linear lower bound's input coefficients ``lam``: d/dlo + d/dhi = lam). An open box is
clipped to the part where its linear bound still allows a violation (``bounds.bab.box_clip``),
its centre and the corner minimizing its linear bound are tried as counterexamples, and it is
split in half along one of ``candidates`` dimensions: those with the largest |lam| x width of
its best row (what drives most of the bound's spread) and the widest relative to the root box
(an input whose coefficient is small while its width keeps intermediate relaxations loose); the
children of every candidate are bounded in one batch and the candidate whose weaker child has
the best bound is kept. A child's bounds are at least its parent's (it lies inside). For a
conjunction of several rows their mean is bounded too (a violation needs every row <= 0, so the
mean as well). Where CROWN has no rule for some op the engine's interval bounds (IBP) are used
instead, the candidates then being the widest dimensions relative to the root box, with centres
as the only counterexample candidates.

A box leaves the search only when a float64 bound (> ``PROOF_TOL``) or the clipping proves it:
sound whenever the engine's bounds are; complete only in the limit.
"""
from __future__ import annotations

import math
import time

import torch

from bounds.bab.box_clip import clip_boxes
from bounds.bab.box_split import halves
from bounds.bab.chain_bounds import PROOF_TOL
from bounds.crown import ROW_BUDGET, BoundTimeout
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


def boxes_per_call(net: Network, cap: int) -> int:
    """Boxes per bound call: at most ``cap``, and as many as keep one call's interval bounds of
    every node within ``ROW_BUDGET`` elements, the size CROWN allows one backward pass's rows."""
    per_box = net.input_size + sum(math.prod(net.shape_of(n.name)) for n in net.nodes)
    return max(1, min(cap, ROW_BUDGET // per_box))


def input_split_graph(net64: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                      deadline: float, try_points, stats: dict, batch: int = 64, min_width: float = 1e-9,
                      state: dict | None = None, stop=None, clip: bool = True, mean_row: bool = True,
                      bound_deadline: float | None = None, candidates: int = 1):
    """Prove max_r (C y + d)_r > 0 on [lo, hi] (n_in,) float64; C (r, n_out), d (r,).

    ``try_points(xs (N, n_in)) -> counterexample or None``. ``stop()``: polled before each batch,
    True ends the call as a timeout. ``state``: a dict that keeps the open boxes (and the bound
    method) at a timeout; passed back, the search goes on where it stopped. ``batch``: boxes per
    bound call. ``candidates``: dimensions tried per split (module docstring). Counts go to
    ``stats`` (domains, bound_calls, time_bound, time_falsify; ``bound_method`` "ibp" when CROWN
    had no rule). ``bound_deadline``: a bound call still running then ends the call as a timeout
    (the boxes stay open; ``deadline`` itself is only checked between calls, so that resumed
    short calls still progress). Returns ("unsat", None), ("sat", ce), ("timeout", None) or ("unknown", None)."""
    r0 = C.shape[0]                     # branching follows the original rows only
    C, d = C.double(), d.double()
    if mean_row and r0 > 1:
        C, d = torch.cat([C, C.mean(0, keepdim=True)]), torch.cat([d, d.mean(0, keepdim=True)])
    n_in = lo.numel()
    k = max(1, min(candidates, n_in))
    root_w = (hi - lo).double().reshape(-1).clamp(min=1e-12)
    if state and "stack" in state:
        todo, stack, method = state.pop("todo"), state.pop("stack"), state.pop("method")
    else:
        todo, stack, method = [(lo.reshape(1, -1).double(), hi.reshape(1, -1).double())], [], "crown"

    def bound(l, h, parent_low=None):
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
        if parent_low is not None:      # a child box lies in its parent's: the parent's bounds hold on it
            out = (torch.maximum(out[0], parent_low),) + out[1:]
        return out

    def keep_state():
        if state is not None:
            state.update(todo=todo, stack=stack, method=method)

    while todo or stack:
        if time.monotonic() > deadline or (stop is not None and stop()):
            keep_state()
            return "timeout", None
        if todo:                        # boxes not bounded yet (the root, or a resumed call's)
            l, h = torch.cat([s[0] for s in todo]), torch.cat([s[1] for s in todo])
            todo = [(l[:-batch], h[:-batch])] if l.shape[0] > batch else []
            l, h = l[-batch:], h[-batch:]
            try:
                low, row, lam = bound(l, h)
            except BoundTimeout:            # the boxes go back, open
                todo.append((l, h))
                keep_state()
                return "timeout", None
            keep = ~(low.max(1).values > PROOF_TOL)
            if bool(keep.any()):
                stack.append((l[keep], h[keep], low[keep], None if row is None else row[keep],
                              None if lam is None else lam[keep]))
            continue
        l, h, low, row, lam = (None if t[0] is None else torch.cat(t) for t in zip(*stack))
        n = max(1, batch // (2 * k))     # parents whose children fill one bound call
        if l.shape[0] > n:
            stack = [tuple(None if t is None else t[:-n] for t in (l, h, low, row, lam))]
            l, h, low, row, lam = (None if t is None else t[-n:] for t in (l, h, low, row, lam))
        else:
            stack = []
        if lam is None:
            score, cand = (h - l) / root_w, (l + h) / 2
        else:
            if clip:   # the followed row's half-space: a violation needs that row <= 0 as well
                ridx = torch.arange(l.shape[0], device=l.device)
                l, h, empty = clip_boxes(l, h, lam.unsqueeze(1), low[ridx, row].unsqueeze(1))
                if bool(empty.any()):
                    stats["clipped_empty"] = stats.get("clipped_empty", 0) + int(empty.sum())
                    keep = ~empty
                    l, h, low, lam = l[keep], h[keep], low[keep], lam[keep]
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
        width = h - l
        thin = width <= min_width
        score = score.masked_fill(thin, -1.0)
        if bool((score.max(1).values < 0).any()):       # a box too thin to split and still open
            return "unknown", None
        dims, valid = _candidate_dims(score, (width / root_w).masked_fill(thin, -1.0), k)
        N, kk = dims.shape
        cl, ch, parent = halves(l, h, dims)
        try:
            clow, crow, clam = bound(cl, ch, low[parent])
        except BoundTimeout:            # the parents go back, open
            stack.append((l, h, low, row, lam))
            keep_state()
            return "timeout", None
        best = clow.max(1).values
        worse = torch.minimum(best[:N * kk], best[N * kk:]).reshape(N, kk).masked_fill(~valid, -float("inf"))
        first = torch.arange(N, device=l.device) * kk + worse.argmax(1)
        sel = torch.cat([first, N * kk + first])
        open_ = ~(best[sel] > PROOF_TOL)
        sel = sel[open_]
        if sel.numel():
            stack.append((cl[sel], ch[sel], clow[sel], None if crow is None else crow[sel],
                          None if clam is None else clam[sel]))
    return "unsat", None


def _candidate_dims(score: torch.Tensor, rel_width: torch.Tensor, k: int):
    """(N, k') dimensions to try splitting per box and a (N, k') mask of the valid ones: the
    ``k - 1`` best by ``score`` and the widest relative to the root box among the others (an input
    the bound's coefficients undervalue: one that keeps intermediate relaxations loose), or just the
    best by ``score`` for ``k = 1``. Entries < 0 are not splittable."""
    if k == 1:
        top = score.max(1)
        return top.indices.unsqueeze(1), (top.values >= 0).unsqueeze(1)
    top = score.topk(k - 1, dim=1)
    rest = rel_width.scatter(1, top.indices, -1.0).max(1)
    dims = torch.cat([top.indices, rest.indices.unsqueeze(1)], 1)
    return dims, torch.cat([top.values >= 0, (rest.values >= 0).unsqueeze(1)], 1)
