"""Activation-split branch and bound on any network the bound rules support (beta-CROWN, GenBaB).

A domain is the input box plus split constraints on pre-activation neurons (``graph_bounds.Splits``:
ReLU-like neurons at their kink, smooth ones at their interval's midpoint, ``bounds/activations.py``'s
``split_at``). The root's bounds come from alpha-CROWN with optimized intermediate slopes
(``graph_root``). Then, repeatedly, the open domains with the lowest bounds are split, many at
once: each at the neuron with the best score (``graph_branching``), into two children whose
pre-activation bounds are the parent's clamped to their side of the point, with the bounds of the
pre-activation nodes that depend on the split node recomputed by CROWN over them (``refresh``:
never looser). The children are bounded in one batched call with alpha and beta
(``graph_bounds.bound_domains``), warm-started from the parent's multipliers; a child's bound is
at least its parent's (it lies inside it). A domain is proved when some row's float64 bound
exceeds ``PROOF_TOL``. A domain with nothing left to split is decided by an LP when the network
is affine on it (``graph_leaf``), else it stays undecided (the search ends ``unknown``).
Candidates -- the minimizers over the box of each open child's linear bound, the LP optima --
are confirmed by the caller's ``try_points``.

Memory: the search holds ``SplitOptions.memory`` bytes (default ``bounds.memory.search_budget``),
half for one bound call, whose domains are as many as fit at ``bounds.memory.domain_bytes`` from
the network's sizes (at most ``batch``), half for the open domains, kept with bounds in float32
rounded outward and alpha in float16: past it the stored warm starts are dropped (children start
from the root's slopes); past it without them the search ends ``unknown``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from certify.ir.network import Network
from bounds.activations import node_alpha_init
from bounds.bab.chain_bounds import PROOF_TOL
from bounds.bab.graph_bounds import Graph, Splits, bound_domains, refresh
from bounds.bab.graph_branching import split_scores
from bounds.bab.graph_leaf import exact, leaf_lp
from bounds.bab.graph_root import root_bounds
from bounds.memory import domain_bytes, domains_within, search_budget, spec_volume

Tensor = torch.Tensor


@dataclass
class SplitOptions:
    """batch: most domains bounded per call (children; fewer where ``memory`` says); iterations:
    alpha/beta steps per call (lr_alpha, lr_beta); root_iterations / root_lr / root_patience:
    the root's alpha-CROWN (intermediate slopes); root_spec_iterations: steps on the spec's
    slopes over the root's final bounds; refresh: recompute the later pre-activation bounds of
    children by CROWN, within refresh_cost times the work of the call's alpha/beta steps (IBP
    always); candidates: linear-bound minimizers tried per call; max_domains: a limit on the open
    domains; memory: bytes the search may hold (None: ``bounds.memory.search_budget``, see the
    module docstring); opt_dtype: dtype of the steps (the bound itself is float64)."""

    batch: int = 128
    iterations: int = 10
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    root_iterations: int = 20
    root_lr: float = 0.5
    root_patience: int | None = 4
    root_spec_iterations: int = 30
    refresh: bool = True
    refresh_cost: float = 1.0
    candidates: int = 16
    max_domains: int = 200_000
    memory: int | None = None
    opt_dtype: torch.dtype = torch.float32


@dataclass
class Root:
    """What the obligations on one box share: the ``Graph``, the box's float64 pre-activation
    bounds ``pre`` and the spec rows' optimized slopes ``alpha`` {activation node: (1, R, ...)}."""

    graph: Graph
    pre: dict
    alpha: dict

    def rows(self, idx) -> "Root":
        """The same root for the rows ``idx`` of its spec (an obligation's share)."""
        return Root(self.graph, self.pre, {k: v[:, idx] for k, v in self.alpha.items()})


