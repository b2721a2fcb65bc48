"""Interval bound propagation: one rule per IR op, in ``IBP_RULES``.

A rule takes the op and one interval ``(lo, hi)`` per node input (tensors (B, *shape)) and
returns the interval of the op's output. Affine ops use the centre/radius form
(``W mid +- |W| rad``), monotone ops are applied to both ends. Every rule is exact for the
box it receives (the tightest box containing the op's image of that box), so IBP is sound.

Speed (IBP is meant to cost a few forward passes): the weights the rules derive (``W/2``,
``|W|/2``) are cached per weight tensor and version; ``ibp_forward`` walks a per-network plan
(rules looked up once); on a chain of Linear / activation / reshape layers small enough,
the interval travels stacked as one tensor [lo | hi] and each Linear is one matmul with
``[[W+, W-], [W-, W+]]`` (as many torch calls as the forward pass). A spec ``C`` is folded
into a last Linear layer (``ibp_spec``), which is tighter than bounding the outputs first.
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F

from certify.ir import ops as O
from bounds import activations as act
from bounds.bilinear import matmul_interval, mul_interval
from bounds.concretize import ROUND
from bounds.smooth import nan_to_inf
from bounds.softmax import softmax_interval

Interval = tuple[torch.Tensor, torch.Tensor]


def _channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (ndim - 2))


_DERIVED: dict = {}


class Derived:
    """``fn(*tensors)`` for the tensors given at each call, recomputed only when one of them
    changed (another tensor, or an in-place update: its version); never cached while autograd
    tracks one of them (training)."""

    __slots__ = ("fn", "key", "value")

    def __init__(self, fn):
        self.fn, self.key, self.value = fn, None, None

    def __call__(self, *ts):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts):
            return self.fn(*ts)
        key = tuple(None if t is None else (id(t), t._version) for t in ts)
        if key != self.key:
            self.value, self.key = self.fn(*ts), key
        return self.value


def derived(kind: str, w: torch.Tensor, fn):
    """``fn(w)``, cached per (kind, tensor identity and version) like ``Derived`` (the cache
    holds only a weak reference to ``w``)."""
    if torch.is_grad_enabled() and w.requires_grad:
        return fn(w)
    key = (kind, id(w))
    hit = _DERIVED.get(key)
    if hit is not None and hit[0]() is w and hit[1] == w._version:
        return hit[2]
    val = fn(w)
    if len(_DERIVED) > 4096:
        _DERIVED.clear()
    _DERIVED[key] = (weakref.ref(w), w._version, val)
    return val


def halved(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w / 2, |w| / 2): the weights of the centre/radius form ``W (lo+hi)/2 +- |W| (hi-lo)/2``
    with the halving moved onto the weights (exact in floating point)."""
    return derived("half", w, lambda w: (w * 0.5, w.abs() * 0.5))


def _linear(op: O.Linear, x: Interval) -> Interval:
    lo, hi = x
    wh, ah = halved(op.weight)
    c = F.linear(hi + lo, wh, op.bias)
    r = F.linear(hi - lo, ah)
    return c - r, c + r


def _conv(op: O.Conv2d, x: Interval) -> Interval:
    lo, hi = x
    wh, ah = halved(op.weight)
    c = F.conv2d(hi + lo, wh, op.bias, op.stride, op.padding, op.dilation, op.groups)
    r = F.conv2d(hi - lo, ah, None, op.stride, op.padding, op.dilation, op.groups)
    return c - r, c + r


def _scale(lo, hi, scale, shift):
    a, b = lo * scale, hi * scale
    return torch.minimum(a, b) + shift, torch.maximum(a, b) + shift


def _const_mul(op: O.ConstMul, x: Interval) -> Interval:
    return _scale(x[0], x[1], op.const, 0.0)


def _const_add(op: O.ConstAdd, x: Interval) -> Interval:
    return x[0] + op.const, x[1] + op.const


def _channel_affine(op, x: Interval) -> Interval:
    scale, shift = op.scale_shift()
    nd = x[0].dim()
    return _scale(x[0], x[1], _channel(scale, nd), _channel(shift, nd))


def _add(op, a: Interval, b: Interval) -> Interval:
    return a[0] + b[0], a[1] + b[1]


def _sub(op, a: Interval, b: Interval) -> Interval:
    return a[0] - b[1], a[1] - b[0]


def _monotone(op, x: Interval) -> Interval:
    """Ops that are non-decreasing in every input (pooling, activations, reshapes)."""
    return op.forward(x[0]), op.forward(x[1])


def _concat(op: O.Concat, *xs: Interval) -> Interval:
    return op.forward(*(x[0] for x in xs)), op.forward(*(x[1] for x in xs))


