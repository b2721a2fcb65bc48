"""CROWN (Zhang et al. 2018): backward linear bound propagation over the IR.

``backward_lower(net, start, A, ...)`` returns, for every row of ``A`` (B, R, *shape(start)),
a lower bound of ``A . y_start`` over the input set: the rows are pushed backward through
the rule table of ``bounds/backward_rules.py`` (summing contributions at nodes used more than once)
down to the input, then concretized (``bounds/concretize.py``). Upper bounds are lower
bounds of negated rows, so one code path serves both (rows [A; -A]).

``propagate(net, input_set, intermediate, ...)`` computes, node by node, bounds of every
node's output: IBP everywhere, and at each pre-activation node (an input of an op whose
relaxation reads its input bounds: ``bounds.activations.NEEDS_BOUNDS``) CROWN itself when
``intermediate='crown'`` (layer by layer, as auto_LiRPA's ``method='CROWN'``): one backward
pass per such node, batched over the neurons that need it (those some consumer's record calls
unstable -- for ReLU the ones whose interval straddles 0, a stable neuron's relaxation being
exact whatever its bounds -- and all of them for smooth ops, MaxPool, products, softmax). Rows are
packed per batch element, so the cost is B x (most such neurons in one element): linear in
B. Rows of a (C, H, W) node travel as receptive-field windows (``bounds/patches.py``), so a
convolutional layer costs its windows, not its whole image, per row. Memory: every backward pass
runs in chunks of rows (and of the batch) whose coefficients stay within ``ROW_BUDGET``
elements (``crown_node``, ``crown_spec``). Time: a ``deadline`` stops any pass with
``BoundTimeout``. Results are intersected with IBP (both sound). ReLU splits clamp the pre-activation
bounds as soon as they are computed, so later layers use the clamped bounds. Bounds may be
infinite where an op is unbounded (1/x over an interval containing 0): the relaxations then
use constants and the rows that depend on them come out -inf, never NaN.

Floating point: bounds are computed in the network's dtype. In float32 the rounding of the
backward pass is of the order of 1e-6 relative to the magnitude of the terms; the tests
check soundness exactly in float64 and with a 1e-4 relative tolerance in float32. No
outward margin is added (the smooth ops' relaxations carry their own, see bounds/smooth.py).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from certify.errors import CertifyError
from certify.ir import ops as O
from certify.ir.network import Network
from certify.spec.sets import BOX_NORMS, InputSet
from bounds import activations as act
from bounds.concretize import concretize_lower
from bounds.ibp import Interval, ibp_node, may_be_unbounded
from bounds.backward_rules import BACKWARD_RULES, START_RULES
from bounds.patches import PATCH_RULES, Patches, concretize_lower_patches, to_dense
from bounds.patches import add as patch_add

NONLINEAR = act.NEEDS_BOUNDS
ROW_BUDGET = 2 ** 24        # elements of the largest A tensor of one backward pass (chunks of rows / batch)


class BoundTimeout(TimeoutError):
    """A bound computation passed its ``deadline`` (no bound was returned)."""


def check_deadline(deadline: float | None) -> None:
    """Raise ``BoundTimeout`` when ``time.monotonic()`` is past ``deadline`` (None: never)."""
    if deadline is not None and time.monotonic() > deadline:
        raise BoundTimeout("bound computation stopped at its deadline")


def preactivation_nodes(net: Network) -> dict[str, list[str]]:
    """Nodes whose output feeds an op whose relaxation reads its inputs' bounds (the elementwise
    nonlinear ops, MaxPool, products, softmax: ``bounds.activations.NEEDS_BOUNDS``) -> the names
    of those consumers."""
    out: dict[str, list[str]] = {}
    for n in net.nodes:
        if isinstance(n.op, NONLINEAR):
            for i in dict.fromkeys(n.inputs):
                out.setdefault(i, []).append(n.name)
    return out


def ancestors(net: Network, name: str) -> set[str]:
    """Every node (and the input) that ``name`` depends on, itself included."""
    seen, stack = {name}, [name]
    while stack:
        n = stack.pop()
        if n == net.input_name:
            continue
        for i in net.node(n).inputs:
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


class _Ctx:
    def __init__(self, net, bounds, alpha_of, start, relax_cache=None):
        self.net, self._bounds, self._alpha_of, self.start = net, bounds, alpha_of, start
        self._cache = relax_cache
        self.in_shapes: list = []
        self.finite = not may_be_unbounded(net)     # every bound is finite: no checks needed

    def bounds(self, name: str) -> Interval:
        return self._bounds[name]

    def relaxation(self, key, fn, lo: torch.Tensor, hi: torch.Tensor):
        """``fn(lo, hi)``, reused while ``key``'s bounds are these very tensors."""
        if self._cache is None:
            return fn(lo, hi)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is lo and hit[1] is hi:
            return hit[2]
        r = fn(lo, hi)
        self._cache[key] = (lo, hi, r)
        return r

    def alpha(self, node: str, rows: int, window=None):
        """Optimized lower slopes of ReLU ``node`` for the current rows: (B, rows, *shape), or
        per-row windows (B, rows, C, Ph, Pw) when ``window`` (a function cutting them) is given."""
        return None if self._alpha_of is None else self._alpha_of(self.start, node, rows, window)


