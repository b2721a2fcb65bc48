"""Exact decision of one obligation by mixed-integer programming on a ``Chain`` (HiGHS).

The big-M encoding of ``certify.convex.encode`` (Tjeng et al. 2019) over the box and the given
pre-activation bounds (e.g. the root's alpha-CROWN ones: the tighter, the fewer binaries and the
smaller the big-M constants), one binary per unstable ReLU. HiGHS runs in decision mode: it stops
as soon as its dual bound proves the obligation or an incumbent violates it.

Guarantees, as for ``certify.convex.milp``: ``unsat`` only when HiGHS's branch-and-bound dual
bound of min_x max_r (C z + d)_r, lowered by ``MARGIN * (1 + |bound|)`` (its feasibility
tolerances are 1e-6 / 1e-7), is positive; a violating incumbent is only a candidate for the
caller's ``try_points`` (checked in float64 through the network). A conjunction of several rows
is encoded with one extra variable t <= every row (min t): its optimum is the max-row value.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp
import torch

from bounds.bab.chain import Chain
from certify.convex.encode import Encoding, encode
from certify.convex.highs import make_highs, set_objective, status_name
from certify.convex.linearize import Affine, PiecewiseLinear, ReluLayer

MARGIN = 1e-5   # a dual bound must exceed this (relative, plus absolute) to count as a proof


def chain_to_pl(chain: Chain) -> PiecewiseLinear:
    """The chain as the convex engine's ``PiecewiseLinear`` (one ReLU layer per hidden layer)."""
    layers = [ReluLayer(f"relu{k}", f"pre{k}", Affine({k: sp.csr_matrix(w.numpy())}, b.numpy().copy()),
                        (w.shape[0],))
              for k, (w, b) in enumerate(zip(chain.weights[:-1], chain.biases[:-1]))]
    L = len(chain.weights) - 1
    out = Affine({L: sp.csr_matrix(chain.weights[-1].numpy())}, chain.biases[-1].numpy().copy())
    return PiecewiseLinear((chain.n_in,), layers, out)


def box_encoding(chain: Chain, lo: torch.Tensor, hi: torch.Tensor, pre) -> Encoding:
    """The big-M encoding of the hidden layers over the box ``lo``, ``hi`` (n_in,) and the bounds
    ``pre`` (list of (l, u), (1, n_k) or (n_k,)): shared by every obligation of one box."""
    return encode(chain_to_pl(chain), lo.double().numpy().ravel(), hi.double().numpy().ravel(),
                  [(l.double().numpy().ravel(), u.double().numpy().ravel()) for l, u in pre], binary=True)


class ChainMilp:
    """The MILP of one obligation ``max_r (C z_L + d)_r > 0`` over a box, from the box's
    ``box_encoding``. ``solve`` runs HiGHS
    (one thread) until the obligation is decided, ``time_limit`` passes or ``cancel()`` is called;
    it is meant to run in a background thread beside branch and bound (HiGHS releases the GIL).
    After it: ``proved`` (bool), ``candidate`` (an input (n_in,) float64, clipped into the box,
    whose MILP value is negative, or None), ``status`` (HiGHS's), ``dual`` (the dual bound of the max-row value)."""

    def __init__(self, chain: Chain, box: Encoding, C: torch.Tensor, d: torch.Tensor):
        r, N = C.shape[0], box.A.shape[1]
        off = box.offsets[-1]
        W = chain.weights[-1].numpy()
        Cn, dn = C.double().numpy(), d.double().numpy()
        rows = np.zeros((r, N + 1))
        rows[:, off:off + W.shape[1]] = Cn @ W
        rows[:, N] = -1.0                                  # row_r(z) - t <= -(C b + d)_r
        self.enc = replace(
            box, A=sp.vstack([sp.hstack([box.A, sp.csr_matrix((box.A.shape[0], 1))]), sp.csr_matrix(rows)]).tocsr(),
            row_lo=np.concatenate([box.row_lo, np.full(r, -np.inf)]),
            row_hi=np.concatenate([box.row_hi, -(Cn @ chain.biases[-1].numpy() + dn)]),
            col_lo=np.concatenate([box.col_lo, [-np.inf]]), col_hi=np.concatenate([box.col_hi, [np.inf]]),
            integer=np.concatenate([box.integer, [False]]))
        self.n_in = chain.n_in
        self.binaries = int(box.integer.sum())
        self.proved, self.candidate, self.status, self.dual = False, None, "not_run", -np.inf
        self._cancel = False

    def cancel(self) -> None:
        self._cancel = True

    def solve(self, time_limit: float) -> None:
        h = make_highs(self.enc, max(time_limit, 0.01))
        cost = np.zeros(self.enc.A.shape[1])
        cost[-1] = 1.0
        set_objective(h, cost, 0.0)

        def stop(e):
            if self._cancel or e.data_out.mip_dual_bound > MARGIN or e.data_out.mip_primal_bound < -MARGIN:
                e.interrupt()
        h.cbMipInterrupt.subscribe(stop)
        try:
            h.run()
        finally:
            h.cbMipInterrupt.unsubscribe(stop)
        self.status = status_name(h)
        info = h.getInfo()
        if self.binaries == 0:
            return   # a plain LP: HiGHS leaves mip_dual_bound unset; leave it to branch and bound
        self.dual = float(info.mip_dual_bound)
        # only a bound from a solve that ran normally counts (an "infeasible" model here can only
        # be numerical trouble: the box is not empty and the bounds are sound)
        ran = self.status in ("optimal", "interrupted_by_user", "time_limit_reached")
        self.proved = bool(ran and np.isfinite(self.dual) and self.dual - MARGIN * (1 + abs(self.dual)) > 0)
        if info.primal_solution_status == 2 and float(info.objective_function_value) < 0:
            x = np.asarray(h.getSolution().col_value, dtype=np.float64)[:self.n_in]
            self.candidate = np.clip(x, self.enc.col_lo[:self.n_in], self.enc.col_hi[:self.n_in])   # tolerances

    @property
    def decided(self) -> bool:
        return self.proved or self.candidate is not None


