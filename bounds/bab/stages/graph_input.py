"""``GraphInputSplit``: input splitting over the general bound engine
(``bounds.bab.input_split_crown``): every network the engine bounds, chain or not. Resumable: a
run goes on with the open boxes of the last one (``ob.state``). Its root scores are those it
branches on: |coefficient| x width per input dimension of the root's CROWN bound."""
from __future__ import annotations

from bounds.bab.chain_bounds import PROOF_TOL
from bounds.bab.input_split_crown import graph_bounds, input_split_graph
from bounds.bab.stages.base import Obligation, Outcome, Search, SplitStage
from certify.errors import CertifyError


class GraphInputSplit(SplitStage):
    name = "generic-input"
    splits = "input"

    @classmethod
    def applies(cls, search: Search) -> bool:
        return True

    def root_scores(self, ob: Obligation):
        l, h = ob.lo.reshape(1, -1).double(), ob.hi.reshape(1, -1).double()
        try:
            low, row, lam = self.search.timed("time_bound", graph_bounds, self.search.net64, l, h, ob.C.double(),
                                              ob.d.double(), ob.C.shape[0])
        except CertifyError:   # no CROWN rule for some op: interval bounds, widest dimension first
            return (h - l)[0]
        if bool(low.max() > PROOF_TOL):
            return None
        return lam[0].abs() * (h - l)[0]

    def run(self, ob: Obligation, until: float) -> Outcome:
        s = self.search
        try:
            verdict, ce = input_split_graph(s.net64, ob.lo, ob.hi, ob.C, ob.d, until, s.try_points(ob), s.counters,
                                            batch=s.opts.batch or s.opts.graph_batch,
                                            state=ob.state.setdefault(self.name, {}), stop=lambda: s.interrupted(ob))
        except CertifyError as e:   # not even interval bounds for some op: no proof possible here
            s.counters["error"] = str(e)
            return Outcome("unknown", None, self.name)
        return Outcome(verdict, ce, self.name, "bab" if verdict == "sat" else None)