def _conv_transpose(op: O.ConvTranspose2d, x: Interval) -> Interval:
    lo, hi = x
    wh, ah = halved(op.weight)
    args = (op.stride, op.padding, op.output_padding, op.groups, op.dilation)
    c = F.conv_transpose2d(hi + lo, wh, op.bias, *args)
    r = F.conv_transpose2d(hi - lo, ah, None, *args)
    return c - r, c + r


IBP_RULES = {
    O.Linear: _linear,
    O.Conv2d: _conv,
    O.ConstAdd: _const_add,
    O.ConstMul: _const_mul,
    O.Add: _add,
    O.Sub: _sub,
    O.BatchNorm: _channel_affine,
    O.Normalize: _channel_affine,
    O.AvgPool2d: _monotone,       # non-negative weights
    O.MaxPool2d: _monotone,
    O.Flatten: _monotone,
    O.Reshape: _monotone,
    O.Identity: _monotone,
    O.Concat: _concat,
    # data movement and reductions (ops.LinearMap)
    O.Slice: _monotone,           # selections, permutations, padding, sums: non-negative coefficients
    O.Gather: _monotone,
    O.Transpose: _monotone,
    O.Pad: _monotone,
    O.ReduceSum: _monotone,
    O.ReduceMean: _monotone,
    O.ConvTranspose2d: _conv_transpose,
}


def _activation(op, x: Interval) -> Interval:
    return act.interval(op, x[0], x[1])


# nonlinear ops: the elementwise ones from their records (bounds/activations.py), then products and softmax
IBP_RULES.update({cls: _activation for cls in act.ACTIVATIONS})
IBP_RULES.update({
    O.Mul: mul_interval,
    O.MatMul: matmul_interval,
    O.Softmax: softmax_interval,
})


def ibp_node(op: O.Op, inputs: list[Interval], sanitize: bool = False) -> Interval:
    """The output interval of ``op`` given its inputs' intervals (a node that reads one input
    twice gets the same interval object twice). ``sanitize``: NaN bounds (inf - inf, 0 * inf
    from infinite inputs) become -inf / +inf (``may_be_unbounded``)."""
    try:
        rule = IBP_RULES[type(op)]
    except KeyError:
        from certify.errors import CertifyError
        raise CertifyError(f"IBP has no rule for op {op.kind}") from None
    iv = rule(op, *inputs)
    return nan_to_inf(*iv) if sanitize else iv


def may_be_unbounded(net) -> bool:
    """Whether some bound of ``net`` can be infinite for a bounded input set (an op of
    ``bounds.activations.UNBOUNDED``): the rules then turn NaN bounds into infinite ones."""
    return plan(net).unbounded


def ibp_spec(op_out: O.Linear, x_in: Interval, C: torch.Tensor, d: torch.Tensor | None) -> Interval:
    """Interval of ``C @ y + d`` where ``y = op_out(x)`` is a Linear output layer: C is folded
    into the layer first (``(C W) x + C b``, as CROWN-IBP / auto_LiRPA do), which is exact for
    each row over the box of x and so never looser than bounding y, then C y."""
    lo, hi = x_in
    if C.dtype != op_out.weight.dtype:
        C = C.to(op_out.weight.dtype)
    W = torch.matmul(C, op_out.weight)                                   # (B, R, in)
    c0 = torch.zeros(C.shape[:2], dtype=W.dtype, device=W.device) if op_out.bias is None \
        else torch.matmul(C, op_out.bias)
    if d is not None:
        c0 = c0 + d
    c = torch.baddbmm(c0.unsqueeze(2), W, (hi + lo).unsqueeze(2), alpha=0.5)
    r = torch.bmm(W.abs(), (hi - lo).unsqueeze(2)) * 0.5
    r = r + _roundoff(torch.bmm(W.abs(), (hi.abs() + lo.abs()).unsqueeze(2)) + c0.abs().unsqueeze(2))
    return nan_to_inf((c - r).squeeze(2), (c + r).squeeze(2))


def _roundoff(mag: torch.Tensor) -> torch.Tensor:
    """Outward rounding of the final centre/radius dot products (``ROUND`` units of roundoff of
    the magnitudes involved): an attained extreme, e.g. 0 at a tie, is never reported inside."""
    return ROUND * torch.finfo(mag.dtype).eps * mag


def interval_spec(y: Interval, C: torch.Tensor, d: torch.Tensor | None) -> Interval:
    """Interval of ``C @ y + d`` from an interval of y (B, K)."""
    lo, hi = y[0].flatten(1), y[1].flatten(1)
    mid, rad = ((hi + lo) / 2).unsqueeze(2), ((hi - lo) / 2).unsqueeze(2)
    c = torch.bmm(C.to(lo.dtype), mid).squeeze(2)
    r = torch.bmm(C.abs().to(lo.dtype), rad).squeeze(2)
    if d is not None:
        c = c + d
    r = r + _roundoff(torch.bmm(C.abs().to(lo.dtype), mid.abs() + rad).squeeze(2) + (0 if d is None else d.abs()))
    return nan_to_inf(c - r, c + r)