def backward_lower(net: Network, start: str, A: torch.Tensor, bounds: dict[str, Interval], input_set: InputSet,
                   alpha_of: Callable | None = None, key: str | None = None,
                   bias: torch.Tensor | None = None, relax_cache: dict | None = None,
                   row_terms: dict | None = None, keep: dict | None = None, meter: dict | None = None,
                   deadline: float | None = None) -> torch.Tensor:
    """Lower bounds (B, R) of ``A . y_start + bias`` (A: (B, R, *shape(start))) over the input set.

    ``bounds`` must hold (lo, hi) of every pre-activation node below ``start``;
    ``alpha_of(key, relu_node)`` may return ReLU lower slopes (B, R, *shape) to use (``key``:
    the node whose bound is computed, default ``start``); ``relax_cache``: a dict that keeps
    the activations' relaxations for later passes over the same bounds.
    ``row_terms``: {node name: fn(A) -> (A', bias' or None)} applied to the rows when they reach
    that node (all contributions summed, before its rule; the input's rows too); the caller
    answers for ``A' . y + bias' <= A . y`` on the set (e.g. beta-CROWN's split terms, which are
    <= 0 on a split domain; a term that returns A unchanged and no bias just reads the rows).
    ``keep``: a dict that receives the input's coefficients ("input", dense (B, R, *input shape),
    None when the bound does not depend on the input) and the constant ("bias", (B, R)).
    ``meter``: a dict whose "peak" receives the most elements of the rows at any node, "volume"
    their sum over the nodes (added to what is there); ``deadline``: see ``propagate``."""
    Ax, bias = backward_linear(net, start, A, bounds, alpha_of, key, bias, relax_cache, row_terms, meter, deadline)
    if keep is not None:
        keep["input"] = to_dense(Ax) if isinstance(Ax, Patches) else Ax
        keep["bias"] = bias
    if Ax is None:      # the quantity does not depend on the input
        return bias
    if isinstance(Ax, Patches):
        if input_set.norm in BOX_NORMS:
            lo, hi = input_set.box()
            return concretize_lower_patches(Ax, lo.to(Ax.t.dtype), hi.to(Ax.t.dtype)) + bias
        Ax = to_dense(Ax)
    return concretize_lower(Ax, input_set) + bias


