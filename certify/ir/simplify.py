"""``simplify(net)``: an equivalent, smaller network (fewer nodes for every engine to bound).

Rewrites, applied until none applies (each computes exactly the same function, up to
floating-point rounding; folded weights are computed in float64, then cast back):

* drop ``Identity`` nodes and ``Reshape``/``Flatten`` nodes that keep the shape;
* fold an elementwise affine node -- ``BatchNorm``, ``Normalize``, ``ConstMul``, ``ConstAdd``
  (one rule each in ``ELEMENTWISE``) -- **backward** into the ``Linear``/``Conv2d`` that feeds
  it when that op has no other consumer (for ``Conv2d`` only per-channel scales/shifts);
* fold such a node **forward** into the ``Linear`` that consumes it (possibly through one
  ``Flatten``/``Reshape``), or into a consuming ``Conv2d`` (groups 1, per-channel) when the
  conv has zero padding or the shift is zero -- the conv pads its *input* with zeros, and a
  folded shift would wrongly shift those padded zeros too (zero padding is not mean padding);
* merge ``Linear -> Linear`` when the first has no other consumer and the product matrix is
  not larger than the two factors together;
* drop nodes that do not reach the output.

The result is a new ``Network``. Ops left unchanged keep referencing the original tensors;
folded ops hold new, detached tensors (use ``simplify`` for verification and export, not
inside a training loop that must reach the original parameters).
"""
from __future__ import annotations

import torch

from certify.ir.network import Network, Node
from certify.ir.ops import (BatchNorm, ConstAdd, ConstMul, Conv2d, Flatten, Identity, Linear, Normalize,
                            Reshape, Shape)

_F64 = torch.float64


def _chan(v: torch.Tensor, shape: Shape) -> torch.Tensor:
    return v.detach().to(_F64).reshape((-1,) + (1,) * (len(shape) - 1))


def _scale_shift(op, shape: Shape):
    s, t = op.scale_shift()
    return _chan(s, shape), _chan(t, shape)


ELEMENTWISE = {
    BatchNorm: _scale_shift,
    Normalize: _scale_shift,
    ConstMul: lambda op, shape: (op.const.detach().to(_F64), torch.zeros((), dtype=_F64)),
    ConstAdd: lambda op, shape: (torch.ones((), dtype=_F64), op.const.detach().to(_F64)),
}
"""op class -> fn(op, per-sample shape) -> (scale, shift) with y = x * scale + shift (float64,
each broadcastable onto the shape)."""


class _Graph:
    """A mutable copy of a network's node list used while rewriting."""

    def __init__(self, net: Network):
        self.net = net
        self.nodes: list[list] = [[n.name, n.op, tuple(n.inputs)] for n in net.nodes]
        self.output = net.output
        self.shapes = {n.name: n.shape for n in net.nodes}
        self.shapes[net.input_name] = net.input_shape

    def index(self, name: str) -> int:
        return next(k for k, n in enumerate(self.nodes) if n[0] == name)

    def consumers(self, name: str) -> list[list]:
        return [n for n in self.nodes if name in n[2]]

    def sole_consumer(self, name: str) -> list | None:
        """The only node reading ``name`` (once), or None; never when ``name`` is the output."""
        cs = self.consumers(name)
        if name == self.output or len(cs) != 1 or cs[0][2].count(name) != 1:
            return None
        return cs[0]

    def rename_uses(self, old: str, new: str) -> None:
        for n in self.nodes:
            n[2] = tuple(new if i == old else i for i in n[2])
        if self.output == old:
            self.output = new

    def remove(self, name: str) -> None:
        del self.nodes[self.index(name)]

    def network(self) -> Network:
        return Network(self.net.input_shape, [Node(n, op, ins) for n, op, ins in self.nodes], self.output,
                       self.net.input_name, self.net.name)


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like.dtype)


def _per_channel(v: torch.Tensor, shape: Shape) -> torch.Tensor | None:
    """(C,) values of ``v`` broadcast over (C, H, W) if it is constant over H, W, else None."""
    full = v.expand(shape)
    per = full[:, :1, :1]
    return per.reshape(-1) if torch.equal(full, per.expand(shape)) else None


# ----------------------------------------------------------------------------- rewrites
def _drop_identities(g: _Graph) -> bool:
    for name, op, ins in g.nodes:
        same = isinstance(op, (Reshape, Flatten)) and g.shapes[name] == g.shapes[ins[0]]
        if not (isinstance(op, Identity) or same):
            continue
        if name == g.output and ins[0] == g.net.input_name:
            continue
        g.rename_uses(name, ins[0])
        g.remove(name)
        return True
    return False


