"""``MilpBeside``: exact MILPs of the obligations (``bounds.bab.milp_chain``), one after the other
in the search order on a background thread, beside ReLU splitting on the main one; whichever
decides an obligation first ends it.

A MILP is built over its region's current root bounds (``search.roots``; the encoding is kept
per region and dropped when the bounds are tightened) for regions with at most
``milp_max_binaries`` unstable ReLUs. ``news(ob)``: a violating incumbent of any obligation,
confirmed in float64 (``sat``, which decides the instance), or ``unsat`` when ``ob``'s MILP
proved it (HiGHS's dual bound with ``milp_chain``'s margin).
"""
from __future__ import annotations

import torch

from bounds.bab.milp_chain import ChainMilp, MilpQueue, box_encoding
from bounds.bab.stages.base import Helper, Obligation, Outcome, Search


def unstable_count(pre) -> int:
    return sum(int(((l < 0) & (u > 0)).sum()) for l, u in pre)


class MilpBeside(Helper):
    name = "milp"

    def __init__(self, search: Search, order: list[Obligation]):
        self.search = search
        self._by_index = {ob.index: ob for ob in order}
        opts = search.opts

        def make(j):
            ob = self._by_index[j]
            root = search.roots[ob.key]
            if not 0 < unstable_count(root["pre"]) <= opts.milp_max_binaries:
                return None
            enc = root.get("encoding")   # dropped when the bounds are tightened (main thread)
            if enc is None:
                enc = root["encoding"] = box_encoding(search.chain, ob.lo, ob.hi, root["pre"])
            return ChainMilp(search.chain, enc, ob.C, ob.d)

        self._queue = MilpQueue([ob.index for ob in order], make, search.deadline)

    def has_news(self, ob: Obligation) -> bool:
        return ob.index in self._queue.proved or bool(self._queue.candidates)

    def news(self, ob: Obligation) -> Outcome | None:
        q, fal = self._queue, self.search.falsifier
        while q.candidates:
            k, x = q.candidates.popitem()
            other = self._by_index[k]
            ce = fal.check_points(torch.as_tensor(x, dtype=torch.float64).reshape(1, -1), other.disjuncts)
            if ce is not None:
                return Outcome("sat", ce, self.name, "milp")
        if ob.index in q.proved:
            c = self.search.counters
            c["milp_proved"] = c.get("milp_proved", 0) + 1
            return Outcome("unsat", None, self.name)
        return None

    def forget(self, ob: Obligation) -> None:
        self._queue.drop(ob.index)

    def close(self) -> None:
        self._queue.close()
        self.search.stats["milp_calls"] = self._queue.solves
