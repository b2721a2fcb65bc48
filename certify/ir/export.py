"""Export a ``Network``: ``to_onnx(net, path)`` (ONNX opset 17) and ``to_torch(net)`` (nn.Module).

ONNX: the graph input is named ``input`` with shape ``("batch", *net.input_shape)`` (symbolic
batch), the output is named ``output``; each IR op becomes the ONNX op(s) in ``ONNX_RULES``.
Parameters are written in the network's dtype (float32 or float64). An existing file is never
overwritten unless ``overwrite=True``.

torch: ``to_torch(net)`` returns an ``IRModule`` whose parameters are trainable copies
(``nn.Parameter``) of the affine weights (Linear/Conv2d weight and bias, BatchNorm weight and
bias) and whose other tensors (running statistics, Normalize mean/std, constants) are buffers;
``forward`` evaluates the ops exactly as ``Network.forward`` does.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from certify.errors import CertifyError
from certify.ir.network import Network, Node
from certify.ir.ops import (Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, Flatten, Identity,
                            Linear, MaxPool2d, Normalize, ReLU, Reshape, Sigmoid, Sub, Tanh)
from certify.ir.ops import (Cos, Exp, Floor, LeakyReLU, Log, MatMul, Mul, Pow, Reciprocal, Sign, Sin,
                            Softmax)
from certify.ir.ops import ConvTranspose2d, Gather, Pad, ReduceMean, ReduceSum, Slice, Transpose

OPSET = 17


class _OnnxGraph:
    def __init__(self, dtype: torch.dtype):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.dtype = dtype
        self.count = 0
        self.taken: set[str] = set()

    def const(self, t, hint: str) -> str:
        """Add an initializer (tensor in the network dtype, or an int64 array) and return its name."""
        self.count += 1
        name = f"{hint}/c{self.count}"
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        if isinstance(t, torch.Tensor):
            arr = t.detach().to(self.dtype).cpu().numpy()
        else:
            arr = np.asarray(t)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op_type: str, ins: list[str], out: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, ins, [out], name=name, **attrs))
        return out


def _chan_shape(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (ndim - 1))


def _linear(g, op: Linear, ins, out, name, shape):
    args = ins + [g.const(op.weight, name)] + ([g.const(op.bias, name)] if op.bias is not None else [])
    return g.node("Gemm", args, out, name, transB=1)


def _conv(g, op: Conv2d, ins, out, name, shape):
    args = ins + [g.const(op.weight, name)] + ([g.const(op.bias, name)] if op.bias is not None else [])
    ph, pw = op.padding
    return g.node("Conv", args, out, name, kernel_shape=list(op.weight.shape[2:]), strides=list(op.stride),
                  pads=[ph, pw, ph, pw], dilations=list(op.dilation), group=op.groups)


def _const_add(g, op: ConstAdd, ins, out, name, shape):
    return g.node("Add", ins + [g.const(op.const, name)], out, name)


def _const_mul(g, op: ConstMul, ins, out, name, shape):
    return g.node("Mul", ins + [g.const(op.const, name)], out, name)


def _batchnorm(g, op: BatchNorm, ins, out, name, shape):
    args = ins + [g.const(t, name) for t in (op.weight, op.bias, op.mean, op.var)]
    return g.node("BatchNormalization", args, out, name, epsilon=float(op.eps))


def _normalize(g, op: Normalize, ins, out, name, shape):
    nd = len(shape)
    centred = g.node("Sub", ins + [g.const(_chan_shape(op.mean, nd), name)], f"{out}/centred", f"{name}/sub")
    return g.node("Div", [centred, g.const(_chan_shape(op.std, nd), name)], out, name)


def _avgpool(g, op: AvgPool2d, ins, out, name, shape):
    ph, pw = op.padding
    return g.node("AveragePool", ins, out, name, kernel_shape=list(op.kernel), strides=list(op.stride),
                  pads=[ph, pw, ph, pw], count_include_pad=int(op.count_include_pad))


def _maxpool(g, op: MaxPool2d, ins, out, name, shape):
    ph, pw = op.padding
    return g.node("MaxPool", ins, out, name, kernel_shape=list(op.kernel), strides=list(op.stride),
                  pads=[ph, pw, ph, pw])


def _reshape(g, op: Reshape, ins, out, name, shape):
    target = g.const(np.array((0,) + tuple(op.shape), dtype=np.int64), name)  # 0 copies the batch dim
    return g.node("Reshape", ins + [target], out, name)


def _simple(op_type: str, **attrs):
    def rule(g, op, ins, out, name, shape):
        return g.node(op_type, ins, out, name, **attrs)
    return rule


def _concat(g, op: Concat, ins, out, name, shape):
    return g.node("Concat", ins, out, name, axis=op.axis + 1)


# ----------------------------------------------------------------------------- data movement and reductions
def _ints(v) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def _slice(g, op: Slice, ins, out, name, shape):
    stop = op.stop if op.stop >= 0 else np.iinfo(np.int64).min      # through index 0 (negative step)
    args = [g.const(_ints([op.start]), name), g.const(_ints([stop]), name), g.const(_ints([op.axis + 1]), name),
            g.const(_ints([op.step]), name)]
    return g.node("Slice", ins + args, out, name)


def _gather(g, op: Gather, ins, out, name, shape):
    idx = g.const(_ints(op.indices).reshape(op.index_shape), name)
    return g.node("Gather", ins + [idx], out, name, axis=op.axis + 1)


def _transpose(g, op: Transpose, ins, out, name, shape):
    return g.node("Transpose", ins, out, name, perm=[0] + [p + 1 for p in op.perm])


def _pad(g, op: Pad, ins, out, name, shape):
    pads = _ints([0] + [a for a, _ in op.pads] + [0] + [b for _, b in op.pads])
    value = g.const(torch.tensor(op.value, dtype=torch.float64), name)
    return g.node("Pad", ins + [g.const(pads, name), value], out, name, mode="constant")


def _reduce(g, op, ins, out, name, shape):
    """keepdims=1, then a Reshape to the IR's output shape (which is (1,) for a full reduction)."""
    axes = [a + 1 for a in op.axes]
    kept = f"{out}/kept"
    if isinstance(op, ReduceSum):
        g.node("ReduceSum", ins + [g.const(_ints(axes), name)], kept, f"{name}/sum", keepdims=1)
    else:
        g.node("ReduceMean", ins, kept, f"{name}/mean", axes=axes, keepdims=1)
    target = g.const(_ints((0,) + tuple(op.infer_shape([shape]))), name)
    return g.node("Reshape", [kept, target], out, name)