def prepare_root(net: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, options: SplitOptions | None = None,
                 deadline: float | None = None, graph: Graph | None = None, groups: Tensor | None = None) -> Root:
    """The root bounds of the box [lo, hi] (n_in,) for the rows C (R, n_out), d (R,) of every
    obligation on it at once (alpha-CROWN with optimized intermediate slopes, ``graph_root``);
    ``groups`` (R,) long: the obligation of each row (default: all rows one obligation)."""
    opt = options or SplitOptions()
    g = graph or Graph(net)
    pre, alpha = root_bounds(g, lo.reshape(1, -1).double(), hi.reshape(1, -1).double(), C.double().unsqueeze(0),
                             d.double().unsqueeze(0), opt.root_iterations, opt.root_lr, opt.root_patience,
                             opt.opt_dtype, deadline, groups)
    return Root(g, pre, alpha)


def crown_root(g: Graph, pre: dict) -> Root:
    """The root over CROWN's float64 pre-activation bounds ``pre`` of the box (no optimized
    intermediate slopes): the domains start from CROWN's slopes, alpha on every activation node
    with unstable neurons."""
    g.alpha_nodes = sorted(set(g.alpha_nodes) | {n.name for n in g.net64.nodes if all(i in pre for i in n.inputs)
                                                 and node_alpha_init(n, [pre[i] for i in n.inputs]) is not None})
    return Root(g, pre, {})


class _Store:
    """The open domains: their bound (N,), best row (N,), pre-activation bounds (float32, rounded
    outward), splits, chosen split (node, neuron, point, score), alpha (float16) / beta (float32)."""

    FIELDS = ("lower", "row", "choice_node", "choice_neuron", "choice_point", "score")

    def __init__(self, device=None):
        self.n = 0
        self.lower = torch.zeros(0, dtype=torch.float64, device=device)
        self.row = self.choice_node = self.choice_neuron = torch.zeros(0, dtype=torch.long, device=device)
        self.choice_point = self.score = torch.zeros(0, dtype=torch.float64, device=device)
        self.pre: dict | None = None
        self.splits: Splits | None = None
        self.alpha: dict | None = None
        self.beta: Tensor | None = None
        self.warm = True

    def bytes_per_domain(self) -> int:
        if self.pre is None:
            return 0
        b = sum(2 * v[0][0].numel() * 4 for v in self.pre.values())
        if self.alpha:
            b += sum(v[0].numel() * 2 for v in self.alpha.values())
        return b

    def add(self, lower, row, choice, pre, splits, alpha, beta):
        pre32 = {k: (_down(l), _up(u)) for k, (l, u) in pre.items()}
        alpha16 = None if (alpha is None or not self.warm) else {k: v.to(torch.float16) for k, v in alpha.items()}
        beta32 = None if beta is None else beta.float()
        if self.n == 0:
            self.lower, self.row = lower, row
            self.choice_node, self.choice_neuron, self.choice_point, self.score = choice
            self.pre, self.splits, self.alpha, self.beta = pre32, splits, alpha16, beta32
            self.n = lower.shape[0]
            return
        self.lower, self.row = torch.cat([self.lower, lower]), torch.cat([self.row, row])
        self.choice_node, self.choice_neuron, self.choice_point, self.score = (
            torch.cat([a, b]) for a, b in zip((self.choice_node, self.choice_neuron, self.choice_point, self.score),
                                              choice))
        self.pre = {k: (torch.cat([self.pre[k][0], v[0]]), torch.cat([self.pre[k][1], v[1]])) for k, v in pre32.items()}
        self.splits = self.splits.cat(splits)
        if self.alpha is not None and alpha16 is not None:
            self.alpha = {k: torch.cat([v, alpha16[k]]) for k, v in self.alpha.items()}
        else:
            self.alpha = None
        self.beta = _cat_beta(self.beta, beta32)
        self.n = self.lower.shape[0]

    def take(self, idx: Tensor) -> dict:
        """Remove the domains ``idx`` and return them (bounds as float64)."""
        keep = torch.ones(self.n, dtype=torch.bool, device=self.lower.device)
        keep[idx] = False
        out = dict(lower=self.lower[idx], row=self.row[idx], node=self.choice_node[idx],
                   neuron=self.choice_neuron[idx], point=self.choice_point[idx], score=self.score[idx],
                   pre={k: (l[idx].double(), u[idx].double()) for k, (l, u) in self.pre.items()},
                   splits=self.splits[idx],
                   alpha=None if self.alpha is None else {k: v[idx].float() for k, v in self.alpha.items()},
                   beta=None if self.beta is None else self.beta[idx])
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f)[keep])
        self.pre = {k: (l[keep], u[keep]) for k, (l, u) in self.pre.items()}
        self.splits = self.splits[keep]
        if self.alpha is not None:
            self.alpha = {k: v[keep] for k, v in self.alpha.items()}
        if self.beta is not None:
            self.beta = self.beta[keep]
        self.n = int(keep.sum())
        return out


