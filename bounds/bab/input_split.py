"""Input-split branch and bound (low-dimensional inputs: a handful of dimensions).

Open boxes (bounded, not yet proved) are expanded in batches. Branching is *smart*: for each
open box the ``candidates`` dimensions with the largest |CROWN coefficient| x width are each
split in two, all those children are bounded in one batched call (CROWN, plus a few alpha
steps), and the dimension whose weaker child has the best bound is kept; its children that are
proved are dropped and the others become open boxes. A box is proved when some row of its
margins (or their mean, for a conjunction of several rows) has a positive lower bound. Open
boxes are then clipped to the part where their linear bounds still allow a violation
(``bounds.bab.box_clip``); their centres and bound-minimizing corners are tried as counterexamples.
Open boxes are kept on a stack (depth first), so memory stays bounded, and the stack can be
kept at a timeout to continue the search later (``state``).

Bounds are staged (``staged_bounds``): symbolic intervals for every box first (one GEMM per
layer for the whole batch), then CROWN refinement of the still-unstable neurons (and alpha) only
for the boxes not yet proved: the refinement costs a few symbolic passes per box and saves far
more boxes. Each child's pre-activation bounds are also intersected with its parent's
(``reuse_parent``), which keeps more neurons stable.

The scores see only the final bound's sensitivity to each input. An input can leave many
intermediate neurons unstable (its width spans their switching points) while the bound's
coefficient on it is near 0, and then no scored split helps (open boxes end up very thin in
the scored inputs and wide in another one). With
``instability`` the input causing most of the unstable neurons' ranges (``chain_bounds._forward_pre``)
is one more candidate; the pick among the candidates stays the bound-based one.

Small open boxes can be handed to exact MILPs in background threads (``BoxMilps``); the search
then ends with ``unsat`` only when its stack is empty and no parked box is left unproved.
Soundness: a box leaves the search only when a float64 bound, the clipping, or a MILP's dual
bound (with ``bounds.bab.milp_chain``'s margin) proves it.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
import torch

from bounds.bab.chain import Chain
from bounds.bab.box_clip import clip_boxes
from bounds.bab.box_split import halves
from bounds.bab.milp_chain import ChainMilp, MilpWorker, compact_encoding
from bounds.bab.chain_bounds import PROOF_TOL, bound_domains, domain_bytes
from bounds.memory import domains_within, search_budget


def input_split_bab(chain: Chain, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                    deadline: float, try_points, stats: dict, batch: int = 128,
                    iterations: int = 3, min_width: float = 1e-9, mode: str = "refine",
                    candidates: int = 5, reuse_parent: bool = True, clip: bool = True,
                    mean_row: bool = True, state: dict | None = None, milp: "BoxMilps | None" = None,
                    instability: bool = False, stop: "Callable[[], bool] | None" = None, wait: bool = True,
                    memory: int | None = None):
    """Prove max_r (C z + d)_r > 0 on the box [lo, hi] (n_in,), C (r, n_out), d (r,).

    ``try_points(xs (N, n_in)) -> counterexample or None`` is called on box centres and on the
    corners minimizing each box's linear lower bound. ``clip`` shrinks every open box to the part
    where its linear bounds still allow a violation (``bounds.bab.box_clip``). ``instability``: one
    more candidate per box, the input that causes most of its unstable neurons' ranges (below).
    ``stop()``: checked before each batch, True ends the call like the deadline (state kept);
    ``wait=False``: when only boxes parked in ``milp``'s thread are left, return at once
    ("timeout", state kept) instead of waiting for them.
    ``milp`` (a ``BoxMilps`` for this problem): the open boxes it deems small are handed to its
    thread instead of being split; a box the MILP does not prove comes back to the stack.
    Returns ("unsat", None), ("sat", ce), ("timeout", None) or ("unknown", None). ``state``: a dict
    that keeps the open boxes at a timeout; passing it back (same problem, same ``candidates``)
    continues the search where it stopped. ``memory``: bytes one bound call may hold (boxes are
    bounded in groups within it, ``staged_bounds``; None: ``bounds.memory.search_budget``'s half).
    """
    memory = search_budget(lo.device) // 2 if memory is None else memory
    r0 = C.shape[0]                     # branching follows the original rows only
    if mean_row and C.shape[0] > 1:
        # a violation needs every row <= 0, so their mean <= 0 too: a bound proving the mean row
        # positive proves the box, and its relaxation (chosen for the mean) can do so where no
        # single row's can
        C, d = torch.cat([C, C.mean(0, keepdim=True)]), torch.cat([d, d.mean(0, keepdim=True)])
    Cb, db = C.double().unsqueeze(0), d.double().unsqueeze(0)
    n_in = lo.numel()
    k_cand = max(1, min(candidates, n_in))
    unst = instability and k_cand < n_in

    def bound(l, h, pre=None):
        n = l.shape[0]
        t = time.monotonic()
        res = staged_bounds(chain, l, h, Cb.expand(n, -1, -1), db.expand(n, -1), iterations, mode, pre, unst,
                            memory)
        stats["bound_calls"] += 1
        stats["domains"] += n
        stats["time_bound"] += time.monotonic() - t
        return res

    if state is not None and "stack" in state:
        stack = state.pop("stack")
    else:
        stack = _root(lo, hi, bound, clip, min_width, stats, r0)
        if not isinstance(stack, list):
            return stack
    while True:
        if milp is not None:
            back, found, pending = milp.collect()
            stack.extend(back)
            if found:
                ce = try_points(torch.as_tensor(np.stack(found), device=lo.device))
                if ce is not None:
                    return "sat", ce
        if not stack and (milp is None or pending == 0):
            return "unsat", None          # every box proved, by bounds or by a MILP
        if time.monotonic() > deadline or (stop is not None and stop()) or (not stack and not wait):
            if state is not None:
                state["stack"] = stack
            return "timeout", None
        if not stack:                     # only boxes in the MILP threads are left
            time.sleep(0.005)
            continue
        l, h, sc, pk = (torch.cat(t) for t in zip(*stack))
        if l.shape[0] > batch:
            stack = [(l[:-batch], h[:-batch], sc[:-batch], pk[:-batch])]
            l, h, sc, pk = l[-batch:], h[-batch:], sc[-batch:], pk[-batch:]
        else:
            stack = []
        N = l.shape[0]
        sc, inst = sc[:, :n_in], sc[:, n_in:]     # inst: (N, n_in) with ``instability``, else empty
        top = sc.topk(k_cand, dim=1)
        thin = top.values[:, 0] < 0
        if bool(thin.any()):           # a box too thin to split and still open: its points decide it
            ce = try_points(torch.cat([(l[thin] + h[thin]) / 2, l[thin], h[thin]]))
            return ("sat", ce) if ce is not None else ("unknown", None)
        dims, valid, k = top.indices, top.values >= 0, k_cand               # (N, k)
        if unst:
            # one more candidate, the input with the largest instability (module docstring), unless
            # the scores pick it already
            e = inst.argmax(1, keepdim=True)
            new = ~(dims == e).any(1, keepdim=True) & (inst.gather(1, e) >= 0)
            dims, valid = torch.cat([dims, e], 1), torch.cat([valid, new], 1)
            k += 1
        cl, ch, parent = halves(l, h, dims)
        # a child box lies in its parent's, so the parent's pre-activation bounds hold on it and
        # are intersected with the child's (``reuse_parent``): more neurons stable, a cheaper
        # refinement and tighter bounds
        res = bound(cl, ch, _unpack(pk[parent], chain.hidden_sizes) if reuse_parent else None)
        best = res.lower.max(1).values.reshape(2, N, k)
        worse = torch.minimum(best[0], best[1]).masked_fill(~valid, -float("inf"))
        pick = worse.argmax(1)                               # (N,)
        first = torch.arange(N, device=pick.device) * k + pick
        sel = torch.cat([first, N * k + first])
        cl, ch = cl[sel], ch[sel]
        open_ = ~(res.lower.max(1).values[sel] > PROOF_TOL)
        if not bool(open_.any()):
            continue
        cl, ch = cl[open_], ch[open_]
        rows = sel[open_]
        sub = _Sub(res, rows)
        if clip:
            cl, ch, empty = clip_boxes(cl, ch, sub.lam_in, sub.lam_lower)
            if bool(empty.any()):
                stats["clipped_empty"] = stats.get("clipped_empty", 0) + int(empty.sum())
                keep = ~empty
                cl, ch, rows, sub = cl[keep], ch[keep], rows[keep], _Sub(sub, keep)
                if cl.shape[0] == 0:
                    continue
        sc = _scores(sub, cl, ch, min_width, r0)
        t = time.monotonic()
        ce = try_points(torch.cat([(cl + ch) / 2, _minimizers(sub, cl, ch, r0)]))
        stats["time_falsify"] += time.monotonic() - t
        if ce is not None:
            return "sat", ce
        pre = [(a[rows], b[rows]) for a, b in res.pre]
        pk = _pack(pre)
        if milp is not None:
            small = milp.eligible(cl, ch, pre)
            for i in torch.nonzero(small).flatten().tolist():
                milp.submit(cl[i], ch[i], [(a[i:i + 1], b[i:i + 1]) for a, b in pre],
                            (cl[i:i + 1], ch[i:i + 1], sc[i:i + 1], pk[i:i + 1]))
            if bool(small.any()):
                keep = ~small
                cl, ch, sc, pk = cl[keep], ch[keep], sc[keep], pk[keep]
        if cl.shape[0]:
            stack.append((cl, ch, sc, pk))


class BoxMilps:
    """Small open boxes decided exactly by HiGHS MILPs on ``threads`` ``milp_chain.MilpWorker``
    threads (one queue), beside the input split on the main thread.

    ``eligible``: the open boxes with at most ``max_unstable`` unstable ReLUs and less than
    2^-``depth`` of the root box's volume (over its dimensions of positive width). A box is
    parked with ``submit`` (its (l, h), its pre-activation bounds [(1, n_k)] and the stack record
    to give back); each gets the big-M MILP of ``milp_chain.ChainMilp`` for the conjunction
    C z + d (``time_limit`` s), stable ReLUs substituted away (``compact_encoding``). It is
    dropped only on a proof (HiGHS's dual bound with ``milp_chain``'s margin); otherwise its
    record comes back through ``collect``, with any violating incumbent as a candidate for the
    caller's ``try_points``.

    Why: near a nearly-violated point, input splitting shrinks a relaxation gap only linearly
    with the box, while a box with few unstable ReLUs has a small exact MILP.

    Two threads: the main thread has nothing to split once the search's boxes are all parked,
    and the other searches' turns then share the cores with them."""

    def __init__(self, chain: Chain, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                 max_unstable: int = 30, depth: float = 10.0, time_limit: float = 1.0, threads: int = 2):
        self.max_unstable = max_unstable
        width = (hi - lo).reshape(-1).double()
        self._positive = width > 0
        self._log_vol_max = float(torch.log2(width[self._positive]).sum()) - depth
        self.proved = 0
        self._lock = threading.Lock()
        self._boxes: dict = {}                   # id -> (l, h, pre, record) until built
        self._back, self._found, self._pending, self._next = [], [], 0, 0

        def build(key):
            l, h, pre, _ = self._boxes[key]
            return ChainMilp(chain, compact_encoding(chain, l, h, pre), C, d), time_limit

        def done(key, milp):
            record = self._boxes.pop(key)[3]
            with self._lock:
                if milp.proved:
                    self.proved += 1
                else:
                    self._back.append(record)
                    if milp.candidate is not None:
                        self._found.append(milp.candidate)
                self._pending -= 1

        self._worker = MilpWorker(build, done, threads)

    @property
    def calls(self) -> int:
        return self._worker.solves

    def eligible(self, l, h, pre) -> torch.Tensor:
        """(N,) bool: the boxes (l, h (N, n_in), bounds ``pre``) small enough for a MILP."""
        unstable = sum(((a < 0) & (b > 0)).sum(1) for a, b in pre)
        log_vol = torch.log2((h - l)[:, self._positive].clamp(min=1e-300)).sum(1)
        return (unstable <= self.max_unstable) & (log_vol <= self._log_vol_max)

    def submit(self, l, h, pre, record) -> None:
        with self._lock:
            self._pending += 1
            key, self._next = self._next, self._next + 1
        self._boxes[key] = (l, h, pre, record)
        self._worker.put(key)

    def settled(self) -> bool:
        """Whether a box has come back or none is left in the threads (the search has news)."""
        with self._lock:
            return self._pending == 0 or bool(self._back) or bool(self._found)

    def collect(self):
        """(records not proved, candidate inputs, number still in the threads), read at once."""
        with self._lock:
            back, found, pending = self._back, self._found, self._pending
            self._back, self._found = [], []
        return back, found, pending

    def close(self) -> None:
        """Cancel the running solve and stop the thread; parked boxes are forgotten."""
        self._worker.close()


def _root(lo, hi, bound, clip, min_width, stats, r0):
    """The root box bounded (and clipped): a one-entry stack of open boxes, or a final verdict."""
    l0, h0 = lo.reshape(1, -1).double(), hi.reshape(1, -1).double()
    res = bound(l0, h0)
    if bool(res.lower.max(1).values[0] > PROOF_TOL):
        return "unsat", None
    if clip:
        l0, h0, empty = clip_boxes(l0, h0, res.lam_in, res.lam_lower)
        if bool(empty[0]):
            stats["clipped_empty"] = stats.get("clipped_empty", 0) + 1
            return "unsat", None
    # stack of open boxes: (lo, hi, split scores, packed pre-activation bounds) per box
    return [(l0, h0, _scores(res, l0, h0, min_width, r0), _pack(res.pre))]


def _pack(pre) -> torch.Tensor:
    """Pre-activation bounds [(l, u) (B, n_k)] as one float32 tensor (B, 2 sum n_k), rounded
    outward (l down, u up), so the stored interval contains the float64 one: still sound."""
    lo = torch.cat([l for l, _ in pre], 1)
    up = torch.cat([u for _, u in pre], 1)
    lo32, up32 = lo.float(), up.float()
    lo32 = torch.where(lo32.double() > lo, torch.nextafter(lo32, torch.tensor(-float("inf"), device=lo32.device)), lo32)
    up32 = torch.where(up32.double() < up, torch.nextafter(up32, torch.tensor(float("inf"), device=up32.device)), up32)
    return torch.cat([lo32, up32], 1)


def _unpack(pk: torch.Tensor, sizes) -> list:
    n = sum(sizes)
    lo, up = pk[:, :n].double(), pk[:, n:].double()
    out, o = [], 0
    for k in sizes:
        out.append((lo[:, o:o + k], up[:, o:o + k]))
        o += k
    return out


FORWARD_COPIES = 5   # float64 tensors of a layer's symbolic forms (2, n, n_in + 1) alive per box in a forward pass


def boxes_per_call(chain: Chain, rows: int, memory: int) -> int:
    """Boxes ``staged_bounds`` bounds at once within ``memory`` bytes: the larger of a box's
    symbolic forms at the widest layer (``FORWARD_COPIES``) and its size in a bound call with
    alpha steps (``relu_split.domain_bytes``)."""
    forward = FORWARD_COPIES * 2 * max(chain.hidden_sizes, default=0) * (chain.n_in + 1) * 8
    return domains_within(max(forward, domain_bytes(chain, rows)[0]), memory, 1 << 62, least=1)


def staged_bounds(chain: Chain, l, h, C, d, iterations: int, mode: str, pre=None, instability: bool = False,
                  memory: int | None = None):
    """``_staged_bounds`` over the boxes in groups that fit ``memory`` bytes (``boxes_per_call``;
    None: all at once); each box's bounds are its own, so the groups' results are concatenated."""
    B = l.shape[0]
    step = B if memory is None else boxes_per_call(chain, C.shape[1], memory)
    if step >= B:
        return _staged_bounds(chain, l, h, C, d, iterations, mode, pre, instability, memory)
    parts = [_staged_bounds(chain, l[a:a + step], h[a:a + step], C[a:a + step], d[a:a + step], iterations, mode,
                            None if pre is None else [(x[a:a + step], y[a:a + step]) for x, y in pre], instability,
                            memory)
             for a in range(0, B, step)]
    cat = (lambda f: torch.cat([f(p) for p in parts]))
    return _Bounds(cat(lambda p: p.lower), cat(lambda p: p.lam_in),
                   [(cat(lambda p: p.pre[k][0]), cat(lambda p: p.pre[k][1])) for k in range(len(parts[0].pre))],
                   cat(lambda p: p.lam_lower), None if parts[0].instability is None else cat(lambda p: p.instability))


def _staged_bounds(chain: Chain, l, h, C, d, iterations: int, mode: str, pre=None, instability: bool = False,
                   memory: int | None = None):
    """Lower bounds of C z + d over the boxes, cheapest first: symbolic intervals ("forward") for
    all boxes, then ``mode`` (tighter intermediate bounds, alpha steps) only for those still
    open, over the first stage's intermediate bounds. With ``mode="refine"`` that second stage is
    CROWN for the neurons still unstable ("hybrid" would redo the symbolic-interval pass first
    for the same bounds). Both bounds are
    sound, so their maximum is; ``lam_in`` comes from the last stage run.
    ``instability``: the result's ``instability`` (B, n_in) from the first stage (else None)."""
    res = bound_domains(chain, l, h, C, d, pre=pre, iterations=0, mode="forward", instability=instability)
    if mode == "forward" and iterations == 0:
        return res
    open_ = ~(res.lower.max(1).values > PROOF_TOL)
    if not bool(open_.any()):
        return res
    # the forward stage's intermediate bounds (already intersected with ``pre``) seed the next
    sub = bound_domains(chain, l[open_], h[open_], C[open_], d[open_], iterations=iterations, mode=mode,
                        pre=[(a[open_], b[open_]) for a, b in res.pre], memory=memory)
    lower, lam, lam_lower = res.lower.clone(), res.lam_in.clone(), res.lam_lower.clone()
    lower[open_] = torch.maximum(lower[open_], sub.lower)
    lam[open_] = sub.lam_in
    lam_lower[open_] = sub.lam_lower
    pre_out = []
    for (a, b), (sa, sb) in zip(res.pre, sub.pre):
        a, b = a.clone(), b.clone()
        a[open_], b[open_] = sa, sb
        pre_out.append((a, b))
    return _Bounds(lower, lam, pre_out, lam_lower, res.instability)


class _Bounds:
    def __init__(self, lower, lam_in, pre, lam_lower, instability):
        self.lower, self.lam_in, self.pre, self.lam_lower = lower, lam_in, pre, lam_lower
        self.instability = instability


class _Sub:
    def __init__(self, res, rows):
        self.lower, self.lam_in, self.lam_lower = res.lower[rows], res.lam_in[rows], res.lam_lower[rows]
        self.instability = None if res.instability is None else res.instability[rows]


def _minimizers(res, l, h, rows):
    """(N, n_in) the corner of each box minimizing the linear lower bound of its best row (of the
    first ``rows``)."""
    lam = res.lam_in[torch.arange(l.shape[0], device=l.device), res.lower[:, :rows].max(1).indices]
    return torch.where(lam > 0, l, h)


def _scores(res, l, h, min_width, rows):
    """(N, n_in): |coefficient of the best row| x width per dimension, followed, when the bounds
    carry it, by the box's ``instability`` per dimension (N, 2 n_in); -1 where the box is too thin."""
    row = res.lower[:, :rows].max(1).indices
    width = h - l
    parts = [res.lam_in[torch.arange(l.shape[0], device=l.device), row].abs() * width]
    if res.instability is not None:
        parts.append(res.instability)
    thin = width <= min_width
    return torch.cat([(p + 1e-12 * width).masked_fill(thin, -1.0) for p in parts], 1)
