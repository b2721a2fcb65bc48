"""``ChainReluSplit``: ReLU splitting on an affine/ReLU chain (``bounds.bab.relu_split``), the fast
path for networks that are chains.

``prepare``: every region's pre-activation bounds once (alpha-CROWN, layer by layer) with the
slopes that gave them, in ``search.roots``; the obligations are searched worst root bound first
(the likeliest violations first). Where some region has few unstable ReLUs
(``milp_max_binaries``) and ``use_milp``, a ``MilpBeside`` decides obligations on the other core
while the search runs; otherwise ``workers`` obligations are searched at once. A run resumes the
obligation's open domains from its last run (``ob.state["relu"]``) as long as its region's
bounds have not changed. The bound minimizers of the worst open domains are tried as
counterexamples and attacked by a short PGD from there (they lie near the likeliest violations).
Each search may hold its share of ``memory`` (``bounds.memory.search_budget`` when not set, taken
once), the workers' searches alike.
"""
from __future__ import annotations

import os

from bounds.bab.chain_bounds import bound_domains, optimized_pre_bounds
from bounds.bab.relu_split import relu_split_bab
from bounds.bab.stages.base import Obligation, Outcome, Search, SplitStage
from bounds.bab.stages.chain_root import chain_root, proved_at_root, relu_scores
from bounds.bab.stages.milp import MilpBeside, unstable_count
from bounds.memory import search_budget


class ChainReluSplit(SplitStage):
    name = "relu"
    splits = "activation"
    tightens = True

    @classmethod
    def applies(cls, search: Search) -> bool:
        return search.chain is not None and sum(search.chain.hidden_sizes) > 0

    def root_scores(self, ob: Obligation):
        res = chain_root(self.search, ob)
        return None if proved_at_root(res) else relu_scores(res, self.search.chain.hidden_sizes)

    def root_bound(self, ob: Obligation) -> float:
        """CROWN's lower bound of ``ob`` over its region's current root bounds."""
        lo, hi = ob.lo.reshape(1, -1), ob.hi.reshape(1, -1)
        return float(bound_domains(self.search.chain, lo, hi, ob.C.unsqueeze(0), ob.d.unsqueeze(0),
                                   pre=self.search.roots[ob.key]["pre"], recompute=False).lower.max())

    def order(self, obs):
        return sorted(obs, key=self.root_bound)

    def prepare(self, obs):
        s, opts = self.search, self.search.opts

        def roots():
            for ob in obs:
                root = s.roots.setdefault(ob.key, {})
                if "pre" not in root:   # (over the CROWN bounds of the split choice, when it ran)
                    root["pre"], root["slopes"] = optimized_pre_bounds(
                        s.chain, ob.lo.reshape(1, -1).double(), ob.hi.reshape(1, -1).double(), pre=root.get("crown"),
                        keep_alpha=True)
            return self.order(obs)

        order = s.timed("time_bound", roots)
        if opts.use_milp and any(0 < unstable_count(s.roots[ob.key]["pre"]) <= opts.milp_max_binaries for ob in obs):
            s.helpers.append(MilpBeside(s, order))
        else:   # no MILP: the other cores run searches of their own
            self.workers = max(1, min(opts.default_workers if opts.workers is None else opts.workers,
                                      os.cpu_count() or 1))
        self.memory = (search_budget(s.chain.weights[0].device) if opts.memory is None else opts.memory) // self.workers
        return order

    def run(self, ob: Obligation, until: float) -> Outcome:
        s, opts = self.search, self.search.opts
        root, try_points = s.roots[ob.key], s.try_points(ob)

        def try_and_attack(xs):
            ce = try_points(xs)
            return ce if ce is not None or not opts.falsify_first else s.attack(ob, steps=20, restarts=1, starts=xs,
                                                                                deadline=until)

        verdict, ce = relu_split_bab(s.chain, ob.lo, ob.hi, ob.C, ob.d, until, try_and_attack, s.counters,
                                     batch=opts.batch or opts.relu_batch,
                                     iterations=opts.relu_iterations if opts.iterations is None else opts.iterations,
                                     root_pre=root["pre"], pre_alpha=root["slopes"], stop=lambda: s.interrupted(ob),
                                     state=ob.state.setdefault(self.name, {}), opt_dtype=s.opt_dtype,
                                     memory=self.memory)
        return Outcome(verdict, ce, self.name, "bab" if verdict == "sat" else None)
