"""Export: IR -> ONNX -> load gives the same outputs (and onnxruntime agrees); IR -> torch module
with trainable copies computing the same function."""
from __future__ import annotations

import gzip

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from certify.errors import CertifyError
from certify.frontends.onnx import load
from certify.ir import (ALL_OPS, NONLINEAR_OPS, Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, Flatten, Identity,
                        Linear, MaxPool2d, Network, Node, Normalize, ReLU, Reshape, Sigmoid, Sub, Tanh)
from certify.ir.export import ONNX_RULES, OPSET, to_model, to_onnx, to_torch

ort = pytest.importorskip("onnxruntime")
TOL = 1e-5


def every_op_net(dtype=torch.float32) -> Network:
    """A small DAG that uses every IR op once or more."""
    r = lambda *s: torch.randn(*s) * 0.5  # noqa: E731
    nodes = [
        Node("norm", Normalize(torch.rand(2), torch.rand(2) + 0.5), ("input",)),
        Node("conv", Conv2d(r(4, 2, 3, 3), r(4), stride=1, padding=1), ("norm",)),
        Node("bn", BatchNorm(r(4), torch.rand(4) + 0.5, r(4) + 1, r(4), eps=1e-3), ("conv",)),
        Node("relu", ReLU(), ("bn",)),
        Node("mp", MaxPool2d(3, 1, 1), ("relu",)),
        Node("ap", AvgPool2d(3, 1, 1, count_include_pad=False), ("relu",)),
        Node("sub", Sub(), ("mp", "ap")),
        Node("add", Add(), ("sub", "relu")),
        Node("cat", Concat(0), ("add", "relu")),
        Node("pool", AvgPool2d(2), ("cat",)),
        Node("cmul", ConstMul(torch.rand(8, 1, 1) + 0.5), ("pool",)),
        Node("cadd", ConstAdd(r(3, 3)), ("cmul",)),
        Node("sig", Sigmoid(), ("cadd",)),
        Node("reshape", Reshape((8, 9)), ("sig",)),
        Node("tanh", Tanh(), ("reshape",)),
        Node("flat", Flatten(), ("tanh",)),
        Node("fc", Linear(r(5, 72), r(5)), ("flat",)),
        Node("id", Identity(), ("fc",)),
    ]
    return Network((2, 6, 6), nodes, name="every_op").to(dtype)


def test_every_op_is_exported():
    """Every IR op has an export rule and is used by a round-trip test network (here, or one of
    data_ops_nets.py's, exported in test_data_ops.py)."""
    from data_ops_nets import NETS
    used = {type(n.op) for n in every_op_net().nodes}
    for make in NETS.values():
        used |= {type(n.op) for n in make().nodes}
    from test_nonlinear_ops import nonlinear_net
    used |= {type(n.op) for n in nonlinear_net().nodes}
    assert used == set(ALL_OPS)
    assert set(ALL_OPS) <= set(ONNX_RULES)


def test_onnx_round_trip_and_onnxruntime(tmp_path):
    net = every_op_net()
    path = tmp_path / "every.onnx"
    to_onnx(net, path)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == OPSET == 17
    inp = model.graph.input[0]
    assert inp.name == "input" and inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.rand(5, 2, 6, 6)
    y = net(x)
    back = load(path)
    assert back.input_shape == net.input_shape and back.name == "every.onnx"
    assert (back(x) - y).abs().max().item() < TOL
    y_ort = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(y_ort - y.detach().numpy()).max() < TOL
    y_ref = ReferenceEvaluator(model).run(None, {"input": x.numpy()})[0]
    assert np.abs(y_ref - y.detach().numpy()).max() < TOL


def test_float64_export_and_gzip(tmp_path):
    net = every_op_net(torch.float64)
    path = tmp_path / "every64.onnx.gz"
    net.to_onnx(str(path))
    model = onnx.load_model_from_string(gzip.decompress(path.read_bytes()))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    back = load(path)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    assert back.dtype == torch.float64
    assert (back(x) - net(x)).abs().max().item() < 1e-9  # x / c is loaded as x * (1 / c)


def test_shared_network_round_trip(tmp_path, shared_dir):
    for rel in ("vnncomp/acasxu/ACASXU_run2a_2_3_batch_2000.onnx", "anchors/bounds/resnet.onnx"):
        net = load(shared_dir / rel)
        out = tmp_path / (net.name + ".again.onnx")
        to_onnx(net, out)
        back = load(out)
        x = torch.rand((4,) + net.input_shape)
        assert (back(x) - net(x)).abs().max().item() < TOL
        assert (load(out).simplify()(x) - net(x)).abs().max().item() < TOL


def test_never_overwrites(tmp_path):
    path = tmp_path / "user.onnx"
    path.write_text("precious")
    with pytest.raises(CertifyError, match="already exists"):
        to_onnx(every_op_net(), path)
    assert path.read_text() == "precious"
    to_onnx(every_op_net(), path, overwrite=True)
    assert load(path).output_shape == (5,)
    with pytest.raises(CertifyError, match="does not exist"):
        to_onnx(every_op_net(), tmp_path / "no" / "dir.onnx")


def test_to_model_name_clash_with_input_and_output():
    nodes = [Node("input_", ReLU(), ("x",)), Node("output", Tanh(), ("input_",)), Node("input", Sigmoid(), ("output",))]
    net = Network((3,), nodes, input_name="x")
    model = to_model(net)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y = ReferenceEvaluator(model).run(None, {"input": x})[0]
    assert np.abs(y - net(torch.from_numpy(x)).numpy()).max() < TOL


def test_to_torch_is_a_trainable_copy():
    net = every_op_net()
    mod = to_torch(net)
    x = torch.rand(4, 2, 6, 6)
    assert (mod(x) - net(x)).abs().max().item() < TOL
    names = {n for n, _ in mod.named_parameters()}
    assert names == {"ops.1.weight", "ops.1.bias", "ops.2.weight", "ops.2.bias", "ops.16.weight", "ops.16.bias"}
    buffers = {n for n, _ in mod.named_buffers()}
    assert {"ops.0.mean", "ops.0.std", "ops.2.mean", "ops.2.var", "ops.10.const"}.issubset(buffers)
    # copies: training the module leaves the network untouched
    w0 = net.node("fc").op.weight.clone()
    opt = torch.optim.SGD(mod.parameters(), lr=0.1)
    before = mod(x).detach()
    mod(x).square().sum().backward()
    opt.step()
    assert torch.equal(net.node("fc").op.weight, w0)
    assert (mod(x) - before).abs().max().item() > 1e-4
    # and the module's own IR follows the trained parameters
    again = mod.to_network()
    assert (again(x) - mod(x)).abs().max().item() < TOL
    assert again.node("fc").op.weight is mod.ops[16].weight


def test_to_torch_state_dict_round_trip():
    net = every_op_net()
    a, b = to_torch(net), to_torch(every_op_net())
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 2, 6, 6)
    assert (a(x) - b(x)).abs().max().item() == 0.0