def _conv_transpose(g, op: ConvTranspose2d, ins, out, name, shape):
    args = ins + [g.const(op.weight, name)] + ([g.const(op.bias, name)] if op.bias is not None else [])
    ph, pw = op.padding
    return g.node("ConvTranspose", args, out, name, kernel_shape=list(op.weight.shape[2:]), strides=list(op.stride),
                  pads=[ph, pw, ph, pw], output_padding=list(op.output_padding), dilations=list(op.dilation),
                  group=op.groups)


ONNX_RULES = {
    Linear: _linear, Conv2d: _conv, ConstAdd: _const_add, ConstMul: _const_mul, Add: _simple("Add"),
    Sub: _simple("Sub"), BatchNorm: _batchnorm, Normalize: _normalize, AvgPool2d: _avgpool, MaxPool2d: _maxpool,
    Flatten: _simple("Flatten", axis=1), Reshape: _reshape, Concat: _concat, Identity: _simple("Identity"),
    ReLU: _simple("Relu"), Sigmoid: _simple("Sigmoid"), Tanh: _simple("Tanh"),
    # data movement and reductions
    Slice: _slice, Gather: _gather, Transpose: _transpose, Pad: _pad, ReduceSum: _reduce, ReduceMean: _reduce,
    ConvTranspose2d: _conv_transpose,
}
"""One rule per IR op: fn(graph, op, input names, output name, node name, per-sample input shape)."""


def _pow(g, op: Pow, ins, out, name, shape):
    return g.node("Pow", ins + [g.const(torch.tensor(op.exponent), name)], out, name)


ONNX_RULES.update({     # nonlinear ops
    LeakyReLU: lambda g, op, ins, out, name, shape: g.node("LeakyRelu", ins, out, name, alpha=op.negative_slope),
    Exp: _simple("Exp"), Log: _simple("Log"), Reciprocal: _simple("Reciprocal"), Sin: _simple("Sin"),
    Cos: _simple("Cos"), Sign: _simple("Sign"), Floor: _simple("Floor"), Pow: _pow,
    Softmax: lambda g, op, ins, out, name, shape: g.node("Softmax", ins, out, name, axis=op.axis + 1),
    Mul: _simple("Mul"), MatMul: _simple("MatMul"),
})


