"""Turn a feed-forward ReLU ``Network`` into affine maps between ReLU layers (float64, sparse).

Variables: ``z_0`` is the flattened input (``n_0`` entries); ``z_k`` (k >= 1) is the flattened
output of the k-th ReLU node in topological order. Every node's value is an ``Affine``
expression ``sum_j T_j @ z_j + c`` of earlier variables (``T_j`` scipy.sparse CSR,
(rows, n_j)), so skip connections (``Add`` of values from different layers) are exact.

One rule per affine op in ``RULES`` (dict keyed by op class); ``ReLU`` starts a new variable;
any other op (MaxPool2d, Sigmoid, Tanh, ...) raises ``CertifyError`` naming the op and node.
All maps are exact in float64 arithmetic of the network's weights (Conv2d and AvgPool2d are
built by pushing unit vectors through the op in float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from certify.errors import CertifyError
from certify.ir import (Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, Flatten, Identity,
                        Linear, Network, Normalize, ReLU, Reshape, Sub)
from certify.ir import ConvTranspose2d, Gather, LinearMap, Pad, ReduceMean, ReduceSum, Slice, Transpose


@dataclass
class Affine:
    """``sum_j terms[j] @ z_j + const``: terms maps variable index -> CSR (rows, n_j)."""

    terms: dict[int, sp.csr_matrix]
    const: np.ndarray

    @property
    def rows(self) -> int:
        return self.const.shape[0]

    def left(self, M) -> "Affine":
        """``M @ self`` for a (m, rows) matrix M (sparse or dense)."""
        M = sp.csr_matrix(M)
        return Affine({j: sp.csr_matrix(M @ T) for j, T in self.terms.items()}, np.asarray(M @ self.const).ravel())

    def shift(self, c: np.ndarray) -> "Affine":
        return Affine(dict(self.terms), self.const + c)

    def plus(self, other: "Affine", sign: float = 1.0) -> "Affine":
        terms = dict(self.terms)
        for j, T in other.terms.items():
            terms[j] = sp.csr_matrix(terms[j] + sign * T) if j in terms else sp.csr_matrix(sign * T)
        return Affine(terms, self.const + sign * other.const)

    def full(self, offsets: list[int], ncols: int) -> sp.csr_matrix:
        """The expression's matrix over the stacked variables [z_0, z_1, ...] (rows, ncols)."""
        out = sp.csr_matrix((self.rows, ncols))
        for j, T in self.terms.items():
            pad = sp.hstack([sp.csr_matrix((self.rows, offsets[j])), T,
                             sp.csr_matrix((self.rows, ncols - offsets[j] - T.shape[1]))])
            out = out + pad
        return sp.csr_matrix(out)


@dataclass
class ReluLayer:
    """z_k = relu(pre) with ``pre`` an Affine of earlier variables. ``node``: the ReLU node's
    name; ``pre_node``: the name of its input node (the key of its pre-activation bounds)."""

    node: str
    pre_node: str
    pre: Affine
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.pre.rows


@dataclass
class PiecewiseLinear:
    """A ReLU network as ``layers`` (ReLU layers in order) and the ``output`` Affine."""

    input_shape: tuple[int, ...]
    layers: list[ReluLayer]
    output: Affine

    @property
    def sizes(self) -> list[int]:
        """[n_0, n_1, ...]: sizes of the variables z_0 (input), z_1, ..."""
        return [int(math.prod(self.input_shape))] + [l.size for l in self.layers]

    @property
    def offsets(self) -> list[int]:
        return [0] + list(np.cumsum(self.sizes)[:-1].tolist())

    @property
    def num_vars(self) -> int:
        return int(sum(self.sizes))

    def is_chain(self) -> bool:
        """True when every layer (and the output) depends on the previous variable only (an MLP)."""
        exprs = [l.pre for l in self.layers] + [self.output]
        return all(set(e.terms) <= {k} for k, e in enumerate(exprs))


def _t(v: torch.Tensor) -> np.ndarray:
    return v.detach().to(torch.float64).cpu().numpy()


def _push_units(fn, in_shape, chunk: int = 512) -> sp.csr_matrix:
    """The matrix of a linear map ``fn`` ((m, *in_shape) -> (m, *out)) by pushing unit vectors."""
    n = int(math.prod(in_shape))
    cols = []
    with torch.no_grad():
        for s in range(0, n, chunk):
            e = torch.zeros((min(chunk, n - s), n), dtype=torch.float64, device="cpu")
            e[torch.arange(e.shape[0], device="cpu"), torch.arange(s, s + e.shape[0], device="cpu")] = 1.0
            out = fn(e.reshape((-1,) + tuple(in_shape))).reshape(e.shape[0], -1)
            cols.append(sp.csr_matrix(out.numpy()))
    return sp.csr_matrix(sp.vstack(cols).T)


def _channel(v: np.ndarray, shape) -> np.ndarray:
    """Per-channel vector (C,) broadcast onto a flattened per-sample shape."""
    return np.broadcast_to(v.reshape((-1,) + (1,) * (len(shape) - 1)), shape).ravel()


def _linear(op, ins, in_shapes, shape):
    out = ins[0].left(_t(op.weight))
    return out if op.bias is None else out.shift(_t(op.bias))