def backward_linear(net: Network, start: str, A: torch.Tensor, bounds: dict[str, Interval],
                    alpha_of: Callable | None = None, key: str | None = None, bias: torch.Tensor | None = None,
                    relax_cache: dict | None = None, row_terms: dict | None = None, meter: dict | None = None,
                    deadline: float | None = None):
    """The backward pass of ``backward_lower`` without its concretization: (Ax, bias) with
    ``Ax . x + bias <= A . y_start + bias0`` for every input x whose pre-activations lie in
    ``bounds``; Ax (B, R, *input shape), dense or ``Patches``, or None where the quantity does
    not depend on the input. ``row_terms``: see ``backward_lower``."""
    ctx = _Ctx(net, bounds, alpha_of, key or start, relax_cache)
    pending = {start: A}
    B, R = A.shape[:2]
    if bias is None:
        T = A.t if isinstance(A, Patches) else A
        bias = torch.zeros((B, R), dtype=T.dtype, device=T.device)
    for node in reversed(net.nodes):
        Acur = pending.pop(node.name, None)
        if Acur is None:
            continue
        check_deadline(deadline)
        if row_terms is not None and node.name in row_terms:
            Acur, bias = _row_term(row_terms[node.name], Acur, bias)
        if meter is not None:
            _measure(meter, Acur)
        ctx.in_shapes = [net.shape_of(i) for i in node.inputs]
        out = None
        if isinstance(Acur, Patches):
            prule = PATCH_RULES.get(type(node.op))
            out = None if prule is None else prule(node.op, Acur, node, ctx)
            if out is None:
                Acur = to_dense(Acur)
        if out is None:
            rule = BACKWARD_RULES.get(type(node.op))
            if rule is None:
                raise CertifyError(f"CROWN has no rule for op {node.op.kind} (node {node.name!r})")
            out = rule(node.op, Acur, node, ctx)
        As, b = out
        if b is not None:
            bias = bias + b
        for i, Ai in zip(node.inputs, As):
            pending[i] = Ai if i not in pending else _accumulate(pending[i], Ai)
    Ax = pending.pop(net.input_name, None)
    if Ax is not None and row_terms is not None and net.input_name in row_terms:
        Ax, bias = _row_term(row_terms[net.input_name], Ax, bias)
    if meter is not None and Ax is not None:
        _measure(meter, Ax)
    return Ax, bias


def _row_term(term, A, bias):
    A = to_dense(A) if isinstance(A, Patches) else A
    A, b = term(A)
    return A, bias if b is None else bias + b


def _measure(meter: dict, A) -> None:
    """meter["peak"]: the most elements of the rows at one node; meter["volume"]: their sum."""
    n = (A.t if isinstance(A, Patches) else A).numel()
    meter["peak"] = max(meter.get("peak", 0), n)
    meter["volume"] = meter.get("volume", 0) + n


def _accumulate(a, b):
    """Sum of two coefficient sets of one node (dense tensors and/or patches)."""
    if isinstance(a, Patches) and isinstance(b, Patches):
        s = patch_add(a, b)
        if s is not None:
            return s
    a = to_dense(a) if isinstance(a, Patches) else a
    b = to_dense(b) if isinstance(b, Patches) else b
    return a + b


