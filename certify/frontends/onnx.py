"""ONNX front end: ``load(path) -> Network`` (``.onnx`` or gzip-compressed ``.onnx.gz``).

Batch dimension
---------------
The IR's input shape is the ONNX input shape without its batch dimension: a leading dim
that is 1 or symbolic (``"batch"``, ``"N"``, 0) is dropped when the input has rank >= 2
(ACAS Xu ``[1,1,1,5]`` -> ``(1,1,5)``; mnistfc ``[1,784,1]`` -> ``(784,1)``; ``[N,3,32,32]``
-> ``(3,32,32)``). A rank-1 input (``[1]`` in the VNN-COMP toy nets) is one sample: IR shape
``(1,)``. Symbolic dims are taken as 1, i.e. the graph is read as the computation for one
sample, and the IR network applies that computation to each sample of a batch.

Every intermediate tensor is kept as an exact row-major copy: a tensor of ONNX shape
``(1, *s)`` is the IR per-sample shape ``s``; any other shape ``t`` is ``t`` itself. Pure
reshapes (Reshape, Flatten, Squeeze, Unsqueeze, and Transposes that keep the order of the
non-unit axes) become IR ``Reshape`` nodes; MatMul/Gemm with a constant operand becomes
``Linear`` (with exact block-diagonal weights when it acts on a non-flat tensor). A zero
``Pad`` (symmetric in H and W) is merged into the ``Conv``/``AveragePool`` that reads it
(any other constant ``Pad`` is a ``Pad`` node); ``Clip(min=0)`` without a max is ``Relu``;
``Sum`` of two tensors is ``Add``. Data movement: ``Slice`` (one IR ``Slice`` per axis),
``Split`` (one ``Slice`` per output), ``Gather`` with constant indices, data-moving
``Transpose``, ``ConvTranspose``, ``ReduceSum``/``ReduceMean``; ops that only copy elements
(nearest ``Resize``/``Upsample``, ``Expand``, ``Tile``, ``DepthToSpace``, ``SpaceToDepth``, and
the broadcasting of a network tensor by ``Add``/``Mul``/...) are evaluated once on the tensor of
element numbers and become one flat ``Gather`` (an integer nearest upsampling: a depthwise
``ConvTranspose`` with a ones kernel, ``GraphBuilder.element_map``); ``Concat`` with constants is padding plus a
constant. The supported op types are the keys of ``RULES``.

Constants
---------
Initializers and ``Constant`` nodes are constants; any node whose inputs are all constant
(e.g. the ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chain torch exports for
``x.view(x.size(0), -1)``) is evaluated at load time with ``onnx.reference``; ``Shape`` of a
network tensor is its (batch-1) shape.

Products of two network tensors are ``Mul`` (broadcast) and ``MatMul`` (both operands with at
least two per-sample dims and the same leading dims); ``a / b`` by a network tensor is
``a * Reciprocal(b)`` (``c / b`` for a constant c: ``Reciprocal`` then ``ConstMul``); ``Pow``
takes a constant scalar exponent, ``Sqrt`` is ``Pow 0.5``; ``Softmax`` follows the opset's
semantics (before opset 13, over the trailing dims flattened from ``axis``).

Anything else -- an op the IR cannot express (Slice or Gather of a network tensor, ...),
an unsupported attribute (asymmetric pads, ``auto_pad=SAME_*``, ``ceil_mode=1``, dilated
pooling), a network tensor as an exponent -- raises ``CertifyError`` at load time naming
the file, the node and its op type.
``x.view(x.size(0), -1)``) is evaluated at load time with ``onnx.reference`` at the model's
opset; ``Shape`` of a network tensor is its (batch-1) shape. Of several graph inputs, the one
whose value reaches the output is the network input; the others may be read by ``Shape`` /
``Size`` only (their declared shapes are constants). Two inputs that reach the output, or
several graph outputs, are an error naming them.

Anything else -- an op the IR cannot express (Softmax, Gather with network-tensor indices,
...), an unsupported attribute (asymmetric conv pads, ``auto_pad=SAME_*``, ``ceil_mode=1``,
dilated pooling), a product of two network tensors -- raises ``CertifyError`` at load time
naming the file, the node and its op type.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from certify.errors import CertifyError
from certify.frontends import GraphBuilder
from certify.ir import Network
from certify.ir.ops import (Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, IRError,
                            MaxPool2d, ReLU, Sigmoid, Sub, Tanh)
from certify.ir.ops import (Cos, Exp, Floor, LeakyReLU, Log, MatMul, Mul, Pow, Reciprocal, Sign, Sin,
                            Softmax)
from certify.ir.ops import ConvTranspose2d, Gather, Pad, ReduceMean, ReduceSum, Slice, Transpose


class Dyn(NamedTuple):
    """A network tensor: the IR node computing it and its full (batch-1) ONNX shape."""

    name: str
    full: tuple[int, ...]


class ShapeOnly(NamedTuple):
    """A graph input besides the network input: only its declared shape may be read."""

    name: str
    info: onnx.ValueInfoProto


class Padded(NamedTuple):
    """A zero ``Pad`` of a network tensor (symmetric, spatial), merged into the Conv or
    AveragePool that reads it; for any other consumer it becomes a ``Pad`` node."""

    src: Dyn
    pads: tuple[int, int]


def ir_shape(full: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample IR shape of an ONNX tensor of shape ``full`` (leading 1 dropped at rank >= 2)."""
    return tuple(full[1:]) if len(full) >= 2 and full[0] == 1 else tuple(full)


def load(path: str | Path) -> Network:
    """Read an ONNX model (``.onnx`` or ``.onnx.gz``) into a ``Network`` named after the file.

    Raises ``CertifyError`` for a missing or unreadable file and for anything the IR cannot
    represent (naming the node, its op type and the file).
    """
    p = Path(path)
    if not p.is_file():
        raise CertifyError(f"ONNX file not found: {path}")
    try:
        data = p.read_bytes()
        if p.name.endswith(".gz"):
            data = gzip.decompress(data)
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf/gzip errors have no common base class
        raise CertifyError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node and not model.graph.input:
        raise CertifyError(f"{path}: not an ONNX model ({'an empty file' if not data else 'no graph in it'})")
    return from_model(model, name=p.name)


def from_model(model: onnx.ModelProto, name: str = "onnx") -> Network:
    """Convert an in-memory ``onnx.ModelProto``; ``name`` labels the network and errors."""
    return _Converter(model, name).run()


def evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """Outputs of one node on constant inputs, by the ONNX reference runtime at ``opset``."""
    from onnx.reference import ReferenceEvaluator
    info = lambda n: helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)  # noqa: E731
    graph = helper.make_graph([node], "fold", [info(i) for i in feeds], [info(o) for o in node.output if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Converter:
    def __init__(self, model: onnx.ModelProto, name: str):
        self.model, self.name = model, name
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.values: dict[str, Dyn | np.ndarray] = {}
        for init in self.graph.initializer:
            self.values[init.name] = numpy_helper.to_array(init)
        used = [i for n in self.graph.node for i in n.input] + [o.name for o in self.graph.output]
        self.used = set(used)

    # ------------------------------------------------------------------ helpers
    def err(self, msg: str) -> CertifyError:
        return CertifyError(f"{self.name}: {msg}")

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float64, order="C")).to(self.dtype)

    def run(self) -> Network:
        inits = set(self.values)
        inputs = [i for i in self.graph.input if i.name not in inits]
        if len(self.graph.output) != 1:
            raise self.err(f"expected exactly one graph output, found {len(self.graph.output)} "
                           f"({', '.join(o.name for o in self.graph.output) or 'none'})")
        inp = self.network_input(inputs)
        for other in inputs:
            if other is not inp:      # its value never reaches the output: only its declared shape may
                self.values[other.name] = ShapeOnly(other.name, other)
        tt = inp.type.tensor_type
        if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise self.err(f"input {inp.name!r} has element type "
                           f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; only floating point inputs are supported")
        self.dtype = torch.float64 if tt.elem_type == onnx.TensorProto.DOUBLE else torch.float32
        full = self.declared_shape(inp)
        self.b = GraphBuilder(ir_shape(full), inp.name, self.name)
        self.values[inp.name] = Dyn(inp.name, full)

        for node in self.graph.node:
            self.convert(node)

        out = self.values.get(self.graph.output[0].name)
        if isinstance(out, Padded):
            out = self.materialize(out)
        if not isinstance(out, Dyn):
            raise self.err(f"graph output {self.graph.output[0].name!r} does not depend on the input")
        return self.b.network(out.name, self.name)

    def declared_shape(self, inp) -> tuple[int, ...]:
        """The declared shape of graph input ``inp`` (a symbolic first dimension read as 1)."""
        full = []
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                full.append(int(d.dim_value))
            elif k == 0:
                full.append(1)  # symbolic batch dimension: read the graph for one sample
            else:
                raise self.err(f"input {inp.name!r} has a symbolic dimension {d.dim_param!r} at axis {k}; "
                               "only the batch (first) dimension may be symbolic")
        if not full:
            raise self.err(f"input {inp.name!r} is a scalar or has no declared shape")
        return tuple(full)

    def network_input(self, inputs):
        """The one graph input whose value reaches the output (others may be read by ``Shape`` only)."""
        if not inputs:
            raise self.err("expected exactly one network input, found 0 (none)")
        if len(inputs) == 1:
            return inputs[0]
        feeds: dict[str, set[str]] = {i.name: {i.name} for i in inputs}   # value -> inputs its value depends on
        for node in self.graph.node:
            dep = set() if node.op_type in SHAPE_ONLY else set().union(*(feeds.get(i, set()) for i in node.input))
            for o in node.output:
                feeds[o] = dep
        real = [i for i in inputs if i.name in feeds.get(self.graph.output[0].name, set())]
        if len(real) != 1:
            names = real if real else inputs
            raise self.err(f"expected exactly one network input, found {len(names)} "
                           f"({', '.join(i.name for i in names)})")
        return real[0]

    def convert(self, node: onnx.NodeProto) -> None:
        origin = f"node {node.name or node.output[0]!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise self.err(f"{origin}: custom op domain {node.domain!r} is not supported")
        ins = []
        for i in node.input:
            if i == "":
                ins.append(None)
            elif i not in self.values:
                raise self.err(f"{origin}: input {i!r} is not defined before the node")
            else:
                v = self.values[i]
                if isinstance(v, Padded) and node.op_type not in ("Conv", "AveragePool"):
                    v = self.values[i] = self.materialize(v)
                if isinstance(v, ShapeOnly) and node.op_type not in SHAPE_ONLY:
                    raise self.err(f"{origin}: reads the value of graph input {v.name!r}; a second network input "
                                   "is not supported (only its shape may be used)")
                ins.append(v)
        dyn = [v for v in ins if isinstance(v, (Dyn, Padded))]
        if not dyn and node.op_type not in SHAPE_ONLY:
            outs = self.fold(node, ins, origin)
        else:
            rule = RULES.get(node.op_type)
            if rule is None:
                raise self.err(f"{origin}: op type {node.op_type} is not supported on network tensors "
                               f"(supported: {', '.join(sorted(RULES))})")
            multi = node.op_type in MULTI_OUTPUT
            for extra in node.output[1:]:
                if extra and extra in self.used and not multi:
                    raise self.err(f"{origin}: its extra output {extra!r} is used; only the first output is supported")
            try:
                out = rule(self, node, _attrs(node), ins, origin)
                outs = out if multi else [out]
            except IRError as e:
                msg = str(e)
                raise (e if msg.startswith(self.name) else self.err(f"{origin}: {msg}")) from None
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
                raise self.err(f"{origin}: malformed or unsupported node ({type(e).__name__}: {e})") from None
        for name, v in zip(node.output, outs):
            if name:
                self.values[name] = v

    def fold(self, node, ins, origin) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all constants with the ONNX reference runtime (at
        the model's opset: attributes and inputs of older op versions differ)."""
        try:
            return evaluate(node, {i: v for i, v in zip(node.input, ins) if i}, self.opset)
        except Exception as e:
            raise self.err(f"{origin}: cannot evaluate this constant node ({type(e).__name__}: {e})") from None

    def materialize(self, p: "Padded") -> Dyn:
        """A ``Padded`` value as a ``Pad`` node (for a consumer that cannot merge it)."""
        ph, pw = p.pads
        name = self.b.add(Pad(((0, 0), (ph, ph), (pw, pw))), [p.src.name], p.src.name + "/pad", "Pad")
        c, h, w = self.b.shapes[name]
        return Dyn(name, (1, c, h, w))

    def broadcast(self, ins: list, node, origin: str) -> list:
        """The operands of an elementwise op with every network tensor broadcast (ONNX rules) to
        the common shape (copies of its elements: a flat ``Gather``); constants unchanged."""
        shapes = [v.full if isinstance(v, Dyn) else np.asarray(v).shape for v in ins]
        try:
            out = tuple(int(d) for d in np.broadcast_shapes(*shapes))
        except ValueError:
            raise self.err(f"{origin}: operands of shapes {', '.join(map(str, shapes))} do not broadcast") from None
        res = []
        for v in ins:
            if isinstance(v, Dyn) and v.full != out:
                n = math.prod(v.full)
                src = np.broadcast_to(np.arange(n).reshape(v.full), out)
                flat = self.b.reshape(v.name, (n,), v.name + "/flat", origin)
                name = self.emit(Gather(0, src.reshape(-1).tolist(), out), [flat], node, origin, "/broadcast")
                v = self.from_full(name, node, origin)
            res.append(v)
        return res

    def full_view(self, x: Dyn, node, origin: str) -> str:
        """IR node holding ``x`` with per-sample shape ``x.full`` (the leading unit axis kept), so
        that ONNX axes index it directly."""
        return self.b.reshape(x.name, x.full, (node.output[0] or node.name) + "/full", origin)

    def from_full(self, name: str, node, origin: str) -> Dyn:
        """The IR node ``name``, whose per-sample shape is an ONNX shape, as a network tensor."""
        full = self.b.shapes[name]
        return Dyn(self.b.reshape(name, ir_shape(full), node.output[0] or node.name, origin), full)

    def emit(self, op, ins: list[str], node, origin: str, hint_suffix: str = "") -> str:
        return self.b.add(op, ins, (node.output[0] or node.name) + hint_suffix, origin)

    def as_dyn(self, name: str, full: tuple[int, ...], node, origin: str) -> Dyn:
        """Check that IR node ``name`` has the per-sample shape of ONNX shape ``full``."""
        if self.b.shapes[name] != ir_shape(full):
            raise self.err(f"{origin}: internal shape mismatch {self.b.shapes[name]} vs ONNX {full}")
        return Dyn(name, tuple(int(d) for d in full))

    def reshaped(self, x: Dyn, full: tuple[int, ...], node, origin: str) -> Dyn:
        full = tuple(int(d) for d in full)
        if math.prod(full) != math.prod(x.full):
            raise self.err(f"{origin}: cannot reshape {x.full} to {full}")
        name = self.b.reshape(x.name, ir_shape(full), node.output[0], origin)
        return Dyn(name, full)

    def per_sample_const(self, x: Dyn, c: np.ndarray, origin: str) -> torch.Tensor:
        """Constant ``c`` (ONNX broadcasting against ``x.full``) as an IR per-sample constant."""
        try:
            out = np.broadcast_shapes(x.full, c.shape)
        except ValueError:
            raise self.err(f"{origin}: constant of shape {c.shape} does not broadcast with {x.full}") from None
        if tuple(out) != x.full:
            raise self.err(f"{origin}: constant of shape {c.shape} would enlarge the tensor {x.full} to {out}; "
                           "broadcasting a network tensor is not supported")
        c = c.reshape((1,) * (len(x.full) - c.ndim) + c.shape)
        if len(ir_shape(x.full)) < len(x.full):
            c = c[0]
        while c.ndim > 0 and c.shape[0] == 1:
            c = c[0]
        return self.tensor(c)


# ----------------------------------------------------------------------------- rules
def _unary(op_cls):
    def rule(cv: _Converter, node, at, ins, origin):
        (x,) = [v for v in ins if v is not None][:1]
        return Dyn(cv.emit(op_cls(), [x.name], node, origin), x.full)
    return rule


def _identity(cv, node, at, ins, origin):
    x = ins[0]
    if not isinstance(x, Dyn):
        raise cv.err(f"{origin}: expected a network tensor as first input")
    if node.op_type == "Cast" and at.get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                        onnx.TensorProto.FLOAT16):
        raise cv.err(f"{origin}: cast of a network tensor to a non-float type is not supported")
    if node.op_type == "Dropout" and len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2])):
        raise cv.err(f"{origin}: training_mode=True dropout is random; export the model in eval mode")
    return x


