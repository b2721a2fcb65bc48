"""Exact decision of one obligation by mixed-integer programming on a ``Chain`` (HiGHS).

The big-M encoding of ``certify.solvers.encode`` (Tjeng et al. 2019) over the box and the given
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
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp
import torch

from bounds.bab.chain import Chain
from certify.solvers.encode import Encoding, encode
from certify.solvers.highs import make_highs, run_until_sign_known, set_objective, status_name
from certify.solvers.linearize import Affine, PiecewiseLinear, ReluLayer

MARGIN = 1e-5   # a dual bound must exceed this (relative, plus absolute) to count as a proof


def chain_to_pl(chain: Chain) -> PiecewiseLinear:
    """The chain as the convex engine's ``PiecewiseLinear`` (one ReLU layer per hidden layer)."""
    layers = [ReluLayer(f"relu{k}", f"pre{k}", Affine({k: sp.csr_matrix(w.cpu().numpy())}, b.cpu().numpy().copy()),
                        (w.shape[0],))
              for k, (w, b) in enumerate(zip(chain.weights[:-1], chain.biases[:-1]))]
    L = len(chain.weights) - 1
    out = Affine({L: sp.csr_matrix(chain.weights[-1].cpu().numpy())}, chain.biases[-1].cpu().numpy().copy())
    return PiecewiseLinear((chain.n_in,), layers, out)


@dataclass
class ChainEncoding:
    """A MILP of a chain's hidden layers over one box: the rows ``enc`` and the last hidden
    layer's ReLU outputs as an affine map of its columns, ``z_last = last @ cols + last_const``
    (n_last,), which the obligation's output rows are built from."""
    enc: Encoding
    last: sp.csr_matrix        # (n_last, N)
    last_const: np.ndarray     # (n_last,)
    options: dict = field(default_factory=dict)   # HiGHS options for its MILPs


def box_encoding(chain: Chain, lo: torch.Tensor, hi: torch.Tensor, pre) -> ChainEncoding:
    """The big-M encoding of the hidden layers over the box ``lo``, ``hi`` (n_in,) and the bounds
    ``pre`` (list of (l, u), (1, n_k) or (n_k,)): shared by every obligation of one box. One
    column per ReLU output: the weight matrices stay sparse in it (many inputs)."""
    enc = encode(chain_to_pl(chain), lo.double().cpu().numpy().ravel(), hi.double().cpu().numpy().ravel(),
                 [(l.double().cpu().numpy().ravel(), u.double().cpu().numpy().ravel()) for l, u in pre], binary=True)
    n, off, N = chain.hidden_sizes[-1], enc.offsets[-1], enc.A.shape[1]
    last = sp.csr_matrix((np.ones(n), (np.arange(n), off + np.arange(n))), shape=(n, N))
    return ChainEncoding(enc, last, np.zeros(n))


def compact_encoding(chain: Chain, lo: torch.Tensor, hi: torch.Tensor, pre) -> ChainEncoding:
    """The same MILP as ``box_encoding`` with every stable ReLU substituted away: columns are the
    inputs, then per layer the unstable ReLUs' outputs a and binaries delta (the last column
    layout: [x, a_1, delta_1, a_2, delta_2, ...]). Each pre-activation is an affine map
    ``P v + p`` of the columns so far; an active ReLU's output is that map (with the row
    l <= P v + p <= u the big-M encoding has as its column bounds), an inactive one's is 0, and an
    unstable one's satisfies a >= pre, a <= pre - l (1 - delta), 0 <= a <= u delta.

    Dense rows over few columns: for a small box of a few-input network with few unstable ReLUs
    it is several times faster to build and to solve than ``box_encoding``, and presolve has no
    stable neurons left to remove (it runs with presolve off)."""
    x_lo, x_hi = lo.double().cpu().numpy().ravel(), hi.double().cpu().numpy().ravel()
    n_in = x_lo.size
    col_lo, col_hi, integer = [x_lo], [x_hi], [np.zeros(n_in, dtype=bool)]
    rows, r_lo, r_hi = [], [], []                 # rows over the columns so far (padded at the end)
    Z, zc = np.eye(n_in), np.zeros(n_in)          # the previous layer's outputs: Z v + zc
    for k, (w, b) in enumerate(zip(chain.weights[:-1], chain.biases[:-1])):
        w = w.double().cpu().numpy()
        P, p = w @ Z, w @ zc + b.double().cpu().numpy()
        l, u = (t.double().cpu().numpy().ravel() for t in pre[k])
        act, uns = l >= 0, (l < 0) & (u > 0)
        iu = np.flatnonzero(uns)
        m, nv = iu.size, P.shape[1]
        N = nv + 2 * m
        P = np.hstack([P, np.zeros((P.shape[0], 2 * m))])
        if act.any():                                                     # l <= pre <= u
            rows.append(P[act]); r_lo.append(l[act] - p[act]); r_hi.append(u[act] - p[act])
        if m:
            Ea, Ed = np.zeros((m, N)), np.zeros((m, N))
            Ea[np.arange(m), nv + np.arange(m)] = 1.0
            Ed[np.arange(m), nv + m + np.arange(m)] = 1.0
            Pu, lu, uu = P[iu], l[iu], u[iu]
            rows += [Pu - Ea, Ea - Pu - lu[:, None] * Ed, Ea - uu[:, None] * Ed]
            r_lo += [np.full(m, -np.inf)] * 3
            r_hi += [-p[iu], p[iu] - lu, np.zeros(m)]
            col_lo += [np.zeros(m), np.zeros(m)]
            col_hi += [uu, np.ones(m)]
            integer += [np.zeros(m, dtype=bool), np.ones(m, dtype=bool)]
        Z, zc = np.zeros((P.shape[0], N)), np.zeros(P.shape[0])
        Z[act], zc[act] = P[act], p[act]
        Z[iu, nv + np.arange(m)] = 1.0
    N = Z.shape[1]
    A = sp.csr_matrix(np.vstack([np.pad(r, ((0, 0), (0, N - r.shape[1]))) for r in rows])) if rows \
        else sp.csr_matrix((0, N))
    A.eliminate_zeros()
    integer = np.concatenate(integer)
    enc = Encoding(A, np.concatenate(r_lo) if r_lo else np.zeros(0), np.concatenate(r_hi) if r_hi else np.zeros(0),
                   np.concatenate(col_lo), np.concatenate(col_hi), integer, [0], int((~integer).sum()), [])
    return ChainEncoding(enc, sp.csr_matrix(Z), zc, {"presolve": "off"})   # nothing to presolve