STACK_LIMIT = 1 << 17       # chains whose batch x (largest Linear's weights) is at most this run stacked


def _stacked_linear(w: torch.Tensor, b: torch.Tensor | None):
    """Weights of ``[lo', hi'] = [[W+, W-], [W-, W+]] [lo, hi] + [b, b]`` (one matmul)."""
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    ws = torch.cat([torch.cat([wp, wn], 1), torch.cat([wn, wp], 1)], 0)
    return ws, (None if b is None else torch.cat([b, b]))


def _chain_step(op):
    """A step on the stacked interval ``x`` (B, 2n) = [lo | hi] (each flattened per sample:
    reshapes are then no-ops), or None (no such form)."""
    if isinstance(op, O.Linear):
        weights = Derived(_stacked_linear)

        def lin(x):
            ws, bs = weights(op.weight, op.bias)
            return F.linear(x, ws, bs)
        lin.size = op.weight.numel()
        return lin
    rec = act.record(op)
    if rec is not None and rec.ibp_forward:
        return op.forward
    if isinstance(op, (O.Flatten, O.Reshape, O.Identity)):
        return _same
    return None


def _same(x):
    return x


class _Plan:
    """A network's IBP steps, looked up once: (node name, rule, op, input names, consumers that
    can be split); ``chain``: for a chain of Linear / activation / reshape ops, steps on the
    stacked interval (B, 2n) = [lo | hi] (as many torch calls as a forward pass), else None;
    ``unbounded``: ``may_be_unbounded``."""

    def __init__(self, net):
        consumers: dict[str, list[str]] = {}
        for n in net.nodes:
            rec = act.record(n.op)
            if rec is not None and rec.split_point is not None:
                consumers.setdefault(n.inputs[0], []).append(n.name)
        self.unbounded = any(isinstance(n.op, act.UNBOUNDED) for n in net.nodes)
        self.steps = []
        for n in net.nodes:
            rule = IBP_RULES.get(type(n.op))
            if rule is None:
                from certify.errors import CertifyError
                raise CertifyError(f"IBP has no rule for op {n.op.kind} (node {n.name!r})")
            self.steps.append((n.name, rule, n.op, n.inputs, consumers.get(n.name)))
        self.input_consumers = consumers.get(net.input_name)
        self.nodes = net.nodes
        chain, prev = [], net.input_name
        for n in net.nodes:
            step = _chain_step(n.op) if n.inputs == (prev,) else None
            if step is None:
                chain = None
                break
            chain.append((n.name, None if step is _same else step, math.prod(net.shape_of(n.name)),
                          tuple(net.shape_of(n.name))))
            prev = n.name
        self.chain = chain
        self.chain_size = max((getattr(c[1], "size", 0) for c in chain), default=0) if chain else 0


_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def plan(net) -> _Plan:
    """The cached IBP plan of ``net`` (rebuilt if its node list changed)."""
    p = _PLANS.get(net)
    if p is None or p.nodes is not net.nodes:
        p = _PLANS[net] = _Plan(net)
    return p


def ibp_forward(net, box: Interval, splits: dict | None = None, stop: str | None = None,
                clamp=None) -> dict[str, Interval]:
    """Intervals (B, *shape) of the network's nodes, from the input box: every node's up to
    (excluding) ``stop``, or, on a chain network without splits, only the last one computed
    (the ``stop`` node's input, or the output). ``clamp(consumers, interval)`` (given with
    ``splits``) applies ReLU splits to the inputs of the ReLUs ``consumers``."""
    p = plan(net)
    B = box[0].shape[0]
    if p.chain is not None and not splits and B * p.chain_size <= STACK_LIMIT:
        x = torch.cat([box[0].reshape(B, -1), box[1].reshape(B, -1)], 1)
        last, n, shape = net.input_name, 0, net.input_shape
        for name, step, size, out_shape in p.chain:
            if name == stop:
                break
            if step is not None:        # (reshapes leave the flat stacked form as it is)
                x = step(x)
            last, n, shape = name, size, out_shape
        if last == net.input_name:
            return {last: box}
        return {last: (x[:, :n].reshape((B,) + shape), x[:, n:].reshape((B,) + shape))}
    if splits and p.input_consumers:
        box = clamp(p.input_consumers, box)
    vals = {net.input_name: box}
    for name, rule, op, inputs, cons in p.steps:
        if name == stop:
            break
        iv = rule(op, *[vals[i] for i in inputs])
        if p.unbounded:
            iv = nan_to_inf(*iv)
        if splits and cons:
            iv = clamp(cons, iv)
        vals[name] = iv
    return vals
