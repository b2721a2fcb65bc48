"""The parts every stage of the search shares: obligations, outcomes, the stage interface, and
``Search``, the state of one ``verify`` call.

A stage has one job and one method, ``run(ob, until) -> Outcome``: work on obligation ``ob``
until it is decided or ``time.monotonic()`` reaches ``until`` (a bound call begun before may
finish), or ``search.interrupted(ob)``. Its outcome is one of

* ``sat``: ``counterexample`` is an input of the obligation's box whose output, evaluated in
  float64 through the IR, violates the property (``Falsifier.confirm``);
* ``unsat``: no input of the box violates the obligation's conjunction; only sound float64 bounds
  (or a MILP's dual bound with its margin) may say so;
* ``timeout``: not decided yet; a resumable stage keeps what it did in ``ob.state[stage.name]`` and
  goes on from there when run again;
* ``unknown``: this stage cannot decide it (e.g. a box too thin to split, solver trouble).

Stopping a stage at any time therefore leaves only sound results.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from bounds.bab.falsify import Falsifier
from bounds.bab.options import VerifyOptions
from bounds.bab.threads import merge_stats
from certify.ir import Network

Tensor = torch.Tensor

# the counts and seconds every search adds to (``verify``'s stats, and each worker thread's own)
COUNTERS = {"domains": 0, "bound_calls": 0, "lp_calls": 0, "time_falsify": 0.0, "time_bound": 0.0, "time_lp": 0.0}


@dataclass(eq=False)
class Obligation:
    """Rule out, on the box [lo, hi] (n_in,) float64 of region ``region``, every input whose
    output y satisfies one of ``disjuncts`` ((A, b): A y <= b row-wise). A proof obligation has
    one conjunction, and ``C``, ``d`` are its margins (A, -b): proved when max_r (C y + d)_r > 0
    on the box. The opening attack works on a whole region (all its conjunctions; C, d None).
    ``index``: its place among the proof obligations (-1 for a region); ``state``: what
    resumable stages keep between runs, by stage name."""

    region: int
    lo: Tensor
    hi: Tensor
    disjuncts: list
    index: int = -1
    state: dict = field(default_factory=dict)

    @property
    def C(self) -> Tensor:
        assert len(self.disjuncts) == 1, "a proof obligation has one conjunction"
        return self.disjuncts[0][0]

    @property
    def d(self) -> Tensor:
        return -self.disjuncts[0][1]

    @property
    def key(self) -> tuple[bytes, bytes]:
        """Equal for the obligations of one box (they share its root bounds)."""
        return self.lo.cpu().numpy().tobytes(), self.hi.cpu().numpy().tobytes()


@dataclass
class Outcome:
    """``verdict`` (sat / unsat / timeout / unknown, see the module docstring), the float64
    ``counterexample`` (x, y) of a sat, ``stage``: the stage that decided, and for a sat
    ``found_by``: what found the point (pgd, sample, milp, bab)."""

    verdict: str
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    stage: str | None = None
    found_by: str | None = None

    @property
    def decided(self) -> bool:
        return self.verdict in ("sat", "unsat")


class Stage(ABC):
    """One job of the search (module docstring). ``name`` keys its state and its stats."""

    name = "stage"

    def __init__(self, search: "Search"):
        self.search = search

    @abstractmethod
    def run(self, ob: Obligation, until: float) -> Outcome:
        """Work on ``ob`` until ``until`` (time.monotonic()) at the latest; its verdict so far."""


class SplitStage(Stage):
    """A branch-and-bound search that proves obligations. ``splits``: what it branches on,
    "input" or "activation"; the schedule runs the first stage of each kind in
    ``bounds.bab.stages.SPLIT_STAGES`` whose ``applies`` holds (fast paths first) and, when
    both kinds are there, chooses between them from their ``root_scores``.

    ``root_scores(ob)``: the scores this search would branch on at the root of ``ob`` (one per
    input dimension, or per unstable neuron), or None when the root bound proves ``ob`` already.
    ``prepare(obs)``: once, before the passes (root bounds, helpers, ``workers``); returns the
    obligations in the order to search them (``order``: likeliest violations first).
    ``workers``: obligations searched at once, on that many threads. ``tightens``: its bounds of
    a region come from ``search.roots``, which ``TightenBounds`` can make tighter between passes."""

    splits = "input"
    tightens = False

    def __init__(self, search: "Search"):
        super().__init__(search)
        self.workers = 1

    @classmethod
    def applies(cls, search: "Search") -> bool:
        return False

    @abstractmethod
    def root_scores(self, ob: Obligation) -> Tensor | None:
        """See the class docstring."""

    def prepare(self, obs: list[Obligation]) -> list[Obligation]:
        return self.order(obs)

    def order(self, obs: list[Obligation]) -> list[Obligation]:
        return list(obs)


class Helper:
    """Work running beside the searches (a MILP queue): it may have ``news`` of an obligation,
    an outcome that decides it (or, for a sat, the instance), which the searches stop for."""

    def has_news(self, ob: Obligation) -> bool:
        return False

    def news(self, ob: Obligation) -> Outcome | None:
        return None

    def forget(self, ob: Obligation) -> None:
        """``ob`` was decided elsewhere: no more work on it."""

    def close(self) -> None:
        pass


class Search:
    """What the stages of one ``verify`` call share: the network (as given, in float64, and as
    a ``Chain`` when it is one), the property, the options, the clock, the ``Falsifier``, the
    stats, per-region root bounds (``roots``, by ``Obligation.key``), the helpers running
    beside, and ``abort`` (set when a sat is found: every stage stops).

    ``counters``: the stats dict of the calling thread (a worker thread's own one while it runs,
    merged into ``stats`` after; else ``stats``). ``report()`` calls ``progress`` with a snapshot
    of the stats so far, from whichever thread calls it (one call at a time)."""

    def __init__(self, network: Network, prop, options: VerifyOptions, timeout: float,
                 progress: Callable[[dict], None] | None = None):
        self.t0 = time.monotonic()
        self.timeout = timeout
        self.deadline = self.t0 + timeout
        self.network, self.prop, self.opts = network, prop, options
        self.falsifier = Falsifier(network, prop, options.seed)
        self.net64 = self.falsifier.net64
        self.n_in = network.input_size
        self.stats: dict = dict(COUNTERS, method=None, regions=len(prop.regions))
        self.chain = None
        self.obligations: list[Obligation] = []
        self.roots: dict = {}
        self.helpers: list[Helper] = []
        self.abort = threading.Event()
        self.progress = progress
        self._local = threading.local()
        self._own: list[dict] = []          # the worker threads' stats while a pass runs
        self._lock, self._report_lock = threading.Lock(), threading.Lock()

    @property
    def deep(self) -> bool:
        return self.chain is not None and len(self.chain.hidden_sizes) > self.opts.deep

    @property
    def opt_dtype(self) -> torch.dtype:
        """The dtype of alpha/beta steps on the chain: float64 on deep networks, where float32
        steps lose borderline proofs (the bound itself is always float64)."""
        return torch.float64 if self.deep else torch.float32

    @property
    def counters(self) -> dict:
        own = getattr(self._local, "stats", None)
        return self.stats if own is None else own

    def use_counters(self, own: dict | None) -> None:
        """The calling thread's counts go to ``own`` from now on (None: to ``stats``)."""
        self._local.stats = own
        if own is not None:
            with self._lock:
                self._own.append(own)

    def merge_counters(self, owns: list[dict]) -> None:
        with self._lock:
            self._own = [o for o in self._own if all(o is not x for x in owns)]
        merge_stats(self.stats, owns)

    def timed(self, key: str, fn, *args, **kw):
        """``fn(*args, **kw)``, its seconds added to ``counters[key]``."""
        t = time.monotonic()
        try:
            return fn(*args, **kw)
        finally:
            c = self.counters
            c[key] = c.get(key, 0.0) + time.monotonic() - t

    def try_points(self, ob: Obligation) -> Callable:
        """``xs (N, n_in) -> counterexample or None``: candidates checked against ``ob``."""
        return lambda xs: self.falsifier.check_points(xs.to(torch.float64), ob.disjuncts)

    def attack(self, ob: Obligation, **kw):
        """PGD on ``ob``'s violation in its box (``Falsifier.pgd`` options), timed: a
        counterexample or None."""
        return self.timed("time_falsify", self.falsifier.pgd, ob.lo.unsqueeze(0), ob.hi.unsqueeze(0),
                          ob.disjuncts, **kw)[0]

    def interrupted(self, ob: Obligation) -> bool:
        return self.abort.is_set() or any(h.has_news(ob) for h in self.helpers)

    def news(self, ob: Obligation) -> Outcome | None:
        for h in self.helpers:
            out = h.news(ob)
            if out is not None:
                return out
        return None

    def snapshot(self) -> dict:
        """The stats so far, the running worker threads' counts included (a copy)."""
        with self._lock:
            owns = [dict(o) for o in self._own]
        snap = dict(self.stats)
        merge_stats(snap, owns)
        snap["time_total"] = time.monotonic() - self.t0
        return snap

    def report(self) -> None:
        if self.progress is not None:
            with self._report_lock:   # one call at a time, whichever thread
                self.progress(self.snapshot())
