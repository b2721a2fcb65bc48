"""``GraphInputSplit``: input splitting over the general bound engine
(``bounds.bab.input_split_crown``): every network the engine bounds, chain or not. Resumable: a
run goes on with the open boxes of the last one (``ob.state``). Its root scores are those it
branches on: |coefficient| x width per input dimension of the root's CROWN bound (the one
``graph_activation.graph_root`` keeps per obligation, where the engine has every CROWN rule).

``prepare`` bounds the obligations of each region together at its root box (intermediate
bounds computed once for all of them, not once per obligation): by CROWN, or, for inputs with
more than ``attack_max_dims`` dimensions (where input splitting gains little), by alpha-CROWN
within ``root_alpha`` of the time left, then once more on those left, unless the activation
split has optimized that box's root already (``InTurns``); the obligations this proves leave
the search."""
from __future__ import annotations

import time

import torch

from bounds.bab.chain_bounds import PROOF_TOL
from bounds.bab.input_split_crown import boxes_per_call, graph_bounds, input_split_graph, parent_bounds_fit
from bounds.bab.stages.base import Obligation, Outcome, Search, SplitStage
from bounds.bab.stages.graph_activation import graph_root, search_graph
from bounds.crown import BoundTimeout
from bounds.memory import search_budget
from certify.errors import CertifyError
from certify.spec.sets import Box


class GraphInputSplit(SplitStage):
    name = "generic-input"
    splits = "input"

    @classmethod
    def applies(cls, search: Search) -> bool:
        return True

    def root_scores(self, ob: Obligation):
        l, h = ob.lo.reshape(1, -1).double(), ob.hi.reshape(1, -1).double()
        if search_graph(self.search) is not None:   # the root the activation split shares (one CROWN per box)
            try:
                res, _ = graph_root(self.search, ob)
            except BoundTimeout:    # past the deadline: the widest dimension first
                return (h - l)[0]
            best, row = res.lower.max(1)
            if bool(best[0] > PROOF_TOL):
                return None
            lam = torch.zeros_like(l) if res.lam_in is None else res.lam_in[:, int(row[0])]
            return lam[0].abs() * (h - l)[0]
        try:
            low, row, lam = self.search.timed("time_bound", graph_bounds, self.search.net64, l, h, ob.C.double(),
                                              ob.d.double(), ob.C.shape[0])
        except CertifyError:   # no CROWN rule for some op: interval bounds, widest dimension first
            return (h - l)[0]
        if bool(low.max() > PROOF_TOL):
            return None
        return lam[0].abs() * (h - l)[0]

    def prepare(self, obs: list[Obligation]) -> list[Obligation]:
        s = self.search
        big = s.n_in > s.opts.attack_max_dims
        left = []
        for region in dict.fromkeys(ob.region for ob in obs):
            group = [ob for ob in obs if ob.region == region]
            if any(not (torch.equal(ob.lo, group[0].lo) and torch.equal(ob.hi, group[0].hi)) for ob in group):
                left += group         # (obligations of one region share its box)
                continue
            alpha = big and s.roots.get(group[0].key, {}).get("graph") is None
            for _ in range(2 if alpha else 1):    # alpha: a second round on the obligations the first left
                n = len(group)
                group = self._root(group, alpha)
                if not group or len(group) == n:
                    break
            left += group
        return self.order(left)

    def _root(self, group: list[Obligation], alpha: bool) -> list[Obligation]:
        """The obligations of ``group`` (one box) that its root bound leaves unproved."""
        from bounds import compute_bounds
        s = self.search
        lo, hi = group[0].lo.double(), group[0].hi.double()
        C = torch.cat([ob.C.double() for ob in group]).unsqueeze(0)
        d = torch.cat([ob.d.double() for ob in group]).unsqueeze(0)
        shape = (1,) + tuple(s.net64.input_shape)
        deadline = (time.monotonic() + s.opts.root_alpha * max(0.0, s.deadline - time.monotonic())) if alpha \
            else s.deadline
        try:
            low = s.timed("time_bound", compute_bounds, s.net64, Box(lo.reshape(shape), hi.reshape(shape)),
                          C=C, d=d, method="alpha" if alpha else "crown", upper=False,
                          deadline=deadline).lower[0].detach()
        except (BoundTimeout, CertifyError):
            return group
        left, k = [], 0
        for ob in group:
            r = ob.C.shape[0]
            if bool(low[k:k + r].max() > PROOF_TOL):
                proved = s.stats.setdefault("proved_by", {})
                proved["root"] = proved.get("root", 0) + 1
            else:
                left.append(ob)
            k += r
        return left

    def run(self, ob: Obligation, until: float) -> Outcome:
        """Two searches in turns, each going on where its last turn stopped (turns of
        ``input_slice`` seconds, doubled every round): ``graph_candidates`` candidate dimensions
        with the parents' pre-activation bounds kept where they fit, and every dimension (at most
        twice as many) without them. Their depth-first orders differ, and an order stuck in one
        part of the box is often quick in another."""
        s = self.search
        st = ob.state.setdefault(self.name, {"states": [{}, {}], "turn": 0, "slice": s.opts.input_slice})
        n_in = ob.lo.numel()
        if not hasattr(self, "_reuse"):   # (the memory check once per search, not per turn)
            self._reuse = parent_bounds_fit(s.net64, search_budget(ob.lo.device))
        searches = [dict(candidates=s.opts.graph_candidates, reuse_parent=self._reuse),
                    dict(candidates=min(n_in, 2 * s.opts.graph_candidates), reuse_parent=False)]
        verdict, ce = "timeout", None
        try:
            while time.monotonic() < until and not s.interrupted(ob):
                k = st["turn"] % len(searches)
                verdict, ce = input_split_graph(s.net64, ob.lo, ob.hi, ob.C, ob.d,
                                                min(until, time.monotonic() + st["slice"]), s.try_points(ob),
                                                s.counters, batch=boxes_per_call(s.net64, s.opts.batch or s.opts.graph_batch),
                                                state=st["states"][k], stop=lambda: s.interrupted(ob),
                                                bound_deadline=s.deadline, **searches[k])
                if verdict != "timeout":
                    break
                st["turn"] += 1
                if st["turn"] % len(searches) == 0:
                    st["slice"] *= 2
        except CertifyError as e:   # not even interval bounds for some op: no proof possible here
            s.counters["error"] = str(e)
            return Outcome("unknown", None, self.name)
        return Outcome(verdict, ce, self.name, "bab" if verdict == "sat" else None)