def to_model(net: Network) -> onnx.ModelProto:
    """The network as a checked ``onnx.ModelProto`` (opset 17, input ``input``, output ``output``)."""
    dtype = net.dtype
    elem = TensorProto.DOUBLE if dtype == torch.float64 else TensorProto.FLOAT
    g = _OnnxGraph(dtype)
    # value names: "input" for the network input, "output" for the output node, node names otherwise
    names = {net.input_name: "input"}
    taken = {"input", "output"}
    for n in net.nodes:
        v = "output" if n.name == net.output else n.name
        while v in taken and n.name != net.output:
            v = v + "_"
        taken.add(v)
        names[n.name] = v
    g.taken = taken
    for n in net.nodes:
        rule = ONNX_RULES.get(type(n.op))
        if rule is None:
            raise CertifyError(f"{net.name}: node {n.name!r}: no ONNX export rule for op {n.op.kind}")
        rule(g, n.op, [names[i] for i in n.inputs], names[n.name], n.name, net.shape_of(n.inputs[0]))
    x = helper.make_tensor_value_info("input", elem, ["batch", *net.input_shape])
    y = helper.make_tensor_value_info("output", elem, ["batch", *net.output_shape])
    graph = helper.make_graph(g.nodes, net.name, [x], [y], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="certify")
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


def to_onnx(net: Network, path: str | Path, overwrite: bool = False) -> None:
    """Write ``net`` as an ONNX file (``.onnx``; gzip-compressed when the name ends in ``.gz``)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise CertifyError(f"{path} already exists; refusing to overwrite it")
    if not p.parent.is_dir():
        raise CertifyError(f"cannot write {path}: directory {p.parent} does not exist")
    data = to_model(net).SerializeToString()
    if p.name.endswith(".gz"):
        import gzip
        data = gzip.compress(data)
    p.write_bytes(data)


# ----------------------------------------------------------------------------- torch
_TRAINABLE = {Linear: ("weight", "bias"), Conv2d: ("weight", "bias"), BatchNorm: ("weight", "bias"),
              ConvTranspose2d: ("weight", "bias")}
"""Tensor fields that become ``nn.Parameter``s (all other tensor fields become buffers)."""


class _OpModule(nn.Module):
    """One IR op whose tensors live in this module (parameters or buffers)."""

    def __init__(self, op):
        super().__init__()
        self.op_type = type(op)
        self.static = {}
        trainable = _TRAINABLE.get(type(op), ())
        for f in (fl.name for fl in fields(op)):
            v = getattr(op, f)
            if isinstance(v, torch.Tensor):
                copy = v.detach().clone()
                if f in trainable:
                    self.register_parameter(f, nn.Parameter(copy))
                else:
                    self.register_buffer(f, copy)
            elif f in trainable:
                self.register_parameter(f, None)
            else:
                self.static[f] = v

    def op(self):
        kw = dict(self.static)
        for f in (fl.name for fl in fields(self.op_type)):
            if f not in kw:
                kw[f] = getattr(self, f)
        return self.op_type(**kw)

    def forward(self, *xs):
        return self.op().forward(*xs)

    def extra_repr(self):
        return self.op().describe()


class IRModule(nn.Module):
    """``nn.Module`` evaluating a network's DAG; ``to_network()`` gives the IR back (sharing tensors)."""

    def __init__(self, net: Network):
        super().__init__()
        self.input_shape, self.input_name = net.input_shape, net.input_name
        self.output, self.net_name = net.output, net.name
        self.names = [n.name for n in net.nodes]
        self.inputs = [tuple(n.inputs) for n in net.nodes]
        self.ops = nn.ModuleList(_OpModule(n.op) for n in net.nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals = {self.input_name: x}
        for name, ins, mod in zip(self.names, self.inputs, self.ops):
            vals[name] = mod(*(vals[i] for i in ins))
        return vals[self.output]

    def to_network(self) -> Network:
        """The IR of this module; its ops reference this module's parameters (gradients flow)."""
        nodes = [Node(n, m.op(), ins) for n, ins, m in zip(self.names, self.inputs, self.ops)]
        return Network(self.input_shape, nodes, self.output, self.input_name, self.net_name)


def to_torch(net: Network) -> IRModule:
    """A trainable ``nn.Module`` computing ``net.forward`` (parameters are copies)."""
    return IRModule(net)


__all__ = ["to_onnx", "to_model", "to_torch", "IRModule", "ONNX_RULES", "OPSET"]
