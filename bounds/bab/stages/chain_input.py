"""``ChainInputSplit``: input splitting on an affine/ReLU chain (``bounds.bab.input_split``), the
fast path for networks that are chains.

Three searches take turns in time slices that double after each round, each continuing where
it stopped, so an obligation is decided in about 3x the time of the search best suited to it
(none is best on every obligation): splitting the most sensitive dimension, the better of the 2
most sensitive, and smart branching over 5 with alpha steps. The 2-candidate search hands its
small open boxes to MILPs in two background threads (``BoxMilps``), which keep working while the
other searches have their turns; when only parked boxes are left to it, it gives its turn up at
once, and the other searches stop as soon as the threads have news for it. Once ``late_attack``
of the obligation's time is gone, a large attack and 200k face-biased samples run once
(violations in thin regions). Each run starts afresh (parked boxes are not kept between runs).
"""
from __future__ import annotations

import time

from bounds.bab.input_split import BoxMilps, input_split_bab
from bounds.bab.stages.base import Obligation, Outcome, Search, SplitStage
from bounds.bab.stages.chain_root import chain_root, input_scores, proved_at_root


class ChainInputSplit(SplitStage):
    name = "input"
    splits = "input"

    @classmethod
    def applies(cls, search: Search) -> bool:
        return search.chain is not None

    def root_scores(self, ob: Obligation):
        res = chain_root(self.search, ob)
        return None if proved_at_root(res) else input_scores(res, ob)

    def run(self, ob: Obligation, until: float) -> Outcome:
        s, opts = self.search, self.search.opts
        chain, stats, try_points = s.chain, s.counters, s.try_points(ob)
        lo, hi, C, d = ob.lo, ob.hi, ob.C, ob.d
        its = opts.input_iterations if opts.iterations is None else opts.iterations
        box_milps = BoxMilps(chain, lo, hi, C, d) if opts.use_milp else None
        states, M = [{}, {}, {}], 1           # M: the search that parks boxes in ``box_milps``

        def waiting():   # the MILP search has nothing left but parked boxes, and news of them
            return "stack" in states[M] and not states[M]["stack"] and box_milps.settled()

        # the 1- and 2-candidate searches also try the input that causes most of the unstable
        # neurons' ranges (``instability``; the 5-candidate one tries every input already)
        b1, b2, b5 = (opts.batch or b for b in opts.input_batches)
        searches = [dict(batch=b1, iterations=0, candidates=1, instability=True),
                    dict(batch=b2, iterations=0, candidates=2, milp=box_milps, instability=True, wait=False),
                    dict(batch=b5, iterations=its, candidates=5)]
        for k, sk in enumerate(searches):
            if k != M:
                sk["stop"] = (lambda: waiting() or s.abort.is_set()) if box_milps is not None else s.abort.is_set

        def search(k, end):   # search k, from where it stopped, until ``end``
            return input_split_bab(chain, lo, hi, C, d, end, try_points, stats, state=states[k], **searches[k])

        def run_turn(k, end):
            while True:
                verdict, ce = search(k, end)
                if verdict != "timeout" or k == M or box_milps is None or not waiting():
                    return verdict, ce
                verdict, ce = search(M, end)
                if verdict != "timeout" or time.monotonic() >= end:
                    return verdict, ce
                # search k goes on with what is left of its turn

        try:
            start, slice_, turn, attacked = time.monotonic(), opts.input_slice, 0, not opts.falsify_first
            verdict, ce = "timeout", None
            while time.monotonic() < until and not s.abort.is_set():
                k = turn % len(searches)
                verdict, ce = run_turn(k, min(until, time.monotonic() + slice_))
                if verdict != "timeout":
                    break
                slice_ *= 2 if k == len(searches) - 1 else 1
                turn += 1
                now = time.monotonic()
                if not attacked and now - start > opts.late_attack * (until - start) and now < until:
                    attacked = True
                    ce = s.attack(ob, steps=300, restarts=1, parallel=10000, deadline=until)
                    if ce is not None:
                        return Outcome("sat", ce, "falsify", "pgd")
                    ce = s.timed("time_falsify", s.falsifier.sample, lo, hi, ob.disjuncts, n=200000, deadline=until)
                    if ce is not None:
                        return Outcome("sat", ce, "falsify", "sample")
        finally:
            if box_milps is not None:
                box_milps.close()
                stats["milp_calls"] = stats.get("milp_calls", 0) + box_milps.calls
                stats["milp_proved"] = stats.get("milp_proved", 0) + box_milps.proved
        return Outcome(verdict, ce, self.name, "bab" if verdict == "sat" else None)
