"""The nonlinear IR ops (LeakyReLU, Exp, Log, Reciprocal, Pow, Sin, Cos, Sign, Floor, Softmax,
Mul and MatMul of two tensors): each loads from ONNX and from torch and matches onnxruntime to
1e-5 on random inputs, exports to ONNX and loads back, and ``certify info`` lists it; engines
without a rule for them name the op and the node."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from certify.errors import CertifyError
from certify.frontends.onnx import from_model, load
from certify.frontends.torch import from_module
from certify.ir import (NONLINEAR_OPS, Cos, Exp, Floor, LeakyReLU, Linear, Log, MatMul, Mul, Network, Node, Pow,
                        Reciprocal, Reshape, Sign, Sin, Softmax, sequential)
from certify.ir.export import to_model, to_onnx

ort = pytest.importorskip("onnxruntime")
TOL = 1e-5


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _graph(nodes, in_shape, out="y", inits=None, opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(in_shape[1:]))
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.asarray(v) if np.asarray(v).dtype == np.int64 else np.asarray(v, np.float32), k)
             for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


N = helper.make_node
ONNX_CASES = {
    "LeakyRelu": ([N("LeakyRelu", ["x"], ["y"], alpha=0.1)], [1, 6], {}),
    "Exp": ([N("Exp", ["x"], ["y"])], [1, 6], {}),
    "Log": ([N("Log", ["x"], ["y"])], [1, 6], {}),
    "Reciprocal": ([N("Reciprocal", ["x"], ["y"])], [1, 6], {}),
    "Pow3": ([N("Pow", ["x", "p"], ["y"])], [1, 6], {"p": np.array(3.0)}),
    "Pow0.5": ([N("Pow", ["x", "p"], ["y"])], [1, 6], {"p": np.array(0.5)}),
    "Sqrt": ([N("Sqrt", ["x"], ["y"])], [1, 6], {}),
    "Sin": ([N("Sin", ["x"], ["y"])], [1, 6], {}),
    "Cos": ([N("Cos", ["x"], ["y"])], [1, 6], {}),
    "Sign": ([N("Sub", ["x", "h"], ["s"]), N("Sign", ["s"], ["y"])], [1, 6], {"h": np.array(0.6)}),
    "Floor": ([N("Mul", ["x", "k"], ["s"]), N("Floor", ["s"], ["y"])], [1, 6], {"k": np.array(3.0)}),
    "Softmax1": ([N("Softmax", ["x"], ["y"], axis=1)], [1, 2, 3], {}),
    "Softmax-1": ([N("Softmax", ["x"], ["y"])], [1, 2, 3], {}),
    "MulTensors": ([N("Sin", ["x"], ["s"]), N("Mul", ["x", "s"], ["y"])], [1, 6], {}),
    "MulBroadcast": ([N("MatMul", ["c", "x"], ["r"]), N("Mul", ["x", "r"], ["y"])], [1, 2, 3],
                     {"c": np.array([[0.5, -1.0]])}),
    "Square": ([N("Mul", ["x", "x"], ["y"])], [1, 6], {}),
    "DivTensors": ([N("Exp", ["x"], ["e"]), N("Div", ["x", "e"], ["y"])], [1, 6], {}),
    "ConstDiv": ([N("Div", ["c", "x"], ["y"])], [1, 6], {"c": np.arange(1, 7, dtype=np.float32)}),
    "MatMul": ([N("Sin", ["x"], ["s"]), N("Reshape", ["s", "sh"], ["t"]), N("MatMul", ["x", "t"], ["y"])], [1, 2, 3],
               {"sh": np.array([0, 3, 2], np.int64)}),
}


@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_onnx_ops_load_and_match_onnxruntime(case):
    nodes, shape, inits = ONNX_CASES[case]
    model = _graph(nodes, shape, inits=inits)
    net = from_model(model, case)
    g = torch.Generator().manual_seed(0)
    x = torch.rand([5] + shape[1:], generator=g) + 0.1
    y = net(x)
    ref = _ort(model, x.numpy())
    assert y.shape == ref.shape
    assert np.abs(y.detach().numpy() - ref).max() < TOL
    kinds = {type(n.op) for n in net.nodes}
    assert kinds & set(NONLINEAR_OPS)


def test_softmax_before_opset_13_is_over_the_flattened_trailing_dims():
    model = _graph([N("Softmax", ["x"], ["y"], axis=1)], [1, 2, 3], opset=11)
    net = from_model(model)
    x = torch.randn(4, 2, 3)
    assert np.abs(net(x).numpy() - _ort(model, x.numpy())).max() < TOL
    assert torch.allclose(net(x).sum((1, 2)), torch.ones(4))


class _AllOps(nn.Module):
    """Every nonlinear op through the torch front end's modules, functions and methods."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.leaky, self.soft = nn.LeakyReLU(0.1), nn.Softmax(dim=1)

    def forward(self, x):
        h = self.leaky(self.a(x))
        u = torch.sin(h) * self.b(h).cos() + h * h + F.leaky_relu(h, 0.2)
        u = u + torch.exp(-h) / (2 + h ** 2) + 1.0 / (1.5 + torch.sigmoid(h))
        u = u + torch.sign(h) + torch.floor(3 * h) + torch.log(1 + h * h) + torch.sqrt(h * h + 1) + h.square()
        q = self.c(u).view(-1, 2, 3)
        m = torch.matmul(q, q.view(-1, 3, 2)) @ torch.full((2, 2), 0.1)
        return self.soft(m.flatten(1)) + torch.softmax(m, dim=-1).flatten(1) + torch.bmm(q, q.view(-1, 3, 2)).flatten(1)


