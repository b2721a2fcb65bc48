"""``GraphActivationSplit``: activation splitting over the general bound engine
(``bounds.bab.activation_split``): every network whose ops all have CROWN rules and whose graph
has activations to split (ReLU-like kinks, smooth activations split inside their intervals,
max-pooling's inputs), chain or not (chains get ``ChainReluSplit`` unless this stage is forced).

``root_scores``: CROWN's root bound of the obligation (``graph_root``: float64, the box's
pre-activation bounds shared by its obligations and by ``GraphInputSplit``); None when it proves
the obligation, else the split scores of every neuron that can be split
(``graph_branching.neuron_scores``). ``prepare``: per box, the root bounds (alpha-CROWN with
optimized intermediate slopes, ``activation_split.prepare_root``) for the rows of every
obligation on it at once, within ``root_alpha`` of the time left shared equally among the boxes
(the search needs the rest; CROWN's root instead where even the optimized root's first passes
would end past the box's share), its steps ending once every obligation has a positive row; each
obligation then searches with its own rows' slopes. Resumable: a run goes on with the open domains of the last
one (``ob.state[name]``). Without a MILP beside it, ``workers`` obligations are searched at once.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace

import torch

from bounds.bab.activation_split import SplitOptions, activation_split_bab, crown_root, prepare_root
from bounds.bab.chain_bounds import PROOF_TOL
from bounds.bab.graph_bounds import Graph, Splits, _box, bound_domains
from bounds.bab.graph_branching import neuron_scores
from bounds.bab.stages.base import Obligation, Outcome, Search, SplitStage
from bounds.backward_rules import BACKWARD_RULES
from bounds.crown import BoundTimeout, propagate
from bounds.memory import search_budget
from certify.errors import CertifyError

_ROOT = "graph-crown-root"
ROOT_PASSES = 3   # what the optimized root costs at least, in CROWN passes (a float32 pass, its gradient, float64)


def search_graph(search: Search) -> Graph | None:
    """The ``Graph`` of the search's network (built once), or None when CROWN has no rule for
    some op of it (the search bounds every domain by CROWN)."""
    if not hasattr(search, "_graph"):
        search._graph = None
        if all(type(n.op) in BACKWARD_RULES for n in search.network.nodes):
            try:
                search._graph = Graph(search.network)
            except CertifyError:
                pass
    return search._graph


def graph_root(search: Search, ob: Obligation):
    """(CROWN's bound of ``ob`` at its root (B = 1, ``graph_bounds.DomainBounds``), the box's
    CROWN pre-activation bounds), float64: the pre-activation bounds computed once per box
    (``search.roots[key]["graph-crown"]``), the bound once per obligation (``ob.state``). Raises
    ``CertifyError`` where the engine has no rule for an op, ``BoundTimeout`` past the search's
    deadline."""
    if _ROOT not in ob.state:
        g = search_graph(search)
        if g is None:
            raise CertifyError(f"{search.network.name}: CROWN has no rule for some op of the network")
        lo, hi = ob.lo.reshape(1, -1).double(), ob.hi.reshape(1, -1).double()
        root = search.roots.setdefault(ob.key, {})
        if "graph-crown" not in root:
            t = time.monotonic()
            with torch.no_grad():
                vals = search.timed("time_bound", propagate, g.net64, _box(g.net64, lo, hi), "crown",
                                    deadline=search.deadline)
            root["graph-crown"] = {k: v for k, v in vals.items() if k in g.consumers}
            root["graph-crown-seconds"] = time.monotonic() - t
        pre = root["graph-crown"]
        res = search.timed("time_bound", bound_domains, g, lo, hi, ob.C.double().unsqueeze(0),
                           ob.d.double().unsqueeze(0), pre, Splits.none(1, lo.device), deadline=search.deadline)
        search.counters["bound_calls"] += 1
        ob.state[_ROOT] = res, pre
    return ob.state[_ROOT]


class GraphActivationSplit(SplitStage):
    name = "activation-split"
    splits = "activation"

    @classmethod
    def applies(cls, search: Search) -> bool:
        g = search_graph(search)
        return g is not None and bool(g.split_nodes)

    def __init__(self, search: Search):
        super().__init__(search)
        o = search.opts
        self.options = SplitOptions(batch=o.batch or o.activation_batch,
                                    iterations=o.activation_iterations if o.iterations is None else o.iterations)
        self.graph = search_graph(search)

    def root_scores(self, ob: Obligation):
        try:
            res, pre = graph_root(self.search, ob)
        except (CertifyError, BoundTimeout):   # no bound here: every neuron counts alike (the most directions)
            return torch.ones(sum(self.graph.sizes), dtype=torch.float64, device=ob.lo.device)
        best, row = res.lower.max(1)
        if bool(best[0] > PROOF_TOL):
            return None
        return neuron_scores(self.graph, pre, res.lam, None, row)

    def prepare(self, obs):
        s = self.search
        boxes: dict = {}
        for ob in obs:
            boxes.setdefault(ob.key, []).append(ob)
        for i, (key, group) in enumerate(boxes.items()):
            root = s.roots.setdefault(key, {})
            if "graph" in root:
                continue
            until = time.monotonic() + s.opts.root_alpha * max(0.0, s.deadline - time.monotonic()) / (len(boxes) - i)
            C = torch.cat([ob.C for ob in group])
            d = torch.cat([ob.d for ob in group])
            groups = torch.cat([torch.full((ob.C.shape[0],), i, dtype=torch.long, device=ob.lo.device)
                                for i, ob in enumerate(group)])
            try:
                graph_root(s, group[0])   # CROWN's pre-activation bounds: the fallback, and what a pass costs
                pass_s = root["graph-crown-seconds"]
                if time.monotonic() + ROOT_PASSES * pass_s > until:
                    r = crown_root(self.graph, root["graph-crown"])   # no time for alpha-CROWN's passes
                else:   # its last step's gradient and the float64 evaluation come after the steps' deadline
                    r = s.timed("time_root", prepare_root, s.network, group[0].lo, group[0].hi, C, d, self.options,
                                until - (ROOT_PASSES - 1) * pass_s, self.graph, groups)
            except CertifyError as e:   # no CROWN rule for some op: the search decides nothing here
                s.counters["error"] = str(e)
                r = None
            except BoundTimeout:        # the deadline came first: the search ends as a timeout
                r, root["graph-timeout"] = None, True
            rows, r0 = {}, 0
            for ob in group:
                rows[ob.index] = slice(r0, r0 + ob.C.shape[0])
                r0 += ob.C.shape[0]
            root["graph"], root["graph_rows"] = r, rows
        if not s.helpers:
            opts = s.opts
            self.workers = max(1, min(opts.default_workers if opts.workers is None else opts.workers,
                                      os.cpu_count() or 1))
        memory = search_budget(obs[0].lo.device if obs else None) if s.opts.memory is None else s.opts.memory
        self.options = replace(self.options, memory=memory // self.workers)
        return self.order(obs)

    def run(self, ob: Obligation, until: float) -> Outcome:
        s, opts = self.search, self.search.opts
        root = s.roots[ob.key]
        if root.get("graph") is None:
            return Outcome("timeout" if root.get("graph-timeout") else "unknown", None, self.name)
        try_points = s.try_points(ob)

        def try_and_attack(xs):
            ce = try_points(xs)
            return ce if ce is not None or not opts.falsify_first else s.attack(ob, steps=20, restarts=1, starts=xs,
                                                                                deadline=until)

        try:
            verdict, ce = activation_split_bab(s.network, ob.lo, ob.hi, ob.C, ob.d, until, try_and_attack, s.counters,
                                               options=self.options, state=ob.state.setdefault(self.name, {}),
                                               stop=lambda: s.interrupted(ob),
                                               root=root["graph"].rows(root["graph_rows"][ob.index]))
        except CertifyError as e:
            s.counters["error"] = str(e)
            return Outcome("unknown", None, self.name)
        return Outcome(verdict, ce, self.name, "bab" if verdict == "sat" else None)