class ChainMilp:
    """The MILP of one obligation ``max_r (C z_L + d)_r > 0`` over a box, from the box's
    ``box_encoding`` or ``compact_encoding``. ``solve`` runs HiGHS
    (one thread) until the obligation is decided, ``time_limit`` passes or ``cancel()`` is called;
    it is meant to run in a background thread beside branch and bound (HiGHS releases the GIL).
    After it: ``proved`` (bool), ``candidate`` (an input (n_in,) float64, clipped into the box,
    whose MILP value is negative, or None), ``status`` (HiGHS's), ``dual`` (the dual bound of the max-row value)."""

    def __init__(self, chain: Chain, box: ChainEncoding, C: torch.Tensor, d: torch.Tensor):
        enc = box.enc
        r, N = C.shape[0], enc.A.shape[1]
        W, b = chain.weights[-1].double().cpu().numpy(), chain.biases[-1].double().cpu().numpy()
        Cn, dn = C.double().cpu().numpy(), d.double().cpu().numpy()
        CW = sp.csr_matrix(Cn @ W)
        rows = sp.hstack([CW @ box.last, sp.csr_matrix(-np.ones((r, 1)))])   # row_r(z) - t <= -const_r
        const = Cn @ (W @ box.last_const + b) + dn
        self.enc = replace(
            enc, A=sp.vstack([sp.hstack([enc.A, sp.csr_matrix((enc.A.shape[0], 1))]), rows]).tocsr(),
            row_lo=np.concatenate([enc.row_lo, np.full(r, -np.inf)]),
            row_hi=np.concatenate([enc.row_hi, -const]),
            col_lo=np.concatenate([enc.col_lo, [-np.inf]]), col_hi=np.concatenate([enc.col_hi, [np.inf]]),
            integer=np.concatenate([enc.integer, [False]]))
        self.n_in = chain.n_in
        self.binaries = int(enc.integer.sum())
        self.proved, self.candidate, self.status, self.dual = False, None, "not_run", -np.inf
        self.options = box.options
        self._cancel = False

    def cancel(self) -> None:
        self._cancel = True

    def solve(self, time_limit: float) -> None:
        h = make_highs(self.enc, max(time_limit, 0.01), self.options)
        cost = np.zeros(self.enc.A.shape[1])
        cost[-1] = 1.0
        set_objective(h, cost, 0.0)

        run_until_sign_known(h, MARGIN, lambda: self._cancel)
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
    """``threads`` background threads solving ``ChainMilp``s from one queue, beside branch and
    bound on the main thread (HiGHS releases the GIL: they use the other core).

    ``put(item)`` queues work; a free thread calls ``build(item) -> (ChainMilp, time_limit) | None``
    (None: nothing to solve), solves, then ``done(item, milp)`` (called from that thread).
    ``drop(item)``: the item is skipped if not begun, its solve cancelled if running (items must
    be hashable). ``join()`` waits for the queued items; ``close()`` cancels the running solves
    and stops, waiting for the threads (one left inside HiGHS at interpreter exit aborts the
    process)."""

    def __init__(self, build, done, threads: int = 1):
        self._build, self._done = build, done
        self.solves = 0
        self._todo: queue.Queue = queue.Queue()
        self._dropped: set = set()
        self._current: dict = {}      # thread index -> (item, ChainMilp) being solved
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def put(self, item) -> None:
        self._todo.put(item)

    def _run(self, me: int) -> None:
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
            self._current[me] = (item, milp)
            if self._closed or item in self._dropped:   # dropped while being built
                self._current.pop(me, None)
                continue
            milp.solve(time_limit)
            self._current.pop(me, None)
            with self._lock:
                self.solves += 1
            self._done(item, milp)

    def drop(self, item) -> None:
        self._dropped.add(item)
        for cur in list(self._current.values()):
            if cur[0] == item:
                cur[1].cancel()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self) -> None:
        for _ in self._threads:
            self._todo.put(None)
        for t in self._threads:
            t.join()

    def close(self) -> None:
        self._closed = True
        for cur in list(self._current.values()):
            cur[1].cancel()
        self.join()


class MilpQueue:
    """The obligations' MILPs, in order, on one ``MilpWorker`` until ``deadline``.

    ``make(j) -> ChainMilp | None`` builds obligation j's MILP (None: not worth one). Each MILP
    runs until ``deadline`` or until it decides: a solve is not cut to an obligation's share of the
    time, so a MILP that needs longer than branch and bound's share still finishes.
    ``drop(j)``: branch and bound decided j (skipped, or its running solve cancelled).
    ``proved``: the obligations whose MILP proved them; ``candidates[j]``: a violating incumbent
    x (n_in,) of j's MILP, still to be confirmed by the caller (who pops it). Set and dict updates
    are atomic, so the main thread may read them while the queue runs."""

    def __init__(self, order, make, deadline: float, threads: int = 1):
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

        self._worker = MilpWorker(build, done, threads)
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
