"""Batched alpha/beta-CROWN lower bounds of B domains of any IR network the bound rules support.

A domain is the input box [lo, hi] with split constraints on pre-activation neurons: a split
(node, neuron, point, side) says z >= point (side +1) or z <= point (side -1), z being that
neuron of a pre-activation node (an input of an op whose relaxation reads its bounds). The
domain's pre-activation bounds ``pre`` {node: (lo, hi) (B, *shape)} hold over the box and the
splits, and are clamped by them (a child starts from its parent's).

``bound_domains`` returns sound lower bounds (B, R) of C y + d over each domain:

* the spec rows go backward through the rule tables (``bounds.crown.crown_spec``) with each
  activation's lower/upper lines from its record (bounds/activations.py), relaxed over ``pre``,
  with alpha variables per row (``alpha``: {activation node: (B, R, n_alpha * C, ...)}, any
  value in [0, 1] sound);
* beta (Wang et al. 2021): each split enters as the Lagrangian term -beta * side * (z - point),
  <= 0 on the domain for every beta >= 0, added to the rows at the split node
  (``bounds.crown.backward_lower``'s ``row_terms``);
* Adam raises the bounds over alpha and beta; the steps run in ``opt_dtype`` (float32 by default)
  and the best step's multipliers (per domain and row) are evaluated once more in float64 on the
  float64 network: that value is the bound. A domain whose clamped bounds cross (lo > hi beyond
  rounding) is empty: its bound is +inf.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from certify.ir import ops as O
from certify.ir.network import Network
from certify.spec.sets import Box
from bounds import activations as act
from bounds.crown import ancestors, crown_node, crown_spec, pack_rows, preactivation_nodes, _needs_rows
from bounds.ibp import ibp_node, may_be_unbounded

Tensor = torch.Tensor
Interval = tuple[Tensor, Tensor]

EMPTY_TOL = 1e-9   # clamped bounds crossing by more than this (relative) make a domain empty


@dataclass
class Splits:
    """The split constraints of B domains, (B, S) each, padded with ``side`` 0 (no constraint):
    ``node`` (long, index into ``Graph.split_nodes``), ``neuron`` (long, flat index into that
    node), ``point`` (float64), ``side`` (int8: +1 z >= point, -1 z <= point)."""

    node: Tensor
    neuron: Tensor
    point: Tensor
    side: Tensor

    @staticmethod
    def none(B: int, device=None) -> "Splits":
        z = torch.zeros(B, 0, dtype=torch.long, device=device)
        return Splits(z, z.clone(), torch.zeros(B, 0, dtype=torch.float64, device=device),
                      torch.zeros(B, 0, dtype=torch.int8, device=device))

    @property
    def depth(self) -> int:
        return self.node.shape[1]

    def __getitem__(self, idx) -> "Splits":
        return Splits(self.node[idx], self.neuron[idx], self.point[idx], self.side[idx])

    def cat(self, other: "Splits") -> "Splits":
        """The domains of ``self`` then those of ``other`` (the shallower one padded)."""
        S = max(self.depth, other.depth)
        a, b = self.pad(S), other.pad(S)
        return Splits(*(torch.cat([x, y]) for x, y in zip(a.fields(), b.fields())))

    def pad(self, S: int) -> "Splits":
        k = S - self.depth
        if k <= 0:
            return self
        B = self.node.shape[0]
        return Splits(*(torch.cat([x, torch.zeros(B, k, dtype=x.dtype, device=x.device)], 1) for x in self.fields()))

    def fields(self):
        return self.node, self.neuron, self.point, self.side

    def add(self, node: Tensor, neuron: Tensor, point: Tensor, side: Tensor) -> "Splits":
        """One more split per domain (B,) each."""
        return Splits(torch.cat([self.node, node.reshape(-1, 1).long()], 1),
                      torch.cat([self.neuron, neuron.reshape(-1, 1).long()], 1),
                      torch.cat([self.point, point.reshape(-1, 1).double()], 1),
                      torch.cat([self.side, side.reshape(-1, 1).to(torch.int8)], 1))


class Graph:
    """What the search needs to know of a network, computed once: float64 and float32 copies,
    the pre-activation nodes in topological order with their consumers, the ones a split can cut
    (``split_nodes``: some consumer's record has a split point, or a max-pooling reads it;
    ``split_op[j]`` that consumer's op and ``split_act[j]`` its node), which pre-activation nodes depend on each split node
    (``after[j]``), and whether every nonlinear op is exact once its neurons are stable
    (``piecewise``: ReLU-like records with a fixed split point, and max-pooling), so that a domain
    without unstable neurons is an affine piece; ``work[k]``: the sizes of node k's ancestors
    summed (what one row bounding k costs, about, per backward pass)."""

    def __init__(self, net: Network):
        self.net64 = net.detach().to(torch.float64)
        self.net32 = net.detach().to(torch.float32)
        n64 = self.net64
        pre = preactivation_nodes(n64)
        order = [n64.input_name] + [n.name for n in n64.nodes]
        self.pre_nodes = [k for k in order if k in pre]
        self.consumers = {k: pre[k] for k in self.pre_nodes}
        self.split_nodes, self.split_op, self.split_act = [], [], []
        for k in self.pre_nodes:
            for c in pre[k]:
                op = act.elementwise_op(n64.node(c))
                rec = None if op is None or op is act.SQUARE else act.record(op)
                if rec is not None and (rec.split_point is not None or rec.split_mid):
                    self.split_nodes.append(k)
                    self.split_op.append(op)
                    self.split_act.append(c)
                    break
            else:       # an input of max-pooling only: split at midpoints until each window is exact
                pools = [c for c in pre[k] if isinstance(n64.node(c).op, O.MaxPool2d)]
                if pools:
                    self.split_nodes.append(k)
                    self.split_op.append(n64.node(pools[0]).op)
                    self.split_act.append(pools[0])
        self.split_index = {k: j for j, k in enumerate(self.split_nodes)}
        self.sizes = [math.prod(n64.shape_of(k)) for k in self.split_nodes]
        desc = _descendants(n64)
        self.after = [[k for k in self.pre_nodes if k in desc[s] and k != s] for s in self.split_nodes]
        anc = {k: ancestors(n64, k) for k in self.pre_nodes + [n64.output]}
        self.work = {k: sum(math.prod(n64.shape_of(a)) for a in v) for k, v in anc.items()}
        self.piecewise = all(_exact_when_stable(n64, c) for k in self.pre_nodes for c in pre[k])
        self.alpha_nodes = []          # filled by the root bound: activation nodes with alpha variables

    def clamp(self, pre: dict, splits: Splits, nodes=None) -> dict:
        """``pre`` with every split's neuron clamped to its side of the point (only ``nodes``, a
        list of pre-activation nodes, when given)."""
        out = dict(pre)
        if splits.depth == 0:
            return out
        for j, name in enumerate(self.split_nodes):
            if nodes is not None and name not in nodes:
                continue
            m = (splits.node == j) & (splits.side != 0)
            if not bool(m.any()):
                continue
            lo, hi = out[name]
            shape = lo.shape
            lo, hi = lo.reshape(shape[0], -1).clone(), hi.reshape(shape[0], -1).clone()
            idx = torch.where(m, splits.neuron, 0)
            p = splits.point.to(lo.dtype)
            neg = torch.full_like(p, -float("inf"))
            up = lo.gather(1, idx)
            up = torch.where(m & (splits.side > 0), torch.maximum(up, p), neg)
            lo = lo.scatter_reduce(1, idx, up, "amax", include_self=True)
            dn = hi.gather(1, idx)
            dn = torch.where(m & (splits.side < 0), torch.minimum(dn, p), -neg)
            hi = hi.scatter_reduce(1, idx, dn, "amin", include_self=True)
            out[name] = (lo.reshape(shape), hi.reshape(shape))
        return out


def _descendants(net: Network) -> dict[str, set[str]]:
    out = {net.input_name: set()}
    for n in net.nodes:
        out[n.name] = set()
    for n in reversed(net.nodes):
        for i in n.inputs:
            out[i] |= {n.name} | out[n.name]
    return out


def _exact_when_stable(net: Network, consumer: str) -> bool:
    node = net.node(consumer)
    if isinstance(node.op, O.MaxPool2d):
        return True
    op = act.elementwise_op(node)
    return op is not None and op is not act.SQUARE and act.record(op).split_point is not None


def empty_domains(pre: dict) -> Tensor:
    """(B,) bool: some clamped bound crosses by more than rounding (the domain holds no point)."""
    empty = None
    for lo, hi in pre.values():
        tol = EMPTY_TOL * (1 + lo.abs() + hi.abs())
        e = (lo > hi + torch.where(torch.isfinite(tol), tol, torch.zeros_like(tol))).flatten(1).any(1)
        empty = e if empty is None else empty | e
    return empty


def uncross(pre: dict) -> dict:
    """Bounds that cross by rounding only, made an interval (min, max)."""
    return {k: (torch.minimum(lo, hi), torch.maximum(lo, hi)) for k, (lo, hi) in pre.items()}


def beta_terms(g: Graph, splits: Splits, beta: Tensor | None, dtype) -> dict:
    """``row_terms`` adding -beta * side * (z - point) at each split node (beta (B, R, S) >= 0)."""
    if beta is None or splits.depth == 0:
        return {}
    terms = {}
    b = beta.clamp(min=0)
    for j, name in enumerate(g.split_nodes):
        m = (splits.node == j) & (splits.side != 0)
        if not bool(m.any()):
            continue
        sgn = (splits.side.to(dtype) * m.to(dtype)).unsqueeze(1)                  # (B, 1, S)
        idx = torch.where(m, splits.neuron, 0).unsqueeze(1)                        # (B, 1, S)
        point = splits.point.to(dtype).unsqueeze(1)

        def term(A, sgn=sgn, idx=idx, point=point):
            B, R = A.shape[:2]
            coef = b * sgn                                                         # (B, R, S)
            Af = A.reshape(B, R, -1).scatter_add(2, idx.expand(B, R, idx.shape[2]), -coef)
            return Af.reshape(A.shape), (coef * point).sum(2)
        terms[name] = term
    return terms


@dataclass
class DomainBounds:
    """``lower`` (B, R) float64: the bounds; ``alpha`` {node: (B, R, ...)} and ``beta`` (B, R, S)
    (``opt_dtype``): the last step's multipliers (warm starts for children); ``lam`` {activation
    node: (B, R, *shape)} float64: the rows' coefficients on each splittable activation's output
    in the final pass (branching scores); ``lam_in`` (B, R, n_in): their coefficients on the input
    (the minimizers of the linear bounds are counterexample candidates)."""

    lower: Tensor
    alpha: dict | None
    beta: Tensor | None
    lam: dict
    lam_in: Tensor | None


def spec_pass(g: Graph, net: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, pre: dict, splits: Splits,
              alpha: dict | None, beta: Tensor | None, record: bool = False, cache: dict | None = None):
    """One backward pass of the rows C (B, R, n_out) over the domains: lower bounds (B, R) of
    C y + d, and (``record``) the coefficients {activation node: (B, R, *shape)} on the
    splittable activations and on the input (``keep``). ``cache``: the relaxations that do not
    depend on alpha, kept between passes over the same ``pre``."""
    dt = lo.dtype
    B = lo.shape[0]
    box = _box(net, lo, hi)
    terms = beta_terms(g, splits, beta, dt)
    lam = {}
    if record:
        for a in g.split_act:
            def rec(A, a=a):
                lam[a] = A.detach()
                return A, None
            prev = terms.get(a)
            terms[a] = rec if prev is None else (lambda A, f=rec, p=prev: _chain_terms(A, f, p))
    keep = {} if record else None
    alpha_of = None if not alpha else (lambda key, node, rows, window: alpha.get(node))
    low, _ = crown_spec(net, pre, box, C.reshape(B, C.shape[-2], -1), d, upper=False, alpha_of=alpha_of,
                        row_terms=terms or None, keep=keep, relax_cache=cache)
    lam_in = None
    if record and keep.get("input") is not None:
        lam_in = keep["input"].reshape(B, C.shape[-2], -1).detach()
    return low, lam, lam_in


def _chain_terms(A, f, g):
    A, b1 = f(A)
    A, b2 = g(A)
    return A, b1 if b2 is None else (b2 if b1 is None else b1 + b2)


def _box(net: Network, lo: Tensor, hi: Tensor) -> Box:
    shape = (lo.shape[0],) + tuple(net.input_shape)
    return _FastBox(lo.reshape(shape), hi.reshape(shape))


class _FastBox(Box):
    """A Box without the construction check (the search's boxes are valid by construction)."""

    def __post_init__(self):
        pass


def default_alpha(g: Graph, pre: dict, R: int) -> dict:
    """CROWN's initial alpha variables of every activation node, (B, R, ...)."""
    out = {}
    for n in g.net64.nodes:
        if n.name not in g.alpha_nodes:
            continue
        ins = [pre.get(i) for i in n.inputs]
        a0 = act.node_alpha_init(n, ins)
        op = act.elementwise_op(n)
        if a0 is None and op is not None and act.record(op).alpha_init is not None:   # every neuron stable
            a0 = act.record(op).alpha_init(op, *ins[0])
        if a0 is not None:
            out[n.name] = a0.unsqueeze(1).expand((a0.shape[0], R) + tuple(a0.shape[1:]))
    return out


def bound_domains(g: Graph, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, pre: dict, splits: Splits,
                  alpha: dict | None = None, beta: Tensor | None = None, iterations: int = 0,
                  lr_alpha: float = 0.1, lr_beta: float = 0.05, use_beta: bool = True,
                  opt_dtype: torch.dtype = torch.float32, deadline: float | None = None,
                  stop_when_positive: bool = True) -> DomainBounds:
    """Sound lower bounds of C y + d over B domains (see the module docstring).

    lo, hi (B, n_in) float64; C (B, R, n_out), d (B, R); ``pre`` clamped float64 bounds of every
    pre-activation node (B, *shape); ``alpha`` / ``beta``: starting multipliers (e.g. the
    parent's; default CROWN's slopes and 0), clamped into range. ``iterations`` Adam steps (none
    past ``deadline``; stopped once every domain has a positive row when
    ``stop_when_positive``)."""
    B, R = C.shape[:2]
    empty = empty_domains(pre)
    pre = uncross(pre)
    a0 = default_alpha(g, pre, R)
    if alpha:
        a0 = {k: alpha[k].to(v.dtype).clamp(0, 1).expand_as(v) if k in alpha else v for k, v in a0.items()}
    S = splits.depth
    b0 = None
    if use_beta and S:
        b0 = torch.zeros(B, R, S, dtype=torch.float64, device=lo.device) if beta is None else beta.double().clamp(min=0)
        if b0.shape[2] < S:
            b0 = torch.cat([b0, torch.zeros(B, R, S - b0.shape[2], dtype=b0.dtype, device=b0.device)], 2)
    best_a, best_b = a0, b0
    last_a, last_b = a0, b0
    if iterations > 0 and (a0 or b0 is not None):
        dt = opt_dtype
        net = g.net64 if dt == torch.float64 else g.net32
        lo_o, hi_o, C_o, d_o = lo.to(dt), hi.to(dt), C.to(dt), d.to(dt)
        pre_o = {k: (l.to(dt), u.to(dt)) for k, (l, u) in pre.items()}
        alpha_p = {k: v.to(dt).clone().requires_grad_(True) for k, v in a0.items()}
        beta_p = None if b0 is None else b0.to(dt).clone().requires_grad_(True)
        groups = [{"params": list(alpha_p.values()), "lr": lr_alpha}]
        if beta_p is not None:
            groups.append({"params": [beta_p], "lr": lr_beta})
        opt = torch.optim.Adam([gr for gr in groups if gr["params"]])
        seen = torch.full((B, R), -float("inf"), dtype=dt, device=lo.device)
        best_a = {k: v.detach().clone() for k, v in alpha_p.items()}
        best_b = None if beta_p is None else beta_p.detach().clone()
        cache: dict = {}
        for _ in range(iterations):
            low, _, _ = spec_pass(g, net, lo_o, hi_o, C_o, d_o, pre_o, splits, alpha_p, beta_p, cache=cache)
            with torch.no_grad():
                better = low > seen
                seen = torch.where(better, low, seen)
                for k, v in alpha_p.items():
                    best_a[k] = torch.where(better.reshape(B, R, *([1] * (v.dim() - 2))), v, best_a[k])
                if beta_p is not None:
                    best_b = torch.where(better.unsqueeze(2), beta_p, best_b)
            if stop_when_positive and bool((seen.max(1).values > 0).all()):
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            opt.zero_grad()
            (-low[~empty].sum()).backward()
            opt.step()
            with torch.no_grad():
                for v in alpha_p.values():
                    v.clamp_(0, 1)
                if beta_p is not None:
                    beta_p.clamp_(min=0)
        last_a = {k: v.detach() for k, v in alpha_p.items()}
        last_b = None if beta_p is None else beta_p.detach()
    with torch.no_grad():
        low, lam, lam_in = spec_pass(g, g.net64, lo, hi, C, d, pre, splits,
                                     {k: v.double() for k, v in best_a.items()},
                                     None if best_b is None else best_b.double(), record=True)
    low = torch.where(empty.unsqueeze(1), torch.full_like(low, float("inf")), low)
    return DomainBounds(low, last_a, last_b, lam, lam_in)


def refresh(g: Graph, lo: Tensor, hi: Tensor, pre: dict, splits: Splits, nodes: list[str],
            budget: float = float("inf")) -> dict:
    """``pre`` tightened after new splits: every node's interval by IBP from the input box, each
    pre-activation node's intersected with its bounds in ``pre`` and clamped by the splits, and
    the pre-activation ``nodes`` also recomputed by CROWN over the earlier nodes' bounds (for the
    neurons some consumer needs; not for an elementwise op's output, whose interval is exact
    given its input's), in topological order while their cost (rows x ``Graph.work``, per
    domain) fits in ``budget``. Intersections of sound enclosures: never looser, always sound."""
    net = g.net64
    box = _box(net, lo, hi)
    pre = dict(pre)
    todo = set(nodes)
    sanitize = may_be_unbounded(net)
    vals = {net.input_name: box.box()}
    if net.input_name in pre:
        vals[net.input_name] = pre[net.input_name]
    for node in net.nodes:
        iv = ibp_node(node.op, [vals[i] for i in node.inputs], sanitize)
        k = node.name
        if k in pre:
            l0, h0 = pre[k]
            iv = g.clamp({k: (torch.maximum(iv[0], l0), torch.minimum(iv[1], h0))}, splits, [k])[k]
            image = act.elementwise_op(node) is not None and node.inputs[0] in pre
            if k in todo and not image:
                need = _needs_rows(net, k, g.consumers[k], *iv)
                idx, valid = pack_rows(need)
                cost = 2 * idx.shape[1] * g.work[k]
                if idx.shape[1] and cost <= budget:
                    budget -= cost
                    pre[k] = iv
                    with torch.no_grad():
                        nl, nh = crown_node(net, k, idx, valid, pre, box)
                    shape = iv[0].shape
                    iv = (iv[0].flatten(1).scatter_reduce(1, idx, nl, "amax", include_self=True).reshape(shape),
                          iv[1].flatten(1).scatter_reduce(1, idx, nh, "amin", include_self=True).reshape(shape))
                    iv = g.clamp({k: iv}, splits, [k])[k]
            pre[k] = iv
        vals[k] = iv
    return pre
