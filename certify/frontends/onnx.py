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
``Pad`` (symmetric in H and W) is merged into the ``Conv``/``AveragePool`` that reads it;
``Clip(min=0)`` without a max is ``Relu``; ``Sum`` of two tensors is ``Add``. The supported
op types are the keys of ``RULES``.

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


class Dyn(NamedTuple):
    """A network tensor: the IR node computing it and its full (batch-1) ONNX shape."""

    name: str
    full: tuple[int, ...]


class Padded(NamedTuple):
    """A zero ``Pad`` of a network tensor (symmetric, spatial), merged into the Conv or
    AveragePool that reads it; any other consumer is rejected."""

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
    return from_model(model, name=p.name)


def from_model(model: onnx.ModelProto, name: str = "onnx") -> Network:
    """Convert an in-memory ``onnx.ModelProto``; ``name`` labels the network and errors."""
    return _Converter(model, name).run()


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
        if len(inputs) != 1:
            raise self.err(f"expected exactly one network input, found {len(inputs)} "
                           f"({', '.join(i.name for i in inputs) or 'none'})")
        inp = inputs[0]
        tt = inp.type.tensor_type
        if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise self.err(f"input {inp.name!r} has element type "
                           f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; only floating point inputs are supported")
        self.dtype = torch.float64 if tt.elem_type == onnx.TensorProto.DOUBLE else torch.float32
        full = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                full.append(int(d.dim_value))
            elif k == 0:
                full.append(1)  # symbolic batch dimension: read the graph for one sample
            else:
                raise self.err(f"input {inp.name!r} has a symbolic dimension {d.dim_param!r} at axis {k}; "
                               "only the batch (first) dimension may be symbolic")
        full = tuple(full)
        if not full:
            raise self.err(f"input {inp.name!r} is a scalar or has no declared shape")
        self.b = GraphBuilder(ir_shape(full), inp.name, self.name)
        self.values[inp.name] = Dyn(inp.name, full)

        for node in self.graph.node:
            self.convert(node)

        if len(self.graph.output) != 1:
            raise self.err(f"expected exactly one graph output, found {len(self.graph.output)}")
        out = self.values.get(self.graph.output[0].name)
        if isinstance(out, Padded):
            raise self.err("the graph output is a Pad; zero padding is only supported before Conv or AveragePool")
        if not isinstance(out, Dyn):
            raise self.err(f"graph output {self.graph.output[0].name!r} does not depend on the input")
        return self.b.network(out.name, self.name)

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
                ins.append(self.values[i])
        dyn = [v for v in ins if isinstance(v, (Dyn, Padded))]
        if any(isinstance(v, Padded) for v in ins) and node.op_type not in ("Conv", "AveragePool"):
            raise self.err(f"{origin}: reads the output of a Pad; zero padding is only supported directly "
                           "before Conv or AveragePool")
        if not dyn and node.op_type != "Shape":
            outs = self.fold(node, ins, origin)
        else:
            rule = RULES.get(node.op_type)
            if rule is None:
                raise self.err(f"{origin}: op type {node.op_type} is not supported on network tensors "
                               f"(supported: {', '.join(sorted(RULES))})")
            for extra in node.output[1:]:
                if extra and extra in self.used:
                    raise self.err(f"{origin}: its extra output {extra!r} is used; only the first output is supported")
            try:
                outs = [rule(self, node, _attrs(node), ins, origin)]
            except IRError as e:
                msg = str(e)
                raise (e if msg.startswith(self.name) else self.err(f"{origin}: {msg}")) from None
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
                raise self.err(f"{origin}: malformed or unsupported node ({type(e).__name__}: {e})") from None
        for name, v in zip(node.output, outs):
            if name:
                self.values[name] = v

    def fold(self, node, ins, origin) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all constants with the ONNX reference runtime."""
        from onnx.reference import ReferenceEvaluator
        feeds = {i: v for i, v in zip(node.input, ins) if i}
        try:
            ev = ReferenceEvaluator(node, opsets={"": self.opset})
            res = ev.run(None, feeds)
        except Exception as e:
            raise self.err(f"{origin}: cannot evaluate this constant node ({type(e).__name__}: {e})") from None
        return [np.asarray(r) for r in res]

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
    a, c = ins[0], ins[1]
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


def _pad(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    _image(cv, x, origin)
    mode = _str(at.get("mode", "constant"))
    if mode != "constant":
        raise cv.err(f"{origin}: Pad mode {mode!r} is not supported (only constant zero padding)")
    pads = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("pads")
    value = ins[2] if len(ins) > 2 and ins[2] is not None else at.get("value", 0.0)
    if len(ins) > 3 and ins[3] is not None:
        raise cv.err(f"{origin}: Pad with an axes input is not supported")
    if isinstance(pads, (Dyn, Padded)) or isinstance(value, (Dyn, Padded)) or pads is None:
        raise cv.err(f"{origin}: pads and value must be constants")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if float(np.asarray(value).reshape(-1)[0] if np.asarray(value).size else 0.0) != 0.0:
        raise cv.err(f"{origin}: padding with a nonzero value is not supported")
    if len(pads) != 8 or any(pads[k] or pads[k + 4] for k in (0, 1)) or pads[2] != pads[6] or pads[3] != pads[7] \
            or min(pads) < 0:
        raise cv.err(f"{origin}: only symmetric, non-negative padding of H and W is supported, got pads {pads}")
    return Padded(x, (pads[2], pads[3]))


def _conv(cv: _Converter, node, at, ins, origin):
    x, W = ins[0], ins[1]
    B = ins[2] if len(ins) > 2 else None
    extra = (0, 0)
    if isinstance(x, Padded):
        x, extra = x.src, x.pads
    _image(cv, x, origin)
    if isinstance(W, Dyn) or isinstance(B, Dyn):
        raise cv.err(f"{origin}: convolution weights must be constants")
    W = np.asarray(W)
    if W.ndim != 4:
        raise cv.err(f"{origin}: only 2-D convolutions are supported (weight of shape {W.shape})")
    ks = list(at.get("kernel_shape", W.shape[2:]))
    if tuple(ks) != tuple(W.shape[2:]):
        raise cv.err(f"{origin}: kernel_shape {ks} does not match weight shape {W.shape}")
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


def _transpose(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    perm = list(at.get("perm", range(len(x.full) - 1, -1, -1)))
    moved = [p for p in perm if x.full[p] != 1]
    if moved != sorted(moved):
        raise cv.err(f"{origin}: transpose with perm {perm} of shape {x.full} moves data; only transposes "
                     "that are pure reshapes (unit axes moved) are supported")
    return cv.reshaped(x, tuple(x.full[p] for p in perm), node, origin)


def _concat(cv: _Converter, node, at, ins, origin):
    xs = [v for v in ins if v is not None]
    if not all(isinstance(v, Dyn) for v in xs):
        raise cv.err(f"{origin}: concatenating a network tensor with a constant is not supported")
    r = len(xs[0].full)
    axis = int(at["axis"])
    axis = axis + r if axis < 0 else axis
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
    a, c = ins
    if isinstance(a, Dyn) and isinstance(c, Dyn):
        if a.full != c.full:
            raise cv.err(f"{origin}: operands of shapes {a.full} and {c.full} differ")
        return Dyn(cv.emit(Add(), [a.name, c.name], node, origin), a.full)
    x, k = (a, c) if isinstance(a, Dyn) else (c, a)
    return Dyn(cv.emit(ConstAdd(cv.per_sample_const(x, np.asarray(k), origin)), [x.name], node, origin), x.full)


def _shape(cv: _Converter, node, at, ins, origin):
    x = ins[0]
    s = np.array(x.full if isinstance(x, Dyn) else np.asarray(x).shape, dtype=np.int64)
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


RULES = {
    "Identity": _identity, "Dropout": _identity, "Cast": _identity,
    "Relu": _unary(ReLU), "Sigmoid": _unary(Sigmoid), "Tanh": _unary(Tanh), "Neg": _neg,
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary,
    "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "BatchNormalization": _batchnorm,
    "AveragePool": _pool, "MaxPool": _pool, "GlobalAveragePool": _global_avg,
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Concat": _concat, "Shape": _shape, "Pad": _pad, "Clip": _clip, "Sum": _sum,
}
RULES.update({      # nonlinear ops
    "LeakyRelu": _leaky_relu, "Exp": _unary(Exp), "Log": _unary(Log), "Reciprocal": _unary(Reciprocal),
    "Sin": _unary(Sin), "Cos": _unary(Cos), "Sign": _unary(Sign), "Floor": _unary(Floor), "Pow": _pow,
    "Sqrt": _sqrt, "Softmax": _softmax,
})
"""One conversion rule per ONNX op type applied to a network tensor (constants are folded)."""

__all__ = ["load", "from_model", "ir_shape", "RULES"]
