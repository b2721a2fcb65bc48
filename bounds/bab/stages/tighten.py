"""``TightenBounds``: a region's intermediate bounds tightened by branch and bound
(``bounds.bab.tighten``) between passes of a search whose bounds come from ``search.roots``.

``run(ob, until)`` tightens the bounds of ``ob``'s region until ``until`` (never looser, always
sound), drops the region's MILP encoding (a MILP built from then on encodes the tighter bounds)
and the resumable search state of every obligation on that region (its domains were bounded
over the old bounds). It decides nothing: its outcome is always ``timeout``.
"""
from __future__ import annotations

from bounds.bab.stages.base import Obligation, Outcome, Search, SplitStage, Stage
from bounds.bab.tighten import tighten_bounds


class TightenBounds(Stage):
    name = "tighten"

    def __init__(self, search: Search, split: SplitStage):
        super().__init__(search)
        self.split = split

    @classmethod
    def share(cls, search: Search, split: SplitStage) -> float:
        """The share of the time left after the quick pass that tightening gets (0: it does not
        apply: the search keeps no root bounds, or the chain has one hidden layer)."""
        if not split.tightens or search.chain is None or len(search.chain.hidden_sizes) <= 1:
            return 0.0
        opts = search.opts
        if opts.tighten is not None:
            return opts.tighten
        return opts.tighten_deep if search.deep else opts.tighten_shallow

    def run(self, ob: Obligation, until: float) -> Outcome:
        s = self.search
        root = s.roots[ob.key]
        root["pre"], root["slopes"] = tighten_bounds(s.chain, ob.lo, ob.hi, root["pre"], root["slopes"], until,
                                                     s.stats, workers=self.split.workers, opt_dtype=s.opt_dtype)
        root.pop("encoding", None)
        for other in s.obligations:
            if other.key == ob.key:
                other.state.pop(self.split.name, None)
        return Outcome("timeout")