class MilpWorker:
    """One background thread solving ``ChainMilp``s one at a time, beside branch and bound on the
    main thread (HiGHS releases the GIL: the two use both cores).

    ``put(item)`` queues work; the thread calls ``build(item) -> (ChainMilp, time_limit) | None``
    (None: nothing to solve), solves, then ``done(item, milp)``. ``drop(item)``: the item is
    skipped if not begun, its solve cancelled if running (items must be hashable). ``join()``
    waits for the queued items; ``close()`` cancels the running solve and stops, waiting for the
    thread (one left inside HiGHS at interpreter exit aborts the process)."""

    def __init__(self, build, done):
        self._build, self._done = build, done
        self.solves = 0
        self._todo: queue.Queue = queue.Queue()
        self._dropped: set = set()
        self._current = None          # (item, ChainMilp) being solved
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        self._todo.put(item)

    def _run(self) -> None:
        while True:
            item = self._todo.get()
            if item is None or self._closed:
                return
            if item in self._dropped:
                continue
            job = self._build(item)
            if job is None:
                continue
            milp, time_limit = job
            self._current = (item, milp)
            if self._closed or item in self._dropped:   # dropped while being built
                self._current = None
                continue
            milp.solve(time_limit)
            self._current = None
            self.solves += 1
            self._done(item, milp)

    def drop(self, item) -> None:
        self._dropped.add(item)
        cur = self._current
        if cur is not None and cur[0] == item:
            cur[1].cancel()

    def join(self) -> None:
        self._todo.put(None)
        self._thread.join()

    def close(self) -> None:
        self._closed = True
        cur = self._current
        if cur is not None:
            cur[1].cancel()
        self.join()


class MilpQueue:
    """The obligations' MILPs, in order, on one ``MilpWorker`` until ``deadline``.

    ``make(j) -> ChainMilp | None`` builds obligation j's MILP (None: not worth one). Each MILP
    runs until ``deadline`` or until it decides: a solve is not cut to an obligation's share of the
    time, so a MILP that needs longer than branch and bound's share still finishes (mnistfc 256x2
    prop_0_0.05: the violated label's MILP needs ~19 s, its share at the full 120 s was 13 s).
    ``drop(j)``: branch and bound decided j (skipped, or its running solve cancelled).
    ``proved``: the obligations whose MILP proved them; ``candidates[j]``: a violating incumbent
    x (n_in,) of j's MILP, still to be confirmed by the caller (who pops it). Set and dict updates
    are atomic, so the main thread may read them while the queue runs."""

    def __init__(self, order, make, deadline: float):
        self.proved: set = set()
        self.candidates: dict = {}

        def build(j):
            if time.monotonic() >= deadline:
                return None
            milp = make(j)
            return None if milp is None else (milp, deadline - time.monotonic())

        def done(j, milp):
            if milp.proved:
                self.proved.add(j)
            elif milp.candidate is not None:
                self.candidates[j] = milp.candidate

        self._worker = MilpWorker(build, done)
        for j in order:
            self._worker.put(j)

    @property
    def solves(self) -> int:
        return self._worker.solves

    def drop(self, j) -> None:
        self._worker.drop(j)

    def close(self) -> None:
        self._worker.close()

    def wait(self) -> None:
        """Wait until every obligation is solved, skipped, or the deadline passed."""
        self._worker.join()