def _neg(cv, node, at, ins, origin):
    x = ins[0]
    return Dyn(cv.emit(ConstMul(cv.tensor(np.array(-1.0))), [x.name], node, origin), x.full)


def _binary(cv: _Converter, node, at, ins, origin):
    a, c = cv.broadcast(ins[:2], node, origin)
    kind = node.op_type
    if isinstance(a, Dyn) and isinstance(c, Dyn):
        if kind in ("Mul", "Div"):
            return _product(cv, node, a, c, kind, origin)
        if a.full != c.full:
            raise cv.err(f"{origin}: operands of shapes {a.full} and {c.full} differ; broadcasting two network "
                         "tensors is not supported")
        if kind == "Add":
            return Dyn(cv.emit(Add(), [a.name, c.name], node, origin), a.full)
        if kind == "Sub":
            return Dyn(cv.emit(Sub(), [a.name, c.name], node, origin), a.full)
        raise cv.err(f"{origin}: {kind} of two network tensors is not supported (not piecewise linear)")
    x, const, x_first = (a, np.asarray(c), True) if isinstance(a, Dyn) else (c, np.asarray(a), False)
    k = cv.per_sample_const(x, const, origin)
    if kind == "Add":
        op = ConstAdd(k)
    elif kind == "Mul":
        op = ConstMul(k)
    elif kind == "Sub" and x_first:
        op = ConstAdd(-k)
    elif kind == "Sub":
        neg = cv.emit(ConstMul(cv.tensor(np.array(-1.0))), [x.name], node, origin, "/neg")
        return Dyn(cv.emit(ConstAdd(k), [neg], node, origin), x.full)
    elif kind == "Div" and x_first:
        if bool((k == 0).any()):
            raise cv.err(f"{origin}: division by a constant with a zero entry")
        op = ConstMul(1.0 / k)
    else:                           # constant / network tensor = constant * reciprocal
        rec = cv.emit(Reciprocal(), [x.name], node, origin, "/reciprocal")
        return Dyn(cv.emit(ConstMul(k), [rec], node, origin), x.full)
    return Dyn(cv.emit(op, [x.name], node, origin), x.full)


def _affine(cv: _Converter, x: Dyn, A: torch.Tensor, bias: np.ndarray | None, out: tuple, node, origin) -> Dyn:
    """The affine node ``A @ x + bias`` on the flattened tensors, ``bias`` broadcast to ``out``."""
    b = None
    if bias is not None:
        try:
            b = cv.tensor(np.broadcast_to(bias, out).reshape(-1))
        except ValueError:
            raise cv.err(f"{origin}: bias of shape {bias.shape} does not broadcast to {out}") from None
    return Dyn(cv.b.affine(x.name, A, b, ir_shape(out), node.output[0], origin), out)


def _right(cv: _Converter, x: Dyn, W: np.ndarray, bias: np.ndarray | None, node, origin) -> Dyn:
    """x @ W (+ bias) with W of shape (n, k) acting on the last axis of x."""
    full = x.full
    n, k = W.shape
    if full[-1] != n:
        raise cv.err(f"{origin}: cannot multiply a tensor of shape {full} by a ({n}, {k}) matrix")
    out = full[:-1] + (k,)
    M = math.prod(full[:-1])
    Wt = cv.tensor(W.T)
    A = Wt if M == 1 else torch.kron(torch.eye(M, dtype=Wt.dtype), Wt)
    return _affine(cv, x, A, bias, out, node, origin)


