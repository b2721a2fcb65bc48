"""``verify(network, prop, timeout)``: complete verification of a VNN-LIB property, as a schedule
over the stages of ``bounds.bab.stages`` (each ``run(obligation, until) -> Outcome``).

1. ``OpeningAttack`` on every region (unless ``falsify_first=False``).
2. The proof obligations: one per region x conjunction of its violation.
3. The split search: per kind of split the first stage of ``SPLIT_STAGES`` that applies (the
   chain fast paths first). With ``method="auto"`` and both kinds there, an obligation whose root
   bound already proves it is proved there (stage "root"), and the others choose the search by
   the root bound's scores (``bounds.bab.choice``: one kind, or both in turns, ``InTurns``, when
   the scores do not tell them apart); ``method`` "input" / "relu" / a stage name forces one,
   where it applies (else the input split, which applies to every network), "both" forces turns.
4. Passes over the obligations left, in the search's order, ``split.workers`` at once: "share"
   (each an equal share of the time left: a violation of a later one is not starved by a hard
   earlier one), then "rest" (those that timed out, in turn, with all the time left; resumable
   searches go on where they stopped). A search whose region bounds can be tightened first gets
   a "quick" pass (``quick`` of the timeout) and a "tighten" pass (``TightenBounds``, a share of
   the time left). Each attempt on an obligation: the helpers' news (a MILP beside), the search,
   and once per obligation a ``ClosingAttack`` before it is given up.

``sat`` is reported only for a point confirmed in float64 through the IR; ``unsat`` only when
every obligation was proved by sound bounds (float64) or by a MILP's dual bound; ``unknown`` when
some stage could not decide an obligation, ``timeout`` when time ran out first.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from bounds.bab.chain import to_chain
from bounds.bab.choice import split_counts, split_kinds
from bounds.bab.options import VerifyOptions
from bounds.bab.stages import (COUNTERS, SPLIT_STAGES, ClosingAttack, InTurns, Obligation, OpeningAttack, Outcome,
                               Search, SplitStage, TightenBounds)
from bounds.bab.threads import one_torch_thread, run_in_threads
from certify.errors import CertifyError
from certify.ir import Network
from certify.spec.vnnlib import conjunction_margins

METHODS = ("auto", "input", "relu", "both")
KINDS = {"input": "input", "relu": "activation"}


@dataclass
class VerifyResult:
    """``status``: sat / unsat / unknown / timeout; ``counterexample``: (x, y) float64 flat arrays
    (only with sat); ``stats``: domains, bound_calls, lp_calls, seconds per phase (time_*),
    ``method`` (the split search that ran, "root" when the root bounds proved everything),
    ``decided_by`` (the stage(s) that decided: for sat the one that found the point, for unsat
    those that proved obligations, "+"-joined), ``proved_by`` (obligations per stage), ``passes``
    (per pass: name, stage, seconds, obligations left), ``split_counts`` (with the choice: the
    effective number of directions per kind of split, ``bounds.bab.choice``)."""

    status: str
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    stats: dict = field(default_factory=dict)


@one_torch_thread()
def verify(network: Network, prop, timeout: float = 60.0, options: VerifyOptions | None = None,
           progress: Callable[[dict], None] | None = None, **option_fields) -> VerifyResult:
    """Decide ``prop`` (a ``certify.spec.vnnlib.VnnlibProperty``) on ``network`` within ``timeout`` s.

    ``options``: a ``VerifyOptions`` (default: its defaults); ``option_fields``: any of its fields,
    overriding (e.g. ``method="relu"``, ``falsify_first=False``, ``use_milp=False``, ``workers=2``).
    ``progress(stats)``: called with a snapshot of the stats after each attempt on an obligation
    and after each pass (from the thread that ran it). torch runs on one intra-op thread inside
    (restored after): ``verify`` uses the other cores through threads of its own (MILPs, or
    searches; ``workers``), which more torch threads would oversubscribe."""
    opts = (options or VerifyOptions()).with_fields(**option_fields)
    names = {cls.name for cls in SPLIT_STAGES}
    if opts.method not in METHODS and opts.method not in names:
        raise CertifyError(f"verify: method must be one of {', '.join(METHODS + tuple(sorted(names)))}, "
                           f"got {opts.method!r}")
    n_in, n_out = network.input_size, network.output_size
    if (prop.n_inputs, prop.n_outputs) != (n_in, n_out):
        raise CertifyError(f"{prop.path}: property is for {prop.n_inputs} inputs / {prop.n_outputs} outputs, "
                           f"the network has {n_in} / {n_out}")
    search = Search(network, prop, opts, timeout, progress)
    try:
        status, out = _schedule(search)
    finally:
        for h in search.helpers:
            h.close()
    stats = search.stats
    stats["time_total"] = time.monotonic() - search.t0
    if out is not None:
        stats["found_by"] = out.found_by
        stats["decided_by"] = out.stage
    elif status == "unsat":
        stats["decided_by"] = "+".join(stats.get("proved_by", {})) or None
    search.report()
    return VerifyResult(status, None if out is None else out.counterexample, stats)


def _schedule(search: Search) -> tuple[str, Outcome | None]:
    """(status, the deciding outcome of a sat)."""
    prop, opts, stats = search.prop, search.opts, search.stats
    if not prop.regions:
        return "unsat", None
    dev = search.network.device
    regions = [Obligation(k, torch.as_tensor(r.lower, device=dev), torch.as_tensor(r.upper, device=dev), r.disjuncts)
               for k, r in enumerate(prop.regions)]
    if opts.falsify_first:
        t, opening = time.monotonic(), OpeningAttack(search)
        until = min(search.deadline, search.t0 + opts.opening * search.timeout)
        for ob in regions:
            out = opening.run(ob, until)
            if out.decided:
                stats["time_falsify"] += time.monotonic() - t
                return "sat", out
        stats["time_falsify"] += time.monotonic() - t
    t = time.monotonic()
    search.chain = to_chain(search.network)
    stats["time_setup"] = time.monotonic() - t
    for ob in regions:
        for A, b in ob.disjuncts:
            if A.shape[0] == 0:   # no output condition: every input of the region violates
                ce = search.falsifier.check_points(((ob.lo + ob.hi) / 2).unsqueeze(0))
                return ("sat", Outcome("sat", ce, "falsify", "centre")) if ce is not None else ("unknown", None)
            C, d = (torch.as_tensor(v, device=dev) for v in conjunction_margins(A, b))
            search.obligations.append(Obligation(ob.region, ob.lo, ob.hi, [(C, -d)], len(search.obligations)))
    split, pending = _choose_split(search, search.obligations)
    stats["method"] = split.name if pending else "root"
    if not pending:
        return "unsat", None
    pending = split.prepare(pending)
    closing = ClosingAttack(search) if opts.falsify_first else None
    share = TightenBounds.share(search, split)
    passes = (["quick", "tighten"] if share > 0 else []) + ["share", "rest"]
    status = "unsat"
    for name in passes:
        t, sat = time.monotonic(), None
        if name == "tighten":
            pending = _tighten_pass(search, TightenBounds(search, split), split, pending,
                                    time.monotonic() + share * (search.deadline - time.monotonic()))
        else:
            if time.monotonic() > search.deadline:
                return "timeout", None
            end = min(search.deadline, search.t0 + opts.quick * search.timeout) if name == "quick" else search.deadline
            pending, unknown, sat = _search_pass(search, split, closing, pending, end, name != "rest")
            status = "unknown" if unknown else status
        stats.setdefault("passes", []).append({"pass": name, "stage": "tighten" if name == "tighten" else split.name,
                                               "seconds": round(time.monotonic() - t, 3), "left": len(pending)})
        search.report()
        if sat is not None:
            return "sat", sat
        if name != "tighten" and (not pending or (len(search.obligations) == 1 and name == "share")):
            break
    return ("timeout", None) if pending else (status, None)


def _choose_split(search: Search, obs: list[Obligation]) -> tuple[SplitStage, list[Obligation]]:
    """The split stage to run and the obligations it must prove (module docstring, 3.)."""
    first: dict[str, type[SplitStage]] = {}
    for cls in SPLIT_STAGES:
        if cls.splits not in first and cls.applies(search):
            first[cls.splits] = cls
    method = search.opts.method
    if method in KINDS:
        kind = KINDS[method] if KINDS[method] in first else "input"
        return first[kind](search), obs
    if method == "both":
        stages = [first[k](search) for k in ("input", "activation") if k in first]
        return (stages[0] if len(stages) == 1 else InTurns(search, stages)), obs
    if method != "auto":
        cls = next(c for c in SPLIT_STAGES if c.name == method)
        return (cls if cls.applies(search) else first["input"])(search), obs
    stages = [first[k](search) for k in ("input", "activation") if k in first]
    if len(stages) == 1:
        return stages[0], obs
    t = time.monotonic()
    scores, pending = {st.splits: [] for st in stages}, []
    for ob in obs:
        per = [st.root_scores(ob) for st in stages]
        if any(s is None for s in per):   # the root bound proves it
            _count_proof(search.stats, "root")
            continue
        for st, s in zip(stages, per):
            scores[st.splits].append(s)
        pending.append(ob)
    counts = split_counts(scores)
    kinds = split_kinds(counts)
    search.stats["split_counts"] = {k: round(v, 2) for k, v in counts.items()}
    search.stats["time_choice"] = time.monotonic() - t
    chosen = [st for st in stages if st.splits in kinds]
    return (chosen[0] if len(chosen) == 1 else InTurns(search, chosen)), pending


def _count_proof(stats: dict, stage: str) -> None:
    proved = stats.setdefault("proved_by", {})
    proved[stage] = proved.get(stage, 0) + 1


def _attempt(search: Search, split: SplitStage, closing: ClosingAttack | None, ob: Obligation,
             until: float) -> Outcome:
    """One attempt on ``ob`` until ``until``: the helpers' news and the search, in turn, until
    one decides it (a search stopped by news is run again), then the closing attack once."""
    out = Outcome("timeout")
    while True:
        news = search.news(ob)
        if news is not None:
            out = news
            break
        if out.verdict == "unknown" or time.monotonic() >= until:
            break
        out = split.run(ob, until)
        if not search.helpers or out.decided:
            break
    if out.decided:
        for h in search.helpers:
            h.forget(ob)
        return out
    if closing is not None and time.monotonic() < until and not search.abort.is_set():
        # cut short at the instance's deadline, not the attempt's
        found = closing.run(ob, search.deadline)
        if found.decided:
            return found
    return out


def _search_pass(search: Search, split: SplitStage, closing, pending: list[Obligation], end: float, share: bool):
    """One pass over ``pending`` on ``split.workers`` threads, each taking the next obligation
    when done with one (with ``share``: its share of the time left to ``end``,
    workers x (time left) / (obligations left); else all the time to the deadline). Returns
    (obligations left, in order; whether any ended unknown; the outcome of a sat or None)."""
    queue, left, res = list(pending), [], {"unknown": False, "sat": None}
    lock, n_workers = threading.Lock(), split.workers

    def work():
        while not search.abort.is_set():
            with lock:
                if not queue or time.monotonic() > search.deadline:
                    return
                n_left, ob = len(queue), queue.pop(0)
            now = time.monotonic()
            until = min(end, now + max(0.0, end - now) * n_workers / n_left) if share else search.deadline
            out = _attempt(search, split, closing, ob, until)
            with lock:
                if out.verdict == "sat" and res["sat"] is None:
                    res["sat"] = out
                    search.abort.set()
                elif out.verdict == "unsat":
                    _count_proof(search.stats, out.stage)
                elif out.verdict == "timeout":
                    left.append(ob)
                elif out.verdict == "unknown":
                    res["unknown"] = True
            search.report()

    if n_workers == 1:
        work()
    else:
        owns = [dict(COUNTERS) for _ in range(n_workers)]

        def guarded(k):
            search.use_counters(owns[k])
            try:
                work()
            except BaseException:
                search.abort.set()   # the other workers stop too; ``run_in_threads`` re-raises it
                raise
            finally:
                search.use_counters(None)

        try:
            run_in_threads(guarded, n_workers)
        finally:
            search.merge_counters(owns)
    left += queue   # not reached before the deadline
    left.sort(key=pending.index)
    return left, res["unknown"], res["sat"]


def _tighten_pass(search: Search, tighten: TightenBounds, split: SplitStage, pending: list[Obligation],
                  until: float) -> list[Obligation]:
    """``tighten`` on the region of each pending obligation (one per region, the time shared
    equally), then the obligations in the search's order over the tighter bounds."""
    t = time.monotonic()
    first: dict = {}
    for ob in pending:
        first.setdefault(ob.key, ob)
    regions = list(first.values())
    for i, ob in enumerate(regions):
        tighten.run(ob, time.monotonic() + (until - time.monotonic()) / (len(regions) - i))
    pending = split.order(pending)
    search.stats["time_tighten"] = search.stats.get("time_tighten", 0.0) + time.monotonic() - t
    return pending
