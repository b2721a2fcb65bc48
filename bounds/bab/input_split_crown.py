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
the best bound (its own, before the parent's is applied) is kept. A child's bounds are at least
its parent's (it lies inside), and so are its pre-activation bounds where the open boxes can
keep theirs (``reuse_parent``: fewer unstable neurons, fewer CROWN rows). For a
conjunction of several rows their mean is bounded too (a violation needs every row <= 0, so the
mean as well), every row's linear bound clips the box, and the search follows the best-bounded
row among those positive at the box's centre (``_followed_row``). Where CROWN has no rule for
some op the engine's interval bounds (IBP) are used instead, the candidates then being the widest dimensions relative to the root box, with centres
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
from bounds.crown import ROW_BUDGET, BoundTimeout, preactivation_nodes
from certify.errors import CertifyError
from certify.ir import Network
from certify.spec.sets import Box


def graph_bounds(net64: Network, l: torch.Tensor, h: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                 rows: int, method: str = "crown", deadline: float | None = None, reference: dict | None = None,
                 keep: dict | None = None, every_row: bool = False):
    """Lower bounds (n, r) of C y + d over the boxes ``l``, ``h`` (n, n_in) float64, C (r, n_out),
    d (r,); with ``method="crown"`` also, per box, the row followed (the best of the first
    ``rows``), (n,), and its linear lower bound's input coefficients (n, n_in), or with
    ``every_row`` every row's (n, r, n_in) (else None, None).
    ``reference``: sound pre-activation bounds of these boxes {node: (lo, hi) (n, *shape)} (e.g.
    their parents'), intersected with theirs before CROWN (``propagate``); ``keep``: a dict that
    receives the boxes' pre-activation bounds (CROWN only). Raises ``CertifyError`` when the
    engine has no rule for an op of ``net64``, ``BoundTimeout`` past ``deadline``."""
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
        vals = propagate(net64, Box(l.reshape(shape), h.reshape(shape)), "crown", relax_cache=cache, deadline=deadline,
                         reference=reference)
    if keep is not None:
        keep.update((k, vals[k]) for k in preactivation_nodes(net64))
    lr, hr = l.detach().clone().requires_grad_(True), h.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        low, _ = crown_spec(net64, vals, Box(lr.reshape(shape), hr.reshape(shape)), Cb, db, upper=False,
                            relax_cache=cache, deadline=deadline)
        row = _followed_row(net64, l, h, C, d, low.detach()[:, :rows])
        outs = [low[:, j] for j in range(low.shape[1])] if every_row else [low.gather(1, row.unsqueeze(1))]
        lams = []
        for k, o in enumerate(outs):
            gl, gh = torch.autograd.grad(o.sum(), [lr, hr], allow_unused=True, retain_graph=k + 1 < len(outs))
            lams.append(torch.zeros_like(l) if gl is None else gl + gh)   # None: no dependence on the input
    lam = torch.stack(lams, 1) if every_row else lams[0]
    return low.detach(), row, lam


def _followed_row(net64: Network, l: torch.Tensor, h: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                  low: torch.Tensor) -> torch.Tensor:
    """(n,) per box the row of ``low`` (n, r) to branch on: the best bound among the rows
    positive at the box's centre (a row <= 0 there is never proved on the box; with none, the
    centre violates, and the best bound is taken)."""
    if low.shape[1] == 1:
        return torch.zeros(low.shape[0], dtype=torch.long, device=low.device)
    with torch.no_grad():
        y = net64(((l + h) / 2).reshape((-1,) + tuple(net64.input_shape))).reshape(l.shape[0], -1)
    pos = (y @ C[:low.shape[1]].T + d[:low.shape[1]]) > 0
    pos = pos | ~pos.any(1, keepdim=True)
    return low.masked_fill(~pos, -float("inf")).argmax(1)


def boxes_per_call(net: Network, cap: int) -> int:
    """Boxes per bound call: at most ``cap``, and as many as keep one call's interval bounds of
    every node within ``ROW_BUDGET`` elements, the size CROWN allows one backward pass's rows."""
    per_box = net.input_size + sum(math.prod(net.shape_of(n.name)) for n in net.nodes)
    return max(1, min(cap, ROW_BUDGET // per_box))


MAX_OPEN = 100_000   # open boxes a search is expected to hold at once (sizes what each may carry)


def parent_bounds_fit(net: Network, budget: int) -> bool:
    """Whether ``MAX_OPEN`` open boxes can each keep their float64 pre-activation bounds (for
    their children, ``reuse_parent``) within ``budget`` bytes."""
    per_box = 2 * 8 * sum(math.prod(net.shape_of(n)) for n in preactivation_nodes(net))
    return per_box * MAX_OPEN <= budget


def input_split_graph(net64: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                      deadline: float, try_points, stats: dict, batch: int = 64, min_width: float = 1e-9,
                      state: dict | None = None, stop=None, clip: bool = True, mean_row: bool = True,
                      bound_deadline: float | None = None, candidates: int = 1, reuse_parent: bool = False):
    """Prove max_r (C y + d)_r > 0 on [lo, hi] (n_in,) float64; C (r, n_out), d (r,).

    ``try_points(xs (N, n_in)) -> counterexample or None``. ``stop()``: polled before each batch,
    True ends the call as a timeout. ``state``: a dict that keeps the open boxes (and the bound
    method) at a timeout; passed back, the search goes on where it stopped. ``batch``: boxes per
    bound call. ``candidates``: dimensions tried per split (module docstring). ``reuse_parent``:
    each open box keeps its pre-activation bounds, and its children's are intersected with them
    before CROWN (a neuron they make stable needs no CROWN pass). Counts go to
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

    packer = _Packer(net64) if reuse_parent and preactivation_nodes(net64) else None

    def bound(l, h, parent_pk=None):
        """(low, row, every row's lam, packed pre-activation bounds or None) of the boxes l, h."""
        nonlocal method
        t = time.monotonic()
        keep = {} if packer is not None and method == "crown" else None
        ref = None if parent_pk is None else packer.unpack(parent_pk)
        try:
            out = graph_bounds(net64, l, h, C, d, r0, method, bound_deadline, reference=ref, keep=keep,
                               every_row=True)
        except CertifyError:
            if method != "crown":
                raise
            method = stats["bound_method"] = "ibp"   # an op without a CROWN rule: interval bounds
            out, keep = graph_bounds(net64, l, h, C, d, r0, method, bound_deadline), None
        stats["bound_calls"] += 1
        stats["domains"] += l.shape[0]
        stats["time_bound"] += time.monotonic() - t
        return out + (packer.pack(keep) if keep else None,)

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
                res = bound(l, h)
            except BoundTimeout:            # the boxes go back, open
                todo.append((l, h))
                keep_state()
                return "timeout", None
            keep = ~(res[0].max(1).values > PROOF_TOL)
            if bool(keep.any()):
                stack.append(_rows((l, h) + res[:3] + (res[0],) + res[3:], keep))
            continue
        top = tuple(None if t[0] is None else torch.cat(t) for t in zip(*stack))
        n = max(1, batch // (2 * k))     # parents whose children fill one bound call
        if top[0].shape[0] > n:
            stack = [_rows(top, slice(None, -n))]
            top = _rows(top, slice(-n, None))
        else:
            stack = []
        # low: the box's own bound (that of its linear bound ``lam``, what clipping needs);
        # floor: the best bound known for it (its ancestors' hold on it too)
        l, h, low, row, lam, floor, pk = top
        if lam is None:
            score, cand = (h - l) / root_w, (l + h) / 2
        else:
            if clip:   # a violation needs every row <= 0: each row's half-space clips
                l, h, empty = clip_boxes(l, h, lam, low)
                if bool(empty.any()):
                    stats["clipped_empty"] = stats.get("clipped_empty", 0) + int(empty.sum())
                    keep = ~empty
                    l, h, low, row, lam, floor, pk = _rows((l, h, low, row, lam, floor, pk), keep)
                    if l.shape[0] == 0:
                        continue
            width = h - l
            lam1 = lam[torch.arange(l.shape[0], device=l.device), row]   # the followed row's
            score = lam1.abs() * width + 1e-12 * width / root_w
            cand = torch.cat([(l + h) / 2, torch.where(lam1 > 0, l, h)])
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
            res = bound(cl, ch, None if pk is None else pk[parent])
        except BoundTimeout:            # the parents go back, open
            stack.append((l, h, low, row, lam, floor, pk))
            keep_state()
            return "timeout", None
        # the pick follows the children's own bounds (no ties at the parent's) on the row their
        # parent follows (a row it is not is refuted at the parent's centre)
        best = res[0].max(1).values if row is None else res[0].gather(1, row[parent].unsqueeze(1)).squeeze(1)
        worse = torch.minimum(best[:N * kk], best[N * kk:]).reshape(N, kk).masked_fill(~valid, -float("inf"))
        first = torch.arange(N, device=l.device) * kk + worse.argmax(1)
        sel = torch.cat([first, N * kk + first])
        # a child box lies in its parent's: the parent's bounds hold on it
        child_floor = torch.maximum(res[0], floor[parent])
        open_ = ~(child_floor[sel].max(1).values > PROOF_TOL)
        sel = sel[open_]
        if sel.numel():
            stack.append(_rows((cl, ch) + res[:3] + (child_floor,) + res[3:], sel))
    return "unsat", None


def _rows(t: tuple, idx) -> tuple:
    """The boxes ``idx`` of a stack record (tensors indexed along their first axis; None stays)."""
    return tuple(None if x is None else x[idx] for x in t)


class _Packer:
    """A box's pre-activation bounds {node: (lo, hi) (N, *shape)} as one (N, 2 P) tensor (a stack
    record's column) and back."""

    def __init__(self, net: Network):
        self.names = list(preactivation_nodes(net))
        self.shapes = [tuple(net.shape_of(n)) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]

    def pack(self, vals: dict) -> torch.Tensor:
        N = vals[self.names[0]][0].shape[0]
        return torch.cat([t.reshape(N, -1) for n in self.names for t in vals[n]], 1)

    def unpack(self, pk: torch.Tensor) -> dict:
        out, k = {}, 0
        for n, shape, size in zip(self.names, self.shapes, self.sizes):
            out[n] = (pk[:, k:k + size].reshape((-1,) + shape), pk[:, k + size:k + 2 * size].reshape((-1,) + shape))
            k += 2 * size
        return out


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