def _left(cv: _Converter, W: np.ndarray, x: Dyn, bias: np.ndarray | None, node, origin) -> Dyn:
    """W @ x (+ bias) with W of shape (k, n) acting on the second-to-last axis of x (or a vector x)."""
    full = x.full
    k, n = W.shape
    Wt = cv.tensor(W)
    if len(full) == 1:
        if full[0] != n:
            raise cv.err(f"{origin}: cannot multiply a ({k}, {n}) matrix by a tensor of shape {full}")
        A, out = Wt, (k,)
    else:
        if full[-2] != n:
            raise cv.err(f"{origin}: cannot multiply a ({k}, {n}) matrix by a tensor of shape {full}")
        m, M = full[-1], math.prod(full[:-2])
        out = full[:-2] + (k, m)
        A = torch.kron(Wt, torch.eye(m, dtype=Wt.dtype)) if m > 1 else Wt
        if M > 1:
            A = torch.kron(torch.eye(M, dtype=Wt.dtype), A)
    return _affine(cv, x, A, bias, out, node, origin)


def _matmul(cv: _Converter, node, at, ins, origin):
    a, c = ins
    if isinstance(a, Dyn) and isinstance(c, Dyn):
        return _matmul2(cv, node, a, c, origin)
    if isinstance(a, Dyn):
        W = np.asarray(c)
        if W.ndim == 1:
            y = _right(cv, a, W[:, None], None, node, origin)
            return cv.reshaped(y, y.full[:-1], node, origin) if len(a.full) > 1 else y
        if W.ndim != 2:
            raise cv.err(f"{origin}: batched MatMul with a {W.ndim}-D constant is not supported")
        return _right(cv, a, W, None, node, origin)
    W = np.asarray(a)
    if W.ndim == 1:
        y = _left(cv, W[None, :], c, None, node, origin)
        return cv.reshaped(y, y.full[:-2] + y.full[-1:], node, origin) if len(c.full) > 1 else y
    if W.ndim != 2:
        raise cv.err(f"{origin}: batched MatMul with a {W.ndim}-D constant is not supported")
    return _left(cv, W, c, None, node, origin)


def _gemm(cv: _Converter, node, at, ins, origin):
    A, B = ins[0], ins[1]
    C = ins[2] if len(ins) > 2 else None
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    ta, tb = int(at.get("transA", 0)), int(at.get("transB", 0))
    if isinstance(C, Dyn):
        raise cv.err(f"{origin}: a network tensor as Gemm's C input is not supported")
    bias = None if C is None else beta * np.asarray(C, dtype=np.float64)
    if isinstance(A, Dyn) and isinstance(B, Dyn):
        raise cv.err(f"{origin}: product of two network tensors is not supported (not piecewise linear)")
    if isinstance(A, Dyn):
        if ta or len(A.full) != 2:
            raise cv.err(f"{origin}: Gemm needs a 2-D, non-transposed network input, got shape {A.full} "
                         f"with transA={ta}")
        W = np.asarray(B, dtype=np.float64)
        W = alpha * (W.T if tb else W)
        return _right(cv, A, W, bias, node, origin)
    if tb or len(B.full) != 2:
        raise cv.err(f"{origin}: Gemm needs a 2-D, non-transposed network input, got shape {B.full} "
                     f"with transB={tb}")
    W = np.asarray(A, dtype=np.float64)
    W = alpha * (W.T if ta else W)
    return _left(cv, W, B, bias, node, origin)


