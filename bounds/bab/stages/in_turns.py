"""``InTurns``: two split searches on each obligation, in turns (both kinds of split, when the
root scores do not say which has fewer directions to split, ``bounds.bab.choice``).

Each search is resumable (``ob.state[stage.name]``), so a turn goes on where that search's last
turn stopped: the first turn of each lasts ``input_slice`` seconds and the turns double every
round, so either search gets at least a third of the time it would have had alone. The first
verdict other than ``timeout`` decides, except ``unknown``: then the other search goes on alone
(``unknown`` only when both end so).
"""
from __future__ import annotations

import time

from bounds.bab.stages.base import Obligation, Outcome, Search, SplitStage


class InTurns(SplitStage):
    splits = "both"

    def __init__(self, search: Search, stages: list[SplitStage]):
        super().__init__(search)
        self.stages = stages
        self.name = "+".join(st.name for st in stages)

    def root_scores(self, ob: Obligation):
        return self.stages[0].root_scores(ob)

    def prepare(self, obs: list[Obligation]) -> list[Obligation]:
        for st in sorted(self.stages, key=lambda st: st.splits != "activation"):
            obs = st.prepare(obs)   # (the activation split's optimized root first: the input split reuses it)
        self.workers = max(st.workers for st in self.stages)
        return obs

    def order(self, obs: list[Obligation]) -> list[Obligation]:
        return self.stages[-1].order(obs)

    def run(self, ob: Obligation, until: float) -> Outcome:
        turn = ob.state.setdefault(self.name, {"next": 0, "slice": self.search.opts.input_slice, "done": set()})
        last = Outcome("timeout", None, self.name)
        while time.monotonic() < until and len(turn["done"]) < len(self.stages):
            k = turn["next"]
            turn["next"] = (k + 1) % len(self.stages)
            if turn["next"] == 0:
                turn["slice"] *= 2
            if k in turn["done"]:
                continue
            out = self.stages[k].run(ob, min(until, time.monotonic() + turn["slice"]))
            if out.verdict == "unknown":
                turn["done"].add(k)
                last = out
            elif out.verdict != "timeout":
                return out
            if self.search.interrupted(ob):
                break
        return last if len(turn["done"]) == len(self.stages) else Outcome("timeout", None, self.name)