def _down(t: Tensor) -> Tensor:
    """float32 <= t (rounded toward -inf)."""
    f = t.float()
    return torch.where(f.double() > t, torch.nextafter(f, torch.full_like(f, -float("inf"))), f)


def _up(t: Tensor) -> Tensor:
    f = t.float()
    return torch.where(f.double() < t, torch.nextafter(f, torch.full_like(f, float("inf"))), f)


def _cat_beta(a, b):
    if a is None or b is None:
        return a if b is None else b
    S = max(a.shape[2], b.shape[2])
    pad = (lambda t: t if t.shape[2] == S else torch.cat([t, t.new_zeros(t.shape[0], t.shape[1], S - t.shape[2])], 2))
    return torch.cat([pad(a), pad(b)])


def call_bytes(g: Graph, pre: dict, alpha: dict | None, R: int, dtype: torch.dtype) -> int:
    """One domain's bytes in a bound call (``bounds.memory.domain_bytes``): the R spec rows over
    every node, the alpha variables, the pre-activation bounds."""
    multipliers = sum(v[0].numel() for v in (alpha or {}).values())
    bounds = sum(2 * l[0].numel() for l, _ in pre.values())
    return domain_bytes(spec_volume(g.net64, 1, R, False), multipliers, bounds, dtype)