def _pads2d(cv, at, origin) -> tuple[int, int]:
    auto = _str(at.get("auto_pad", "NOTSET"))
    pads = list(at.get("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto not in ("NOTSET", ""):
        raise cv.err(f"{origin}: auto_pad={auto} is not supported; export with explicit symmetric pads")
    if len(pads) != 4:
        raise cv.err(f"{origin}: expected 4 pads for a 2-D op, got {pads}")
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise cv.err(f"{origin}: asymmetric pads {pads} are not supported")
    return int(pads[0]), int(pads[1])


def _image(cv, x, origin) -> None:
    if not isinstance(x, Dyn) or len(x.full) != 4 or x.full[0] != 1:
        shape = x.full if isinstance(x, Dyn) else "a constant"
        raise cv.err(f"{origin}: expected a network tensor of shape (1, C, H, W), got {shape}")


def _conv_weights(cv: _Converter, x, W, B, at, origin) -> np.ndarray:
    """The 4-D weight of a (transposed) 2-D convolution of image ``x``, checked."""
    _image(cv, x, origin)
    if isinstance(W, Dyn) or isinstance(B, Dyn):
        raise cv.err(f"{origin}: convolution weights must be constants")
    W = np.asarray(W)
    if W.ndim != 4:
        raise cv.err(f"{origin}: only 2-D convolutions are supported (weight of shape {W.shape})")
    ks = list(at.get("kernel_shape", W.shape[2:]))
    if tuple(ks) != tuple(W.shape[2:]):
        raise cv.err(f"{origin}: kernel_shape {ks} does not match weight shape {W.shape}")
    return W


def _conv(cv: _Converter, node, at, ins, origin):
    x, W = ins[0], ins[1]
    B = ins[2] if len(ins) > 2 else None
    extra = (0, 0)
    if isinstance(x, Padded):
        x, extra = x.src, x.pads
    W = _conv_weights(cv, x, W, B, at, origin)
    own = _pads2d(cv, at, origin)
    op = Conv2d(cv.tensor(W), None if B is None else cv.tensor(B), stride=tuple(at.get("strides", [1, 1])),
                padding=(own[0] + extra[0], own[1] + extra[1]), dilation=tuple(at.get("dilations", [1, 1])),
                groups=int(at.get("group", 1)))
    name = cv.emit(op, [x.name], node, origin)
    return cv.as_dyn(name, (1,) + cv.b.shapes[name], node, origin)


def _batchnorm(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    if len(x.full) < 2 or x.full[0] != 1:
        raise cv.err(f"{origin}: expected a network tensor of shape (1, C, ...), got {x.full}")
    if not int(at.get("spatial", 1)):
        raise cv.err(f"{origin}: spatial=0 (per-activation statistics) is not supported")
    if int(at.get("training_mode", 0)):
        raise cv.err(f"{origin}: training_mode=1 uses batch statistics; export in eval mode")
    if any(isinstance(v, Dyn) for v in ins[1:]):
        raise cv.err(f"{origin}: batch-norm parameters must be constants")
    scale, bias, mean, var = (cv.tensor(v) for v in ins[1:5])
    op = BatchNorm(mean, var, scale, bias, float(at.get("epsilon", 1e-5)))
    return Dyn(cv.emit(op, [x.name], node, origin), x.full)


def _pool(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    extra = (0, 0)
    if isinstance(x, Padded):
        x, extra = x.src, x.pads
    _image(cv, x, origin)
    if int(at.get("ceil_mode", 0)):
        raise cv.err(f"{origin}: ceil_mode=1 is not supported")
    if any(d != 1 for d in at.get("dilations", [1, 1])):
        raise cv.err(f"{origin}: dilated pooling is not supported")
    kernel = tuple(at["kernel_shape"])
    if len(kernel) != 2:
        raise cv.err(f"{origin}: only 2-D pooling is supported (kernel_shape {list(kernel)})")
    stride = tuple(at.get("strides", [1, 1]))
    pad = _pads2d(cv, at, origin)
    include = bool(at.get("count_include_pad", 0))
    if any(extra):  # explicit zeros from a Pad are averaged like any other element
        if any(pad) and not include:
            raise cv.err(f"{origin}: a Pad before an AveragePool with its own pads and count_include_pad=0")
        pad, include = (pad[0] + extra[0], pad[1] + extra[1]), True
    if 2 * pad[0] > kernel[0] or 2 * pad[1] > kernel[1]:
        raise cv.err(f"{origin}: pads {list(pad)} larger than half the kernel {list(kernel)} are not supported")
    if node.op_type == "MaxPool":
        op = MaxPool2d(kernel, stride, pad)
    else:
        op = AvgPool2d(kernel, stride, pad, count_include_pad=include)
    name = cv.emit(op, [x.name], node, origin)
    return cv.as_dyn(name, (1,) + cv.b.shapes[name], node, origin)


def _global_avg(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    _image(cv, x, origin)
    name = cv.emit(AvgPool2d(x.full[2:], x.full[2:], (0, 0)), [x.name], node, origin)
    return cv.as_dyn(name, (1,) + cv.b.shapes[name], node, origin)


def _flatten(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    axis = int(at.get("axis", 1))
    axis = axis + len(x.full) if axis < 0 else axis
    return cv.reshaped(x, (math.prod(x.full[:axis]), math.prod(x.full[axis:])), node, origin)


def _reshape(cv: _Converter, node, at, ins, origin):
    x, shape = ins[0], ins[1]
    if isinstance(shape, Dyn):
        raise cv.err(f"{origin}: the target shape must be a constant")
    shape = [int(d) for d in np.asarray(shape).reshape(-1)]
    if not int(at.get("allowzero", 0)):
        shape = [x.full[k] if d == 0 and k < len(x.full) else d for k, d in enumerate(shape)]
    if shape.count(-1) > 1:
        raise cv.err(f"{origin}: more than one -1 in shape {shape}")
    if -1 in shape:
        rest = math.prod(d for d in shape if d != -1)
        if rest == 0 or math.prod(x.full) % rest:
            raise cv.err(f"{origin}: cannot reshape {x.full} to {shape}")
        shape[shape.index(-1)] = math.prod(x.full) // rest
    return cv.reshaped(x, tuple(shape), node, origin)


def _axes(cv, node, at, ins) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in np.asarray(ins[1]).reshape(-1)]
    return list(at["axes"]) if "axes" in at else None


def _squeeze(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    axes = _axes(cv, node, at, ins)
    r = len(x.full)
    if axes is None:
        axes = [k for k, d in enumerate(x.full) if d == 1]
    axes = {a + r if a < 0 else a for a in axes}
    if any(x.full[a] != 1 for a in axes):
        raise cv.err(f"{origin}: cannot squeeze axes {sorted(axes)} of shape {x.full}")
    return cv.reshaped(x, tuple(d for k, d in enumerate(x.full) if k not in axes), node, origin)


def _unsqueeze(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    axes = _axes(cv, node, at, ins)
    r = len(x.full) + len(axes)
    axes = sorted(a + r if a < 0 else a for a in axes)
    out = list(x.full)
    for a in axes:
        out.insert(a, 1)
    return cv.reshaped(x, tuple(out), node, origin)


def _concat(cv: _Converter, node, at, ins, origin):
    xs = [v for v in ins if v is not None]
    shapes = [v.full if isinstance(v, Dyn) else np.asarray(v).shape for v in xs]
    r = len(shapes[0])
    axis = int(at["axis"])
    axis = axis + r if axis < 0 else axis
    dyn = [v for v in xs if isinstance(v, Dyn)]
    if len(dyn) == len(xs):
        return _concat_dyn(cv, dyn, axis, node, origin)
    return _concat_const(cv, xs, shapes, axis, node, origin)


def _concat_dyn(cv: _Converter, xs: list, axis: int, node, origin) -> Dyn:
    full = list(xs[0].full)
    full[axis] = sum(v.full[axis] for v in xs)
    full = tuple(full)
    lead = all(len(ir_shape(v.full)) < len(v.full) for v in xs)
    ir_axis = axis - 1 if lead else axis
    if ir_axis < 0 or any(len(ir_shape(v.full)) != len(ir_shape(xs[0].full)) for v in xs):
        # concatenation along the leading axis == concatenation of the flattened tensors
        flat = [cv.b.reshape(v.name, (math.prod(v.full),), node.output[0] + "/flat", origin) for v in xs]
        name = cv.emit(Concat(0), flat, node, origin, "/cat")
        return cv.reshaped(Dyn(name, (math.prod(full),)), full, node, origin)
    name = cv.emit(Concat(ir_axis), [v.name for v in xs], node, origin)
    return cv.as_dyn(name, full, node, origin)


def _concat_const(cv: _Converter, xs: list, shapes: list, axis: int, node, origin) -> Dyn:
    """Network tensors and constants side by side: the network tensors concatenated, zeros put
    where the constants go (``Pad``, and a ``Gather`` when they alternate), the constants added."""
    dyn = [v for v in xs if isinstance(v, Dyn)]
    if any(len(s) != len(shapes[0]) or any(a != b for k, (a, b) in enumerate(zip(s, shapes[0])) if k != axis)
           for s in shapes):
        raise cv.err(f"{origin}: shapes {', '.join(map(str, shapes))} do not concatenate along axis {axis}")
    z = dyn[0] if len(dyn) == 1 else _concat_dyn(cv, dyn, axis, node, origin)
    src, const, used = [], [], 0               # per output position along the axis: source in z, or -1
    for v, s in zip(xs, shapes):
        n = s[axis]
        src += list(range(used, used + n)) if isinstance(v, Dyn) else [-1] * n
        const.append(np.zeros(s) if isinstance(v, Dyn) else np.asarray(v, dtype=np.float64))
        used += n if isinstance(v, Dyn) else 0
    const = np.concatenate(const, axis=axis)
    first = next(k for k, i in enumerate(src) if i >= 0)
    run = src[first:first + used] == list(range(used))
    pads = [[0, 0] for _ in shapes[0]]
    pads[axis] = [first, len(src) - first - used] if run else [0, 1]
    name = cv.emit(Pad(tuple(tuple(p) for p in pads)), [cv.full_view(z, node, origin)], node, origin, "/room")
    if not run:                                 # the zero slot (index ``used``) fills the constants' places
        name = cv.emit(Gather(axis, [i if i >= 0 else used for i in src]), [name], node, origin, "/place")
    y = cv.from_full(name, node, origin)
    k = cv.per_sample_const(y, const, origin)
    return Dyn(cv.emit(ConstAdd(k), [y.name], node, origin, "/const"), y.full)


def _clip(cv: _Converter, node, at, ins, origin):
    """Clip(x, 0, +inf) is ReLU; other bounds are not (yet) IR ops."""
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("min", None)
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else at.get("max", None)
    if isinstance(lo, Dyn) or isinstance(hi, Dyn):
        raise cv.err(f"{origin}: Clip bounds must be constants")
    lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
    hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
    if lo != 0.0 or (hi is not None and hi < 3.0e38):
        raise cv.err(f"{origin}: only Clip(min=0, no max) (= Relu) is supported, got min={lo}, max={hi}")
    return Dyn(cv.emit(ReLU(), [ins[0].name], node, origin), ins[0].full)


def _sum(cv: _Converter, node, at, ins, origin):
    if len(ins) == 1:
        return ins[0]
    if len(ins) != 2:
        raise cv.err(f"{origin}: Sum of {len(ins)} inputs is not supported (use Add)")
    return _add2(cv, node, at, ins, origin)


def _add2(cv: _Converter, node, at, ins, origin):
    a, c = cv.broadcast(ins, node, origin)
    if isinstance(a, Dyn) and isinstance(c, Dyn):
        if a.full != c.full:
            raise cv.err(f"{origin}: operands of shapes {a.full} and {c.full} differ")
        return Dyn(cv.emit(Add(), [a.name, c.name], node, origin), a.full)
    x, k = (a, c) if isinstance(a, Dyn) else (c, a)
    return Dyn(cv.emit(ConstAdd(cv.per_sample_const(x, np.asarray(k), origin)), [x.name], node, origin), x.full)


def _full(cv: _Converter, x) -> tuple[int, ...]:
    if isinstance(x, ShapeOnly):
        return cv.declared_shape(x.info)
    return x.full if isinstance(x, Dyn) else np.asarray(x).shape


def _shape(cv: _Converter, node, at, ins, origin):
    s = np.array(_full(cv, ins[0]), dtype=np.int64)
    start, end = int(at.get("start", 0)), at.get("end")
    return s[start:None if end is None else int(end)]


# ----------------------------------------------------------------------------- nonlinear rules
def _product(cv: _Converter, node, a: Dyn, c: Dyn, kind: str, origin) -> Dyn:
    """a * c or a / c (= a * reciprocal(c)) of two network tensors, broadcast."""
    try:
        full = tuple(np.broadcast_shapes(a.full, c.full))
    except ValueError:
        raise cv.err(f"{origin}: operands of shapes {a.full} and {c.full} do not broadcast") from None
    r = len(ir_shape(full))
    lhs, rhs = (cv.b.reshape(v.name, (1,) * (r - len(ir_shape(v.full))) + ir_shape(v.full), node.output[0] + "/rank",
                             origin) for v in (a, c))
    if kind == "Div":
        rhs = cv.emit(Reciprocal(), [rhs], node, origin, "/reciprocal")
    name = cv.emit(Mul(), [lhs, rhs], node, origin)
    if cv.b.shapes[name] != ir_shape(full):
        raise cv.err(f"{origin}: broadcasting {a.full} with {c.full} mixes the batch axis with a data axis")
    return Dyn(name, full)


def _matmul2(cv: _Converter, node, a: Dyn, c: Dyn, origin) -> Dyn:
    sa, sc = ir_shape(a.full), ir_shape(c.full)
    if len(sa) < 2 or len(sa) != len(sc) or sa[:-2] != sc[:-2]:
        raise cv.err(f"{origin}: MatMul of two network tensors of shapes {a.full} and {c.full} is supported only "
                     "for operands with at least two per-sample dims and the same leading dims")
    name = cv.emit(MatMul(), [a.name, c.name], node, origin)
    return cv.as_dyn(name, a.full[:-1] + c.full[-1:], node, origin)


def _leaky_relu(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    return Dyn(cv.emit(LeakyReLU(float(at.get("alpha", 0.01))), [x.name], node, origin), x.full)


def _scalar(cv: _Converter, v, what: str, origin) -> float:
    if isinstance(v, (Dyn, Padded)) or v is None:
        raise cv.err(f"{origin}: {what} must be a constant")
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(arr == arr[0]):
        raise cv.err(f"{origin}: {what} must be one scalar, got shape {np.asarray(v).shape}")
    return float(arr[0])


def _pow(cv: _Converter, node, at, ins, origin):
    x, p = ins[0], ins[1]
    if not isinstance(x, Dyn):
        raise cv.err(f"{origin}: a network tensor as the exponent of Pow is not supported")
    e = _scalar(cv, p, "the exponent", origin)
    return Dyn(cv.emit(Pow(e), [x.name], node, origin), x.full)


def _sqrt(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    return Dyn(cv.emit(Pow(0.5), [x.name], node, origin), x.full)


def _softmax(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    r = len(x.full)
    axis = int(at.get("axis", -1 if cv.opset >= 13 else 1))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis < r:
        raise cv.err(f"{origin}: axis {axis} out of range for shape {x.full}")
    if cv.opset < 13 and axis < r - 1:          # softmax over the trailing dims flattened from axis
        flat = cv.reshaped(x, x.full[:axis] + (math.prod(x.full[axis:]),), node, origin)
        return cv.reshaped(_softmax_at(cv, node, flat, axis, origin), x.full, node, origin)
    return _softmax_at(cv, node, x, axis, origin)


def _softmax_at(cv: _Converter, node, x: Dyn, axis: int, origin) -> Dyn:
    """Softmax along ONNX axis ``axis`` of ``x.full``."""
    ir_axis = axis - (len(x.full) - len(ir_shape(x.full)))
    if ir_axis < 0:
        raise cv.err(f"{origin}: Softmax over the batch axis is not supported")
    return Dyn(cv.emit(Softmax(ir_axis), [x.name], node, origin), x.full)
def _size(cv: _Converter, node, at, ins, origin):
    return np.array(math.prod(_full(cv, ins[0])), dtype=np.int64)


# ----------------------------------------------------------------------------- data movement and reductions
def _consts(cv: _Converter, origin: str, **named):
    """The named inputs/attributes as int lists (None stays None); a network tensor is an error."""
    out = []
    for what, v in named.items():
        if isinstance(v, (Dyn, Padded, ShapeOnly)):
            raise cv.err(f"{origin}: {what} must be a constant")
        out.append(None if v is None else [int(a) for a in np.asarray(v).reshape(-1)])
    return out


def _opt(ins, k):
    return ins[k] if len(ins) > k else None


def _slices(cv: _Converter, x: Dyn, ranges, node, origin) -> Dyn:
    """``x`` cut to ``ranges``: (ONNX axis, start, end, step) each, with ONNX's (= Python's)
    clamping of out-of-range starts and ends; one IR ``Slice`` per axis that changes."""
    name, full = cv.full_view(x, node, origin), list(x.full)
    for axis, start, end, step in ranges:
        ax = axis + len(full) if axis < 0 else axis
        if not 0 <= ax < len(full):
            raise cv.err(f"{origin}: axis {axis} out of range for shape {tuple(full)}")
        if step == 0:
            raise cv.err(f"{origin}: slice step 0")
        a, b, c = slice(start, end, step).indices(full[ax])
        n = len(range(a, b, c))
        if n == 0:
            raise cv.err(f"{origin}: empty slice [{start}:{end}:{step}] of axis {ax} (size {full[ax]})")
        if (a, n, c) != (0, full[ax], 1):
            name = cv.emit(Slice(ax, a, b, c), [name], node, origin, f"/axis{ax}")
            full[ax] = n
    return cv.from_full(name, node, origin)


def _slice(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    if len(ins) > 1:
        starts, ends, axes, steps = _consts(cv, origin, starts=ins[1], ends=ins[2], axes=_opt(ins, 3),
                                            steps=_opt(ins, 4))
    else:
        starts, ends, axes, steps = list(at["starts"]), list(at["ends"]), at.get("axes"), None
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise cv.err(f"{origin}: starts, ends, axes and steps differ in length")
    return _slices(cv, x, list(zip(axes, starts, ends, steps)), node, origin)


def _split(cv: _Converter, node, at, ins, origin):
    """One ``Slice`` per output."""
    x = ins[0]
    axis = int(at.get("axis", 0))
    ax = axis + len(x.full) if axis < 0 else axis
    n_out = len(node.output)
    (sizes,) = _consts(cv, origin, split=_opt(ins, 1))
    sizes = sizes if sizes is not None else at.get("split")
    if sizes is None:
        size = x.full[ax]
        k = -(-size // n_out)               # ONNX: equal parts, the last one smaller
        sizes = [min(k, size - j * k) for j in range(n_out)]
    sizes = [int(v) for v in sizes]
    if len(sizes) != n_out or sum(sizes) != x.full[ax] or min(sizes) <= 0:
        raise cv.err(f"{origin}: split sizes {sizes} do not divide axis {ax} of {x.full} into {n_out} parts")
    outs, at0 = [], 0
    for k, n in enumerate(sizes):
        sub = helper.make_node("Split", [], [node.output[k] or f"{node.name}_{k}"])
        outs.append(_slices(cv, x, [(ax, at0, at0 + n, 1)], sub, origin))
        at0 += n
    return outs


def _gather(cv: _Converter, node, at, ins, origin):
    x, idx = ins[0], ins[1]
    if not isinstance(x, Dyn) or isinstance(idx, (Dyn, Padded)):
        raise cv.err(f"{origin}: only a network tensor indexed by constant indices is supported")
    axis = int(at.get("axis", 0))
    ax = axis + len(x.full) if axis < 0 else axis
    idx = np.asarray(idx).astype(np.int64)
    if not 0 <= ax < len(x.full) or idx.size == 0:
        raise cv.err(f"{origin}: cannot gather {idx.shape} indices along axis {axis} of {x.full}")
    n = x.full[ax]
    if idx.min() < -n or idx.max() >= n:
        raise cv.err(f"{origin}: indices outside [-{n}, {n}) on axis {ax} of {x.full}")
    flat = [int(i) % n for i in idx.reshape(-1)]
    op = Gather(ax, flat, tuple(idx.shape))
    return cv.from_full(cv.emit(op, [cv.full_view(x, node, origin)], node, origin, "/gather"), node, origin)


def _transpose(cv: _Converter, node, at, ins, origin):
    """Unit axes carry no data: the permutation of the other axes moves it (a reshape if none)."""
    x = ins[0]
    perm = [int(p) for p in at.get("perm", range(len(x.full) - 1, -1, -1))]
    if sorted(perm) != list(range(len(x.full))):
        raise cv.err(f"{origin}: perm {perm} is not a permutation of the axes of {x.full}")
    out = tuple(x.full[p] for p in perm)
    kept = [k for k, d in enumerate(x.full) if d != 1]
    moved = [p for p in perm if x.full[p] != 1]
    if moved == sorted(moved):
        return cv.reshaped(x, out, node, origin)
    squeezed = cv.b.reshape(x.name, tuple(x.full[k] for k in kept), node.output[0] + "/squeezed", origin)
    name = cv.emit(Transpose(tuple(kept.index(p) for p in moved)), [squeezed], node, origin, "/perm")
    return cv.reshaped(Dyn(name, tuple(x.full[p] for p in moved)), out, node, origin)


def _pad(cv: _Converter, node, at, ins, origin):
    """Zero padding of H and W (symmetric) stays lazy, to merge into a Conv/AveragePool reading
    it; any other constant padding is a ``Pad`` node."""
    x = ins[0]
    mode = _str(at.get("mode", "constant"))
    if mode != "constant":
        raise cv.err(f"{origin}: Pad mode {mode!r} is not supported (only constant padding)")
    if len(ins) > 1:
        pads, axes = _consts(cv, origin, pads=ins[1], axes=_opt(ins, 3))
        value = _opt(ins, 2)
    else:
        pads, axes, value = list(at["pads"]), None, at.get("value", 0.0)
    if isinstance(value, (Dyn, Padded)):
        raise cv.err(f"{origin}: the padding value must be a constant")
    value = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size else 0.0
    r = len(x.full)
    axes = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes):
        raise cv.err(f"{origin}: {len(pads)} pads for {len(axes)} axes")
    per_axis = [[0, 0] for _ in range(r)]
    for k, a in enumerate(axes):
        per_axis[a] = [pads[k], pads[k + len(axes)]]
    if r == 4 and x.full[0] == 1 and value == 0.0 and per_axis[0] == per_axis[1] == [0, 0] \
            and per_axis[2][0] == per_axis[2][1] >= 0 and per_axis[3][0] == per_axis[3][1] >= 0:
        return Padded(x, (per_axis[2][0], per_axis[3][0]))
    op = Pad(tuple(tuple(p) for p in per_axis), value)
    return cv.from_full(cv.emit(op, [cv.full_view(x, node, origin)], node, origin, "/pad"), node, origin)


def _reduce(op_cls):
    def rule(cv: _Converter, node, at, ins, origin):
        x = ins[0]
        (axes,) = _consts(cv, origin, axes=_opt(ins, 1))
        axes = axes if axes is not None else at.get("axes")
        r = len(x.full)
        if not axes:
            if int(at.get("noop_with_empty_axes", 0)):
                return x
            axes = list(range(r))
        axes = sorted({int(a) + r if int(a) < 0 else int(a) for a in axes})
        keep = bool(int(at.get("keepdims", 1)))
        out = tuple(1 if k in axes else d for k, d in enumerate(x.full)) if keep else \
            tuple(d for k, d in enumerate(x.full) if k not in axes)
        real = [a for a in axes if x.full[a] != 1]
        if not real:                    # sums over unit axes only
            return cv.reshaped(x, out or (1,), node, origin)
        name = cv.emit(op_cls(tuple(axes), True), [cv.full_view(x, node, origin)], node, origin, "/reduce")
        return cv.reshaped(Dyn(name, tuple(cv.b.shapes[name])), out or (1,), node, origin)
    return rule


def _conv_transpose(cv: _Converter, node, at, ins, origin):
    x, W = ins[0], ins[1]
    B = _opt(ins, 2)
    W = _conv_weights(cv, x, W, B, at, origin)
    group = int(at.get("group", 1))
    k = W.shape[2:]
    stride = [int(v) for v in at.get("strides", [1, 1])]
    dil = [int(v) for v in at.get("dilations", [1, 1])]
    outpad = [int(v) for v in at.get("output_padding", [0, 0])]
    auto = _str(at.get("auto_pad", "NOTSET"))
    if "output_shape" in at or auto in ("SAME_UPPER", "SAME_LOWER"):
        insz = x.full[2:]
        target = list(at["output_shape"])[-2:] if "output_shape" in at else [n * s for n, s in zip(insz, stride)]
        total = [s * (n - 1) + op + (kk - 1) * d + 1 - t
                 for s, n, op, kk, d, t in zip(stride, insz, outpad, k, dil, target)]
        if min(total) < 0:
            raise cv.err(f"{origin}: output_shape {target} is larger than the transposed convolution's output")
        first = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = first + [t - f for t, f in zip(total, first)]
    else:
        pads = [0, 0, 0, 0] if auto == "VALID" else [int(v) for v in at.get("pads", [0, 0, 0, 0])]
    if len(pads) != 4 or min(pads) < 0:
        raise cv.err(f"{origin}: expected 4 non-negative pads for a 2-D op, got {pads}")
    sym = (min(pads[0], pads[2]), min(pads[1], pads[3]))
    op = ConvTranspose2d(cv.tensor(W), None if B is None else cv.tensor(B), tuple(stride), sym, tuple(outpad),
                         tuple(dil), group)
    name = cv.emit(op, [x.name], node, origin)
    crop = ((0, 0), (sym[0] - pads[0], sym[0] - pads[2]), (sym[1] - pads[1], sym[1] - pads[3]))
    if any(crop[1] + crop[2]):           # asymmetric pads: the extra rows and columns are cut off
        name = cv.emit(Pad(crop), [name], node, origin, "/crop")
    return cv.as_dyn(name, (1,) + cv.b.shapes[name], node, origin)


def _moved(cv: _Converter, node, at, ins, origin):
    """An op that only moves or copies elements (nearest Resize/Upsample, Expand, Tile,
    DepthToSpace, ...): evaluated on the tensor of element numbers by the reference runtime,
    whose output names the source of every element (``GraphBuilder.element_map``)."""
    x = ins[0]
    if any(isinstance(v, (Dyn, Padded)) for v in ins[1:]):
        raise cv.err(f"{origin}: only the first input may be a network tensor")
    if node.op_type in ("Resize", "Upsample") and _str(at.get("mode", "nearest")) != "nearest":
        raise cv.err(f"{origin}: mode {_str(at.get('mode'))!r} is not supported (only nearest)")
    n = math.prod(x.full)
    ids = np.arange(n, dtype=np.float64).reshape(x.full)
    feeds = {i: v for i, v in zip(node.input, ins) if i}
    feeds[node.input[0]] = ids
    try:
        (src,) = evaluate(helper.make_node(node.op_type, list(node.input), [node.output[0]], **at), feeds, cv.opset)
    except Exception as e:
        raise cv.err(f"{origin}: cannot evaluate the element map ({type(e).__name__}: {e})") from None
    if src.size == 0 or not np.array_equal(src, np.round(src)) or src.min() < 0 or src.max() >= n:
        raise cv.err(f"{origin}: the op does not copy elements (it interpolates); not supported")
    per_sample = src.reshape(ir_shape(src.shape)) if src.ndim >= 2 and src.shape[0] == 1 else src
    name = cv.b.element_map(x.name, per_sample, node.output[0] or node.name, origin, cv.dtype)
    return cv.as_dyn(name, tuple(src.shape), node, origin)


RULES = {
    "Identity": _identity, "Dropout": _identity, "Cast": _identity,
    "Relu": _unary(ReLU), "Sigmoid": _unary(Sigmoid), "Tanh": _unary(Tanh), "Neg": _neg,
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary,
    "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "BatchNormalization": _batchnorm,
    "AveragePool": _pool, "MaxPool": _pool, "GlobalAveragePool": _global_avg,
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Concat": _concat, "Shape": _shape, "Pad": _pad, "Clip": _clip, "Sum": _sum,
    # data movement and reductions
    "Size": _size, "Slice": _slice, "Split": _split, "Gather": _gather, "ConvTranspose": _conv_transpose,
    "ReduceSum": _reduce(ReduceSum), "ReduceMean": _reduce(ReduceMean), "Resize": _moved, "Upsample": _moved,
    "Expand": _moved, "Tile": _moved, "DepthToSpace": _moved, "SpaceToDepth": _moved,
}
RULES.update({      # nonlinear ops
    "LeakyRelu": _leaky_relu, "Exp": _unary(Exp), "Log": _unary(Log), "Reciprocal": _unary(Reciprocal),
    "Sin": _unary(Sin), "Cos": _unary(Cos), "Sign": _unary(Sign), "Floor": _unary(Floor), "Pow": _pow,
    "Sqrt": _sqrt, "Softmax": _softmax,
})
SHAPE_ONLY = ("Shape", "Size")
"""Ops that read only the shape of their input."""
MULTI_OUTPUT = ("Split",)
"""Ops whose rule returns one value per output."""
"""One conversion rule per ONNX op type applied to a network tensor (constants are folded)."""

__all__ = ["load", "from_model", "ir_shape", "RULES"]