def test_torch_front_end_and_export_match_onnxruntime(tmp_path):
    torch.manual_seed(0)
    m = _AllOps().eval()
    net = from_module(m, (4,))
    kinds = {type(n.op) for n in net.nodes}
    assert {LeakyReLU, Exp, Log, Reciprocal, Pow, Sin, Cos, Sign, Floor, Softmax, Mul, MatMul} <= kinds
    x = torch.rand(7, 4)
    with torch.no_grad():
        ref = m(x)
        assert (net(x) - ref).abs().max() < TOL
    path = tmp_path / "all.onnx"
    to_onnx(net, path)
    y_ort = _ort(onnx.load(path), x.numpy())
    assert np.abs(y_ort - ref.numpy()).max() < TOL
    back = load(path)
    assert {type(n.op) for n in back.nodes} & set(NONLINEAR_OPS) == kinds & set(NONLINEAR_OPS)
    with torch.no_grad():
        assert (back(x) - ref).abs().max() < TOL


def nonlinear_net(dtype=torch.float64) -> Network:
    """A small DAG with every op of NONLINEAR_OPS."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.5  # noqa: E731
    nodes = [
        Node("l0", Linear(r(6, 3), r(6)), ("input",)),
        Node("leaky", LeakyReLU(0.125), ("l0",)),
        Node("exp", Exp(), ("leaky",)),
        Node("log", Log(), ("exp",)),
        Node("sin", Sin(), ("log",)),
        Node("cos", Cos(), ("leaky",)),
        Node("mul", Mul(), ("sin", "cos")),
        Node("rec", Reciprocal(), ("exp",)),
        Node("pow", Pow(3.0), ("rec",)),
        Node("sign", Sign(), ("l0",)),
        Node("floor", Floor(), ("l0",)),
        Node("sq", Mul(), ("mul", "mul")),
        Node("a", Reshape((2, 3)), ("pow",)),
        Node("b", Reshape((3, 2)), ("sq",)),
        Node("mm", MatMul(), ("a", "b")),
        Node("soft", Softmax(1), ("mm",)),
        Node("flat", Reshape((4,)), ("soft",)),
        Node("out", Linear(r(3, 4), r(3)), ("flat",)),
    ]
    return Network((3,), nodes, name="nonlinear").to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_nonlinear_op_round_trips_through_onnx(tmp_path, dtype):
    net = nonlinear_net(dtype)
    assert {type(n.op) for n in net.nodes} >= set(NONLINEAR_OPS)
    path = tmp_path / "nl.onnx"
    to_onnx(net, path)
    x = torch.rand(6, 3, dtype=dtype)
    back = load(path)
    assert [type(n.op) for n in back.nodes] == [type(n.op) for n in net.nodes]
    assert (back(x) - net(x)).abs().max() < TOL
    assert np.abs(_ort(onnx.load(path), x.numpy()) - net(x).numpy()).max() < TOL
    mod = net.to_torch()
    assert (mod(x) - net(x)).abs().max() < TOL


def test_info_lists_the_nonlinear_ops(tmp_path, capsys):
    from certify.cli.main import main
    path = tmp_path / "nl.onnx"
    to_onnx(nonlinear_net(torch.float32), path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for word in ("LeakyReLU 0.125", "Exp", "Log", "Reciprocal", "Pow 3", "Sin", "Cos", "Sign", "Floor",
                 "Softmax axis 1", "Mul", "MatMul"):
        assert word in out, word


def test_ir_shape_errors():
    with pytest.raises(CertifyError, match="MatMul needs shapes"):
        Network((2, 3), [Node("m", MatMul(), ("input", "input"))])
    with pytest.raises(CertifyError, match="do not broadcast"):
        Network((6,), [Node("r", Reshape((2, 3)), ("input",)), Node("m", Mul(), ("input", "r"))])
    with pytest.raises(CertifyError, match="Softmax axis 2 out of range"):
        sequential((2, 3), [Softmax(2)])


@pytest.mark.parametrize("engine", ["lp", "milp", "sdp"])
def test_convex_engines_name_the_op_they_cannot_handle(engine):
    import certify.convex as cx
    net = sequential((3,), [Linear(torch.randn(4, 3, dtype=torch.float64)), Sin(),
                            Linear(torch.randn(2, 4, dtype=torch.float64))])
    x = torch.rand(1, 3, dtype=torch.float64)
    with pytest.raises(CertifyError, match=r"node 'n1'.* is Sin"):
        getattr(cx, engine)(net, x, eps=0.1)


def test_relu_splitting_on_a_non_chain_network_runs_a_general_search_and_says_so():
    """ReLU splitting asked for on a network the chain fast path cannot take (an Exp) still gets a
    verdict, from a search over the general bound engine, and the stats name that search."""
    from bounds.bab.verify import verify
    from certify.spec.vnnlib import VnnlibProperty, Region
    net = sequential((2,), [Linear(torch.randn(3, 2, dtype=torch.float64)), Exp(),
                            Linear(torch.randn(1, 3, dtype=torch.float64))])
    prop = VnnlibProperty("p", 2, 1, [Region(np.zeros(2), np.ones(2), [(np.ones((1, 1)), np.full(1, -1e9))])])
    res = verify(net, prop, timeout=5, method="relu", falsify_first=False)
    assert res.status == "unsat" and res.stats["method"] not in (None, "relu", "input")


@pytest.mark.parametrize("gap, expected", [(0.1, "unsat"), (-0.05, "sat")])
def test_verify_decides_a_sin_network_by_input_splitting(gap, expected):
    from bounds.bab.verify import verify
    from certify.spec.vnnlib import Region, VnnlibProperty
    g = torch.Generator().manual_seed(3)
    net = sequential((2,), [Linear(torch.randn(4, 2, generator=g, dtype=torch.float64) * 2), Sin(),
                            Linear(torch.randn(1, 4, generator=g, dtype=torch.float64))])
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 301, dtype=torch.float64),
                                      torch.linspace(0, 1, 301, dtype=torch.float64), indexing="ij"), -1)
    top = float(net(grid.reshape(-1, 2)).max())
    # violated where y >= top + gap: never for gap = 0.1 (on this 301 x 301 grid of a net with
    # Lipschitz constant below 10, the grid's maximum is within 0.03 of the true one)
    prop = VnnlibProperty("p", 2, 1, [Region(np.zeros(2), np.ones(2), [(-np.ones((1, 1)), np.array([-(top + gap)]))])])
    res = verify(net, prop, timeout=20, pgd_restarts=2)
    assert res.status == expected
    if expected == "unsat":
        assert "generic-input" in res.stats["method"].split("+")   # input splitting over CROWN (alone or in turns)
    else:
        x, y = res.counterexample
        assert float(net(torch.as_tensor(x).reshape(1, 2))[0, 0]) >= top + gap