def _fold_backward(g: _Graph) -> bool:
    """Elementwise affine node N whose input is a Linear/Conv2d P used only by N: P absorbs N."""
    for node in g.nodes:
        name, op, ins = node
        rule = ELEMENTWISE.get(type(op))
        if rule is None or ins[0] == g.net.input_name:
            continue
        prev = g.nodes[g.index(ins[0])]
        pop = prev[1]
        if not isinstance(pop, (Linear, Conv2d)) or g.sole_consumer(prev[0]) is not node:
            continue
        shape = g.shapes[name]
        s, t = rule(op, shape)
        W = pop.weight.detach().to(_F64)
        b = torch.zeros(W.shape[0], dtype=_F64) if pop.bias is None else pop.bias.detach().to(_F64)
        if isinstance(pop, Linear):
            s, t = s.expand(shape), t.expand(shape)
            new = Linear(_cast(W * s[:, None], pop.weight), _cast(b * s + t, pop.weight))
        else:
            s, t = _per_channel(s, shape), _per_channel(t, shape)
            if s is None or t is None:
                continue
            new = Conv2d(_cast(W * s.view(-1, 1, 1, 1), pop.weight), _cast(b * s + t, pop.weight),
                         pop.stride, pop.padding, pop.dilation, pop.groups)
        node[1], node[2] = new, prev[2]
        g.remove(prev[0])
        return True
    return False


def _fold_forward(g: _Graph) -> bool:
    """Elementwise affine node N used only by a Linear (maybe through a reshape) or a Conv2d."""
    for name, op, ins in list(g.nodes):
        rule = ELEMENTWISE.get(type(op))
        if rule is None:
            continue
        nxt = g.sole_consumer(name)
        reshape = None
        if nxt is not None and isinstance(nxt[1], (Flatten, Reshape)):
            reshape, nxt = nxt, g.sole_consumer(nxt[0])
        if nxt is None or not isinstance(nxt[1], (Linear, Conv2d)):
            continue
        shape = g.shapes[name]
        s, t = rule(op, shape)
        lop = nxt[1]
        W = lop.weight.detach().to(_F64)
        b = torch.zeros(W.shape[0], dtype=_F64) if lop.bias is None else lop.bias.detach().to(_F64)
        if isinstance(lop, Linear):
            s, t = s.expand(shape).reshape(-1), t.expand(shape).reshape(-1)
            new = Linear(_cast(W * s[None, :], lop.weight), _cast(b + W @ t, lop.weight))
        else:
            if reshape is not None or lop.groups != 1 or len(shape) != 3:
                continue
            s, t = _per_channel(s, shape), _per_channel(t, shape)
            if s is None or t is None or (any(lop.padding) and bool((t != 0).any())):
                continue
            new = Conv2d(_cast(W * s.view(1, -1, 1, 1), lop.weight),
                         _cast(b + (W * t.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)), lop.weight),
                         lop.stride, lop.padding, lop.dilation, lop.groups)
        nxt[1] = new
        g.rename_uses(name, ins[0])
        g.remove(name)
        return True
    return False


def _merge_linear(g: _Graph) -> bool:
    """Linear L1 feeding only Linear L2: one Linear W2 @ W1, W2 @ b1 + b2 (if not larger)."""
    for node in g.nodes:
        name, op, ins = node
        if not isinstance(op, Linear) or ins[0] == g.net.input_name:
            continue
        prev = g.nodes[g.index(ins[0])]
        if not isinstance(prev[1], Linear) or g.sole_consumer(prev[0]) is not node:
            continue
        W1, W2 = prev[1].weight.detach().to(_F64), op.weight.detach().to(_F64)
        if W2.shape[0] * W1.shape[1] > W1.numel() + W2.numel():
            continue
        b1 = torch.zeros(W1.shape[0], dtype=_F64) if prev[1].bias is None else prev[1].bias.detach().to(_F64)
        b2 = torch.zeros(W2.shape[0], dtype=_F64) if op.bias is None else op.bias.detach().to(_F64)
        node[1] = Linear(_cast(W2 @ W1, op.weight), _cast(W2 @ b1 + b2, op.weight))
        node[2] = prev[2]
        g.remove(prev[0])
        return True
    return False


def _drop_dead(g: _Graph) -> bool:
    live, todo = set(), [g.output]
    by_name = {n[0]: n for n in g.nodes}
    while todo:
        name = todo.pop()
        if name in live or name not in by_name:
            continue
        live.add(name)
        todo.extend(by_name[name][2])
    before = len(g.nodes)
    g.nodes = [n for n in g.nodes if n[0] in live]
    return len(g.nodes) != before


REWRITES = (_drop_dead, _drop_identities, _fold_backward, _fold_forward, _merge_linear)


def simplify(net: Network) -> Network:
    """An equivalent network with Identity dropped and affine ops folded (see module doc)."""
    g = _Graph(net)
    while any(rw(g) for rw in REWRITES):
        pass
    return g.network()


__all__ = ["simplify", "ELEMENTWISE", "REWRITES"]