def activation_split_bab(net: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, deadline: float, try_points,
                         stats: dict, *, options: SplitOptions | None = None, state: dict | None = None,
                         stop=None, root: Root | None = None):
    """Prove max_r (C y + d)_r > 0 for every input in the box [lo, hi] (n_in,) of ``net`` by
    splitting activations; C (R, n_out), d (R,).

    ``try_points(xs)`` (xs (N, n_in) float64) returns a confirmed counterexample or None;
    ``stats`` receives counts and seconds (domains, bound_calls, lp_calls, time_bound, time_root,
    time_falsify, time_lp, root_lower, and at a timeout open_domains and worst_open_lower: the
    smallest bound of an open domain, a lower bound of min_x max_r (C y + d)_r over the box).
    ``stop``: polled with the deadline; True ends the search as at a timeout. ``state``: a dict
    keeping the open domains when the search times out; called again with it (and the same
    arguments) the search goes on from there. ``root``: the box's root bounds for these rows
    (``prepare_root``, e.g. shared by the obligations of one box); computed here otherwise.

    Returns ("unsat", None), ("sat", ce), ("timeout", None) or ("unknown", None)."""
    opt = options or SplitOptions()
    lo1, hi1 = lo.reshape(1, -1).double(), hi.reshape(1, -1).double()
    C, d = C.double(), d.double()
    R = C.shape[0]
    for k in ("domains", "bound_calls", "lp_calls"):
        stats.setdefault(k, 0)
    for k in ("time_bound", "time_falsify", "time_lp", "time_root"):
        stats.setdefault(k, 0.0)
    if state:
        g, store, root_alpha, undecided, last_call = (state.pop(k) for k in ("graph", "store", "root_alpha",
                                                                              "undecided", "last_call"))
    else:
        if root is None:
            t = time.monotonic()
            root = prepare_root(net, lo1, hi1, C, d, opt, deadline)
            stats["time_root"] += time.monotonic() - t
        g, pre, root_alpha = root.graph, root.pre, root.alpha
        t = time.monotonic()
        res = bound_domains(g, lo1, hi1, C.unsqueeze(0), d.unsqueeze(0), pre, Splits.none(1, lo1.device), alpha=root_alpha,
                            iterations=opt.root_spec_iterations, lr_alpha=opt.lr_alpha, opt_dtype=opt.opt_dtype,
                            deadline=deadline)
        stats["time_bound"] += time.monotonic() - t
        stats["bound_calls"] += 1
        stats["domains"] += 1
        best, row = res.lower.max(1)
        stats.setdefault("root_lower", float(best[0]))
        if bool(best[0] > PROOF_TOL):
            return "unsat", None
        ce = _try_minimizers(res.lam_in, row, best, lo1, hi1, try_points, stats, opt.candidates)
        if ce is not None:
            return "sat", ce
        root_alpha = res.alpha
        store, undecided, last_call = _Store(lo1.device), [], 0.0
        choice = split_scores(g, pre, res.lam, res.alpha, row)
        store.add(best, row, (choice[1], choice[2], choice[3], choice[0]), pre, Splits.none(1, lo1.device), res.alpha, res.beta)
    memory = search_budget(lo.device) if opt.memory is None else opt.memory
    batch = domains_within(call_bytes(g, store.pre or {}, root_alpha, R, opt.opt_dtype), memory // 2, opt.batch)
    stats["split_batch"] = batch
    while store.n:
        if time.monotonic() + last_call > deadline or (stop is not None and stop()):
            stats["open_domains"] = store.n + len(undecided)
            stats["worst_open_lower"] = float(torch.cat([store.lower] + [u.reshape(1) for u in undecided]).min())
            if state is not None:
                state.update(graph=g, store=store, root_alpha=root_alpha, undecided=undecided, last_call=last_call)
            return "timeout", None
        if store.n > opt.max_domains:
            return "unknown", None
        if store.n * store.bytes_per_domain() > memory // 2:
            if store.warm and store.alpha is not None:
                store.warm, store.alpha = False, None
            else:
                return "unknown", None
        k = min(batch // 2, store.n)
        P = store.take(torch.topk(-store.lower, k).indices)
        leaf = torch.isinf(P["score"])
        for i in torch.nonzero(leaf).flatten().tolist():
            verdict, ce = _leaf(g, lo1, hi1, C, d, P, i, try_points, stats)
            if verdict == "sat":
                return "sat", ce
            if verdict != "unsat":
                undecided.append(P["lower"][i])
        br = ~leaf
        if not bool(br.any()):
            continue
        m = int(br.sum())
        sel = torch.nonzero(br).flatten()
        node, neuron, point = P["node"][sel], P["neuron"][sel], P["point"][sel]
        par_splits = P["splits"][sel]
        ch_splits = par_splits.add(node, neuron, point, torch.ones(m, device=node.device)).cat(
            par_splits.add(node, neuron, point, -torch.ones(m, device=node.device)))
        ch_pre = {kk: (torch.cat([l[sel], l[sel]]), torch.cat([u[sel], u[sel]])) for kk, (l, u) in P["pre"].items()}
        ch_pre = _clamp_new(g, ch_pre, ch_splits)
        n2 = 2 * m
        lo_b, hi_b = lo1.expand(n2, -1), hi1.expand(n2, -1)
        t = time.monotonic()
        if opt.refresh:
            later = set()
            for j in torch.unique(node).tolist():
                later.update(g.after[j])
            nodes = [kk for kk in g.pre_nodes if kk in later]
            if nodes:
                budget = opt.refresh_cost * 3 * max(opt.iterations, 1) * R * g.work[g.net64.output]
                ch_pre = refresh(g, lo_b, hi_b, ch_pre, ch_splits, nodes, budget)
        dup = (lambda t_: None if t_ is None else torch.cat([t_[sel], t_[sel]]))
        alpha0 = root_alpha if P["alpha"] is None else {kk: dup(v) for kk, v in P["alpha"].items()}
        res = bound_domains(g, lo_b, hi_b, C.expand(n2, -1, -1), d.expand(n2, -1), ch_pre, ch_splits,
                            alpha=alpha0, beta=dup(P["beta"]), iterations=opt.iterations, lr_alpha=opt.lr_alpha,
                            lr_beta=opt.lr_beta, opt_dtype=opt.opt_dtype, deadline=deadline)
        last_call = time.monotonic() - t
        stats["time_bound"] += last_call
        stats["bound_calls"] += 1
        stats["domains"] += n2
        best, row = res.lower.max(1)
        best = torch.maximum(best, torch.cat([P["lower"][sel], P["lower"][sel]]))
        open_ = ~(best > PROOF_TOL)
        if not bool(open_.any()):
            continue
        ce = _try_minimizers(res.lam_in[open_], row[open_], best[open_], lo1, hi1, try_points, stats, opt.candidates)
        if ce is not None:
            return "sat", ce
        o_pre = {kk: (l[open_], u[open_]) for kk, (l, u) in ch_pre.items()}
        sc, cn, ci, cp = split_scores(g, o_pre, {kk: v[open_] for kk, v in res.lam.items()},
                                      None if res.alpha is None else {kk: v[open_] for kk, v in res.alpha.items()},
                                      row[open_])
        store.add(best[open_], row[open_], (cn, ci, cp, sc), o_pre, ch_splits[open_],
                  None if res.alpha is None else {kk: v[open_] for kk, v in res.alpha.items()},
                  None if res.beta is None else res.beta[open_])
    if undecided:
        stats["open_domains"] = len(undecided)
        stats["worst_open_lower"] = float(torch.stack(undecided).min())
        return "unknown", None
    return "unsat", None


def _clamp_new(g: Graph, pre: dict, splits: Splits) -> dict:
    """Children's bounds clamped by their last split (the parent's were clamped by the others)."""
    return g.clamp(pre, Splits(*(f[:, -1:] for f in splits.fields())))


def _try_minimizers(lam_in, row, best, lo1, hi1, try_points, stats, n: int):
    """The minimizers over the box of the ``n`` worst domains' linear bounds, tried."""
    if lam_in is None or lam_in.shape[0] == 0:
        return None
    lam = lam_in[torch.arange(lam_in.shape[0], device=lam_in.device), row]
    xs = torch.where(lam > 0, lo1.expand_as(lam), hi1.expand_as(lam))
    order = torch.argsort(best)[:n]
    t = time.monotonic()
    ce = try_points(xs[order])
    stats["time_falsify"] += time.monotonic() - t
    return ce


def _leaf(g: Graph, lo1, hi1, C, d, P: dict, i: int, try_points, stats):
    """A domain with nothing to split: an LP where the network is affine on it, else undecided."""
    pre_i = {k: (l[i:i + 1], u[i:i + 1]) for k, (l, u) in P["pre"].items()}
    if not exact(g, pre_i):
        return "undecided", None
    t = time.monotonic()
    verdict, x = leaf_lp(g, lo1, hi1, C, d, pre_i, P["splits"][i:i + 1])
    stats["lp_calls"] += 1
    stats["time_lp"] += time.monotonic() - t
    if verdict == "candidate":
        ce = try_points(x.reshape(1, -1))
        return ("sat", ce) if ce is not None else ("undecided", None)
    return verdict, None