def _needs_rows(net: Network, name: str, consumers: list[str], lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: which neurons of pre-activation ``name`` need a CROWN bound: those where a
    consumer's relaxation is not exact (its record's ``unstable``; every neuron for the others)."""
    need = None
    for c in consumers:
        op = act.elementwise_op(net.node(c))
        if op is None or op is act.SQUARE:
            return torch.ones_like(lo, dtype=torch.bool).flatten(1)
        u = act.ACTIVATIONS[type(op)].unstable(op, lo, hi)
        need = u if need is None else need | u
    return need.flatten(1)


def pack_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n) bool -> idx (B, R) of the True entries first (R = most Trues in a row), valid (B, R)."""
    counts = mask.sum(1)
    R = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :R]
    valid = torch.arange(R, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, valid


def _onehot_rows(idx: torch.Tensor, shape, dtype) -> torch.Tensor:
    """[+e_idx ; -e_idx] rows: (B, 2R, *shape)."""
    B, R = idx.shape
    n = math.prod(shape)
    E = torch.zeros(B, R, n, dtype=dtype, device=idx.device)
    E.scatter_(2, idx.unsqueeze(2), 1.0)
    return torch.cat([E, -E], 1).reshape((B, 2 * R) + tuple(shape))


def max_ancestor_size(net: Network, name: str) -> int:
    return max(math.prod(net.shape_of(a)) for a in ancestors(net, name))


def crown_node(net: Network, name: str, idx: torch.Tensor, valid: torch.Tensor, bounds: dict[str, Interval],
               input_set: InputSet, alpha_of: Callable | None = None,
               relax_cache: dict | None = None, deadline: float | None = None,
               meter: dict | None = None, patches: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN lower/upper bounds (B, R) of neurons ``idx`` (B, R) of node ``name`` (pad rows: -inf/+inf).
    ``meter``: a dict whose "volume" receives the elements of the rows summed over every node
    and chunk (what a pass of these rows holds at once when it keeps its graph, as alpha's do).
    ``patches``: rows of a (C, H, W) node travel as receptive-field windows (bounds/patches.py);
    False: dense rows (the same bounds, more memory).

    Memory: the rows are split into chunks so that no A tensor of a backward pass holds more
    than ``ROW_BUDGET`` elements. The first chunk is sized for dense rows over the largest
    ancestor (an upper bound), the later ones by the most elements a row of the chunks before
    had at any node (rows in patches mode are far smaller); when one dense row over the whole
    batch is already over the budget, the batch is split as well. With ``alpha_of`` the chunks
    keep the dense sizing, the same in every pass (each chunk has its own slopes, key
    ``(name, first row)``), and the batch is not split."""
    B, R = idx.shape
    dense_row = 2 * max_ancestor_size(net, name)        # elements of one row (+ and -) per batch element
    bstep = B if alpha_of is not None else max(1, min(B, ROW_BUDGET // dense_row))
    los, his = [], []
    for b0 in range(0, B, bstep):
        b1 = min(B, b0 + bstep)
        vals, s = (bounds, input_set) if bstep == B else (slice_bounds(bounds, b0, b1), BatchSlice(input_set, b0, b1))
        lo, hi = _crown_rows(net, name, idx[b0:b1], vals, s, alpha_of, relax_cache, deadline, dense_row, meter,
                             patches)
        los.append(lo)
        his.append(hi)
    lo, hi = torch.cat(los), torch.cat(his)
    inf = torch.full_like(lo, float("inf"))
    return torch.where(valid, lo, -inf), torch.where(valid, hi, inf)


def _crown_rows(net, name, idx, bounds, input_set, alpha_of, relax_cache, deadline, dense_row, total=None,
                patches=True):
    """``crown_node`` on one slice of the batch, its rows in chunks (see there); pad rows unmasked."""
    B, R = idx.shape
    shape = net.shape_of(name)
    dtype = input_set.box()[0].dtype
    node = net.node(name)
    start_rule = START_RULES.get(type(node.op))
    per_row = B * dense_row                 # elements of one row of the batch at its largest node (bound)
    los, his = [], []
    a = 0
    while a < R:
        check_deadline(deadline)
        b = min(R, a + max(1, ROW_BUDGET // per_row))
        sub = idx[:, a:b]
        sub_alpha, meter = None, {}
        if alpha_of is not None:        # one set of slopes per chunk of rows
            def sub_alpha(start, node, rows, window, a=a):
                return alpha_of((start, a), node, rows, window)
        kw = dict(relax_cache=relax_cache, meter=meter, deadline=deadline)
        if patches and len(shape) == 3:     # rows as 1x1 windows, grown by the rules
            C_, H_, W_ = shape
            t = torch.zeros(sub.shape + (C_, 1, 1), dtype=dtype, device=sub.device)
            t.scatter_(2, (sub // (H_ * W_)).reshape(sub.shape + (1, 1, 1)), 1.0)
            rem = sub % (H_ * W_)
            p = Patches(torch.cat([t, -t], 1), torch.cat([rem // W_] * 2, 1), torch.cat([rem % W_] * 2, 1), H_, W_)
            res = backward_lower(net, name, p, bounds, input_set, sub_alpha, **kw)
        elif start_rule is not None:    # first step without forming the one-hot rows
            Ain, b0 = start_rule(node.op, sub, net.shape_of(node.inputs[0]), shape)
            b0 = torch.zeros(sub.shape, dtype=dtype, device=sub.device) if b0 is None else b0
            res = backward_lower(net, node.inputs[0], torch.cat([Ain, -Ain], 1), bounds, input_set, sub_alpha,
                                 key=name, bias=torch.cat([b0, -b0], 1), **kw)
        else:
            res = backward_lower(net, name, _onehot_rows(sub, shape, dtype), bounds, input_set, sub_alpha, **kw)
        los.append(res[:, :b - a])
        his.append(-res[:, b - a:])
        if alpha_of is None and meter:
            per_row = max(1, -(-meter["peak"] // (b - a)))
        if total is not None:
            total["volume"] = total.get("volume", 0) + meter.get("volume", 0)
        a = b
    lo = torch.cat(los, 1) if los else torch.zeros(B, 0, dtype=dtype, device=idx.device)
    hi = torch.cat(his, 1) if his else torch.zeros(B, 0, dtype=dtype, device=idx.device)
    return lo, hi


class BatchSlice:
    """Batch elements ``b0:b1`` of an input set (what concretization reads: ``box()``, ``norm``,
    and for L2 / L1 balls ``center``, ``eps``, ``domain``)."""

    def __init__(self, s: InputSet, b0: int, b1: int):
        lo, hi = s.box()
        self._box, self.norm = (lo[b0:b1], hi[b0:b1]), s.norm
        if s.norm in ("1", "2"):
            self.center, self.domain = s.center[b0:b1], s.domain
            eps = s.eps         # as given: a float made a float32 tensor would round the radius (down, for 0.03)
            self.eps = eps[b0:b1] if torch.is_tensor(eps) and eps.dim() > 0 else eps

    def box(self):
        return self._box


def slice_bounds(bounds: dict[str, Interval], b0: int, b1: int) -> dict[str, Interval]:
    return {k: (v[0][b0:b1], v[1][b0:b1]) for k, v in bounds.items()}


def scatter_tighten(lo: torch.Tensor, hi: torch.Tensor, idx: torch.Tensor, new_lo: torch.Tensor,
                    new_hi: torch.Tensor) -> Interval:
    """Intersect (lo, hi) (B, *shape) with new bounds of the neurons ``idx`` (B, R)."""
    shape = lo.shape
    lo = lo.flatten(1).scatter_reduce(1, idx, new_lo, "amax", include_self=True).reshape(shape)
    hi = hi.flatten(1).scatter_reduce(1, idx, new_hi, "amin", include_self=True).reshape(shape)
    return lo, hi


def tighten_straight_through(iv: Interval, ref: Interval) -> Interval:
    """The intersection of ``iv`` with the sound bounds ``ref`` in value (so sound), with the
    gradient of ``iv`` everywhere (as auto_LiRPA's reference bounds): a bound that ``ref``
    beats, or ties, still passes the gradient to the slopes that produced it."""
    lo, hi = iv
    lo = lo + (torch.maximum(lo, ref[0]) - lo).detach()
    hi = hi + (torch.minimum(hi, ref[1]) - hi).detach()
    return lo, hi


def scatter_replace(lo: torch.Tensor, hi: torch.Tensor, idx: torch.Tensor, new_lo: torch.Tensor,
                    new_hi: torch.Tensor, valid: torch.Tensor) -> Interval:
    """(lo, hi) (B, *shape) with the neurons ``idx`` (B, R) replaced by the new bounds where
    ``valid`` (pad rows keep the old ones)."""
    shape = lo.shape
    lo, hi = lo.flatten(1), hi.flatten(1)
    nl = torch.where(valid, new_lo, lo.gather(1, idx))
    nh = torch.where(valid, new_hi, hi.gather(1, idx))
    return lo.scatter(1, idx, nl).reshape(shape), hi.scatter(1, idx, nh).reshape(shape)


def apply_splits(net: Network, consumers: list[str], iv: Interval, splits: dict | None) -> Interval:
    """Clamp a pre-activation interval with the splits of its consumers (+1: lo >= p, -1: hi <= p,
    p the consumer's record's ``split_point``: 0 for ReLU)."""
    if not splits:
        return iv
    lo, hi = iv
    for c in consumers:
        s = splits.get(c)
        if s is None:
            continue
        if tuple(s.shape) != tuple(lo.shape):
            raise CertifyError(f"splits[{c!r}] has shape {tuple(s.shape)}, expected {tuple(lo.shape)} "
                               "(batch, *pre-activation shape)")
        p = torch.full((), act.record(net.node(c).op).split_point, dtype=lo.dtype, device=lo.device)
        lo = torch.where(s > 0, torch.maximum(lo, p), lo)
        hi = torch.where(s < 0, torch.minimum(hi, p), hi)
    return lo, hi


def check_splits(net: Network, splits: dict) -> None:
    """A ``CertifyError`` unless every key of ``splits`` is a node of ``net`` that can be split
    (its op's record has a ``split_point``: ReLU, LeakyReLU, Sign)."""
    unknown = {k for k in splits if not _splittable(net, k)}
    if unknown:
        raise CertifyError(f"splits name {sorted(unknown)}, which are not ReLU nodes (nor other activations "
                           f"that split at a point) of {net.name}")


def _splittable(net: Network, name: str) -> bool:
    try:
        rec = act.record(net.node(name).op)
    except KeyError:
        return False
    return rec is not None and rec.split_point is not None


def _affine_of_input(net: Network, name: str) -> bool:
    """True when ``name`` is a Linear/Conv applied to the input through ops that map a box to a
    box (reshapes, transposes, slices, padding): IBP is then exact for a box, so CROWN would
    only repeat it."""
    n = net.node(name)
    if not isinstance(n.op, (O.Linear, O.Conv2d)):
        return False
    src = n.inputs[0]
    while src != net.input_name:
        m = net.node(src)
        if not isinstance(m.op, (O.Flatten, O.Reshape, O.Identity, O.Transpose, O.Slice, O.Pad)):
            return False
        src = m.inputs[0]
    return True


def propagate(net: Network, input_set: InputSet, intermediate: str = "crown", splits: dict | None = None,
              alpha_of: Callable | None = None, rows: dict | None = None, reference: dict | None = None,
              record_rows: dict | None = None, relax_cache: dict | None = None,
              deadline: float | None = None, record_volume: dict | None = None,
              patches: bool = True) -> dict[str, Interval]:
    """Bounds (lo, hi) (B, *shape) of every node, with CROWN (or IBP) pre-activation bounds.

    ``deadline`` (a ``time.monotonic()`` value): checked before every node and inside every
    backward pass; past it, ``BoundTimeout`` is raised and nothing is returned.
    ``record_volume``: a dict that receives, per node bounded by CROWN, the elements of its rows
    summed over the nodes of its backward passes (``crown_node``'s meter). ``patches``: see
    ``crown_node``.

    ``rows``: fixed (idx, valid) per pre-activation node (alpha-CROWN keeps the neuron set of
    its first pass); ``record_rows``: a dict that receives the (idx, valid) used;
    ``relax_cache``: a dict to keep the activations' relaxations in (pass the same one to
    ``crown_spec`` to reuse them there); ``reference``: sound bounds per pre-activation node to intersect with (e.g. the best of
    earlier passes); without ``alpha_of`` it is applied before the rows are chosen (a neuron it
    makes stable gets no CROWN pass); with it, after, its gradient the computed bound's
    (straight-through), so alpha-CROWN's slopes keep learning where the reference is as tight or
    tighter."""
    if intermediate not in ("crown", "ibp"):
        raise CertifyError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
    pre = preactivation_nodes(net)
    relax_cache = {} if relax_cache is None else relax_cache
    if splits:
        check_splits(net, splits)
    vals: dict[str, Interval] = {net.input_name: apply_splits(net, pre.get(net.input_name, []), input_set.box(), splits)}
    sanitize = may_be_unbounded(net)
    for node in net.nodes:
        check_deadline(deadline)
        iv = ibp_node(node.op, [vals[i] for i in node.inputs], sanitize)
        if node.name in pre:
            iv = apply_splits(net, pre[node.name], iv, splits)
            if reference is not None and node.name in reference and alpha_of is None:
                # before the rows are chosen: neurons the reference makes stable need no CROWN pass
                ref = reference[node.name]
                iv = (torch.maximum(iv[0], ref[0]), torch.minimum(iv[1], ref[1]))
            use_crown = intermediate == "crown" and not (input_set.norm in BOX_NORMS
                                                         and _affine_of_input(net, node.name))
            if use_crown:
                if rows is not None and node.name in rows:
                    idx, valid = rows[node.name]
                else:
                    idx, valid = pack_rows(_needs_rows(net, node.name, pre[node.name], iv[0], iv[1]))
                if record_rows is not None:
                    record_rows[node.name] = (idx, valid)
                if idx.shape[1] > 0:
                    meter = None if record_volume is None else {}
                    new_lo, new_hi = crown_node(net, node.name, idx, valid, vals, input_set, alpha_of, relax_cache,
                                                deadline, meter, patches)
                    if meter is not None:
                        record_volume[node.name] = meter.get("volume", 0)
                    if alpha_of is None:
                        iv = scatter_tighten(iv[0], iv[1], idx, new_lo, new_hi)
                    else:           # alpha-CROWN: the tighter values, CROWN's gradient
                        ibp_iv = iv
                        iv = scatter_replace(iv[0], iv[1], idx, new_lo, new_hi, valid)
                        iv = tighten_straight_through(iv, ibp_iv)
                    iv = apply_splits(net, pre[node.name], iv, splits)
            if reference is not None and node.name in reference:
                iv = tighten_straight_through(iv, reference[node.name])
        vals[node.name] = iv
    return vals


def spec_rows(net: Network, C: torch.Tensor | None, B: int, dtype, device=None) -> torch.Tensor:
    """The spec matrix (B, rows, *output_shape); identity rows (on ``device``) when C is None."""
    K = net.output_size
    if C is None:
        C = torch.eye(K, dtype=dtype, device=device).unsqueeze(0).expand(B, K, K)
    return C.to(dtype).reshape((B, C.shape[1]) + tuple(net.output_shape))


def crown_linear(net: Network, vals: dict[str, Interval], input_set: InputSet, C: torch.Tensor | None,
                 d: torch.Tensor | None, relax_cache: dict | None = None):
    """CROWN's linear bounds of ``C @ y + d`` in the input: (lA, lbias, uA, ubias) with lA, uA
    (B, rows, *input_shape) and lbias, ubias (B, rows), such that lA . x + lbias <= C @ f(x) + d
    <= uA . x + ubias for every x of the input set (given pre-activation bounds ``vals``)."""
    B = input_set.box()[0].shape[0]
    dtype, device = input_set.box()[0].dtype, input_set.box()[0].device
    Cs = spec_rows(net, C, B, dtype, device)
    rows = Cs.shape[1]
    Ax, bias = backward_linear(net, net.output, torch.cat([Cs, -Cs], 1), vals, relax_cache=relax_cache)
    shape = (B, 2 * rows) + tuple(net.input_shape)
    Ax = torch.zeros(shape, dtype=dtype, device=device) if Ax is None else (to_dense(Ax) if isinstance(Ax, Patches) else Ax)
    Ax = Ax.reshape(shape)
    d = torch.zeros((B, rows), dtype=dtype, device=device) if d is None else d
    return Ax[:, :rows], bias[:, :rows] + d, -Ax[:, rows:], -bias[:, rows:] + d


def crown_spec(net: Network, vals: dict[str, Interval], input_set: InputSet, C: torch.Tensor | None,
               d: torch.Tensor | None, upper: bool = True, alpha_of: Callable | None = None,
               relax_cache: dict | None = None, row_terms: dict | None = None, keep: dict | None = None,
               deadline: float | None = None):
    """Lower and upper CROWN bounds (B, rows) of ``C @ y + d`` given pre-activation bounds ``vals``.

    With ``upper=False`` only lower bounds are computed (upper is +inf); ``row_terms``, ``keep``:
    see ``backward_lower`` (rows: the lower rows, then the upper ones). Without ``alpha_of``,
    ``row_terms`` and ``keep`` (which are per batch element and row), the batch (then the rows) is
    split into chunks whose dense rows over the largest ancestor stay within ``ROW_BUDGET``
    elements; ``deadline``: see ``propagate``."""
    B = input_set.box()[0].shape[0]
    dtype, device = input_set.box()[0].dtype, input_set.box()[0].device
    Cs = spec_rows(net, C, B, dtype, device)
    rows = Cs.shape[1]
    whole = alpha_of is not None or row_terms is not None or keep is not None
    per_row = max_ancestor_size(net, net.output) * (2 if upper else 1)
    bstep = B if whole else max(1, min(B, ROW_BUDGET // (per_row * rows)))
    rstep = rows if bstep > 1 or whole else max(1, min(rows, ROW_BUDGET // per_row))
    los, his = [], []
    for b0 in range(0, B, bstep):
        b1 = min(B, b0 + bstep)
        sub_vals, s = (vals, input_set) if bstep == B else (slice_bounds(vals, b0, b1), BatchSlice(input_set, b0, b1))
        lo_r, hi_r = [], []
        for r0 in range(0, rows, rstep):
            check_deadline(deadline)
            Cr = Cs[b0:b1, r0:r0 + rstep]
            n = Cr.shape[1]
            A = torch.cat([Cr, -Cr], 1) if upper else Cr
            res = backward_lower(net, net.output, A, sub_vals, s, alpha_of, relax_cache=relax_cache,
                                 row_terms=row_terms, keep=keep, deadline=deadline)
            lo_r.append(res[:, :n])
            hi_r.append(-res[:, n:] if upper else torch.full_like(res[:, :n], float("inf")))
        los.append(torch.cat(lo_r, 1))
        his.append(torch.cat(hi_r, 1))
    lo, hi = torch.cat(los), torch.cat(his)
    if d is not None:
        lo, hi = lo + d, hi + d
    return lo, hi