def _conv(op, ins, in_shapes, shape):
    w = op.weight.detach().to(torch.float64)
    M = _push_units(lambda e: torch.nn.functional.conv2d(e, w, None, op.stride, op.padding, op.dilation, op.groups),
                    in_shapes[0])
    out = ins[0].left(M)
    return out if op.bias is None else out.shift(_channel(_t(op.bias), shape))


def _avgpool(op, ins, in_shapes, shape):
    M = _push_units(lambda e: torch.nn.functional.avg_pool2d(e, op.kernel, op.stride, op.padding,
                                                             count_include_pad=op.count_include_pad), in_shapes[0])
    return ins[0].left(M)


def _scale_shift(op, ins, in_shapes, shape):
    scale, shift = (_t(v) for v in op.scale_shift())
    return ins[0].left(sp.diags(_channel(scale, shape))).shift(_channel(shift, shape))


def _const_add(op, ins, in_shapes, shape):
    return ins[0].shift(np.broadcast_to(_t(op.const), shape).ravel().copy())


def _const_mul(op, ins, in_shapes, shape):
    return ins[0].left(sp.diags(np.broadcast_to(_t(op.const), shape).ravel().copy()))


def _concat(op, ins, in_shapes, shape):
    # Row r of the output takes row perm[r] of the stacked inputs (row-major order).
    offs = np.cumsum([0] + [int(math.prod(s)) for s in in_shapes])
    idx = [torch.arange(int(math.prod(s)), device="cpu").reshape(s) + int(o) for s, o in zip(in_shapes, offs)]
    perm = torch.cat(idx, dim=op.axis).flatten().numpy()
    stacked = ins[0]
    for a in ins[1:]:
        stacked = _vstack(stacked, a)
    P = sp.csr_matrix((np.ones(len(perm)), (np.arange(len(perm)), perm)), shape=(len(perm), len(perm)))
    return stacked.left(P)


def _vstack(a: Affine, b: Affine) -> Affine:
    terms = {}
    for j in set(a.terms) | set(b.terms):
        n = (a.terms.get(j) if j in a.terms else b.terms[j]).shape[1]
        ta = a.terms.get(j, sp.csr_matrix((a.rows, n)))
        tb = b.terms.get(j, sp.csr_matrix((b.rows, n)))
        terms[j] = sp.csr_matrix(sp.vstack([ta, tb]))
    return Affine(terms, np.concatenate([a.const, b.const]))


def _linear_map(op: LinearMap, ins, in_shapes, shape):
    """``y = L(x) + forward(0)``: L by pushing unit vectors through the op's forward (float64)."""
    op64 = op.map_tensors(lambda t: t.detach().to(device="cpu", dtype=torch.float64))
    with torch.no_grad():
        c = op64.forward(torch.zeros((1,) + tuple(in_shapes[0]), dtype=torch.float64, device="cpu"))
    out = ins[0].left(_push_units(lambda e: op64.forward(e) - c, in_shapes[0]))
    return out.shift(c.reshape(-1).numpy()) if op.has_offset else out


RULES = {
    Linear: _linear,
    Conv2d: _conv,
    AvgPool2d: _avgpool,
    BatchNorm: _scale_shift,
    Normalize: _scale_shift,
    ConstAdd: _const_add,
    ConstMul: _const_mul,
    Add: lambda op, ins, s, shape: ins[0].plus(ins[1]),
    Sub: lambda op, ins, s, shape: ins[0].plus(ins[1], -1.0),
    Concat: _concat,
    Flatten: lambda op, ins, s, shape: ins[0],
    Reshape: lambda op, ins, s, shape: ins[0],
    Identity: lambda op, ins, s, shape: ins[0],
    # data movement and reductions
    Slice: _linear_map, Gather: _linear_map, Transpose: _linear_map, Pad: _linear_map, ReduceSum: _linear_map,
    ReduceMean: _linear_map, ConvTranspose2d: _linear_map,
}


def linearize(net: Network) -> PiecewiseLinear:
    """``net`` as a ``PiecewiseLinear`` (see module doc). Raises CertifyError on an op that is
    neither affine nor ReLU, naming the node, the op and the network."""
    n0 = int(math.prod(net.input_shape))
    vals: dict[str, Affine] = {net.input_name: Affine({0: sp.identity(n0, format="csr")}, np.zeros(n0))}
    layers: list[ReluLayer] = []
    for node in net.nodes:
        ins = [vals[i] for i in node.inputs]
        if isinstance(node.op, ReLU):
            k = len(layers) + 1
            layers.append(ReluLayer(node.name, node.inputs[0], ins[0], tuple(node.shape)))
            n = ins[0].rows
            vals[node.name] = Affine({k: sp.identity(n, format="csr")}, np.zeros(n))
            continue
        rule = RULES.get(type(node.op))
        if rule is None:
            raise CertifyError(f"convex certificates support affine ops and ReLU only: node {node.name!r} of "
                               f"{net.name!r} is {node.op.kind} (use the bounds engine for it)")
        vals[node.name] = rule(node.op, ins, [net.shape_of(i) for i in node.inputs], tuple(node.shape))
    return PiecewiseLinear(tuple(net.input_shape), layers, vals[net.output])
