"""ONNX front end: every shared network loads and agrees with onnx.reference and onnxruntime;
hand-built graphs exercise each conversion rule; unsupported constructs fail naming node and file."""
from __future__ import annotations

import gzip

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from certify.errors import CertifyError
from certify.frontends.onnx import from_model, ir_shape, load
from certify.ir import BatchNorm, Concat, Conv2d, Linear

ort = pytest.importorskip("onnxruntime")

TOL = 1e-4


def _onnx_inputs(model: onnx.ModelProto, n: int, rng) -> tuple[str, list[np.ndarray]]:
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    return inp.name, [rng.uniform(-1, 1, size=shape).astype(np.float32) for _ in range(n)]


def _check(net, model, path=None, n=3, use_ref=True, seed=0):
    """IR forward == onnxruntime (and onnx.reference) on n random inputs, batched in the IR."""
    rng = np.random.default_rng(seed)
    name, xs = _onnx_inputs(model, n, rng)
    sess = ort.InferenceSession(path or model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(model) if use_ref else None
    batch = torch.from_numpy(np.stack([x.reshape(net.input_shape) for x in xs]))
    ys = net(batch).detach().numpy()
    for k, x in enumerate(xs):
        y_ort = sess.run(None, {name: x})[0]
        assert np.abs(ys[k].reshape(-1) - y_ort.reshape(-1)).max() < TOL
        if ref is not None:
            y_ref = ref.run(None, {name: x})[0]
            assert np.abs(ys[k].reshape(-1) - np.asarray(y_ref).reshape(-1)).max() < TOL
    return ys


# ----------------------------------------------------------------------------- shared networks
def _shared_nets(shared_dir):
    return sorted((shared_dir / "vnncomp").rglob("*.onnx")) + sorted((shared_dir / "anchors" / "bounds").glob("*.onnx"))


def test_every_shared_network_matches_onnxruntime(shared_dir):
    paths = _shared_nets(shared_dir)
    assert len(paths) >= 45 + 3 + 5 + 5
    for p in paths:
        net = load(p)
        assert net.name == p.name
        model = onnx.load(p)
        _check(net, model, str(p), n=2, use_ref=False)
        simple = net.simplify()
        assert len(simple.nodes) <= len(net.nodes)
        _check(simple, model, str(p), n=2, use_ref=False)


@pytest.mark.parametrize("rel", ["vnncomp/acasxu/ACASXU_run2a_1_1_batch_2000.onnx",
                                 "vnncomp/acasxu/ACASXU_run2a_3_7_batch_2000.onnx",
                                 "vnncomp/acasxu/ACASXU_run2a_5_9_batch_2000.onnx",
                                 "vnncomp/mnistfc/mnist-net_256x2.onnx", "vnncomp/mnistfc/mnist-net_256x4.onnx",
                                 "vnncomp/mnistfc/mnist-net_256x6.onnx", "vnncomp/test/test_nano.onnx",
                                 "vnncomp/test/test_tiny.onnx", "vnncomp/test/test_small.onnx",
                                 "vnncomp/test/test_sat.onnx", "vnncomp/test/test_unsat.onnx",
                                 "anchors/bounds/mlp.onnx", "anchors/bounds/cnn.onnx", "anchors/bounds/resnet.onnx",
                                 "anchors/bounds/acas.onnx", "anchors/bounds/acasxu_1_1.onnx"])
def test_shared_network_matches_reference_evaluator(shared_dir, rel):
    p = shared_dir / rel
    _check(load(p), onnx.load(p), str(p), n=3, use_ref=True)


def test_shared_input_shapes_drop_the_batch_dim(shared_dir):
    v = shared_dir / "vnncomp"
    assert load(v / "acasxu/ACASXU_run2a_1_1_batch_2000.onnx").input_shape == (1, 1, 5)
    assert load(v / "mnistfc/mnist-net_256x2.onnx").input_shape == (784, 1)
    assert load(v / "test/test_nano.onnx").input_shape == (1,)
    net = load(shared_dir / "anchors/bounds/resnet.onnx")
    assert net.input_shape == (3, 32, 32) and net.output_shape == (10,)
    assert sum(isinstance(n.op, Conv2d) for n in net.nodes) == 4


def test_anchor_inputs_give_the_stored_labels_shapes(shared_dir):
    """The anchor input files fit the loaded input shape directly."""
    d = np.load(shared_dir / "anchors/bounds/cnn_inputs.npz")
    net = load(shared_dir / "anchors/bounds/cnn.onnx")
    x = torch.from_numpy(d["x"][:4]).reshape((4,) + net.input_shape)
    assert net(x).shape == (4, 10)


def test_ir_shape_rule():
    assert ir_shape((1, 1, 1, 5)) == (1, 1, 5)
    assert ir_shape((1, 784, 1)) == (784, 1)
    assert ir_shape((1,)) == (1,)
    assert ir_shape((3, 4)) == (3, 4)


# ----------------------------------------------------------------------------- hand-built graphs
def _model(nodes, inits, in_shape, out_shape=None, opset=13, in_name="x", out_name="y"):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _f(*shape, seed=0, scale=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def test_conv_bn_pool_dropout_concat_and_view_pattern():
    """torch's ``x.view(x.size(0), -1)`` export (Shape->Gather->Unsqueeze->Concat->Reshape) and friends."""
    N = helper.make_node
    nodes = [
        N("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[1, 1], kernel_shape=[3, 3]),
        N("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["bn"], name="bn", epsilon=1e-3),
        N("Relu", ["bn"], ["r1"]),
        N("Dropout", ["r1"], ["d1"]),
        N("MaxPool", ["d1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        N("AveragePool", ["d1"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        N("Concat", ["p1", "p2"], ["cat"], axis=1),
        N("Shape", ["cat"], ["sh"]),
        N("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, dtype=np.int64))),
        N("Gather", ["sh", "zero"], ["bs"], axis=0),
        N("Unsqueeze", ["bs", "ax0"], ["bs1"]),
        N("Concat", ["bs1", "minus1"], ["newshape"], axis=0),
        N("Reshape", ["cat", "newshape"], ["flat"]),
        N("Gemm", ["flat", "w2", "b2"], ["g"], transB=1, alpha=0.5, beta=2.0),
        N("Sigmoid", ["g"], ["sg"]),
        N("Div", ["sg", "two"], ["dv"]),
        N("Neg", ["dv"], ["ng"]),
        N("Sub", ["one", "ng"], ["y"]),
    ]
    inits = {"w1": _f(4, 2, 3, 3), "b1": _f(4, seed=1), "s": _f(4, seed=2) + 1, "bb": _f(4, seed=3),
             "m": _f(4, seed=4), "v": np.abs(_f(4, seed=5)) + 0.5, "ax0": np.array([0], dtype=np.int64),
             "minus1": np.array([-1], dtype=np.int64), "w2": _f(3, 128, seed=6), "b2": _f(3, seed=7),
             "two": np.array(2.0, dtype=np.float32), "one": np.ones((1, 3), dtype=np.float32)}
    # opset 15: onnx.reference's BatchNormalization for opsets 9-13 wrongly mixes in batch statistics
    model = _model(nodes, inits, ["N", 2, 8, 8], opset=15)
    net = from_model(model, "hand.onnx")
    assert net.input_shape == (2, 8, 8) and net.output_shape == (3,)
    assert any(isinstance(n.op, BatchNorm) for n in net.nodes)
    assert any(isinstance(n.op, Concat) and n.op.axis == 0 for n in net.nodes)
    _check(net, model, n=4)


def test_matmul_both_sides_and_column_input():
    """W @ x on an mnistfc-like (1, n, 1) input; x @ W; MatMul with a vector; Transpose/Squeeze as reshapes."""
    N = helper.make_node
    nodes = [
        N("MatMul", ["W1", "x"], ["h"]),                 # (6,5) @ (1,5,1) -> (1,6,1)
        N("Add", ["h", "c1"], ["h1"]),                   # + (6,1)
        N("Relu", ["h1"], ["r"]),
        N("Transpose", ["r"], ["t"], perm=[0, 2, 1]),    # (1,1,6): a pure reshape
        N("Squeeze", ["t"], ["sq"], axes=[1]),           # (1,6)
        N("MatMul", ["sq", "W2"], ["m2"]),               # (1,6) @ (6,4) -> (1,4)
        N("Unsqueeze", ["m2"], ["u"], axes=[2]),         # (1,4,1)
        N("Mul", ["u", "k"], ["y"]),
    ]
    inits = {"W1": _f(6, 5), "c1": _f(6, 1, seed=1), "W2": _f(6, 4, seed=2), "k": _f(1, 4, 1, seed=3)}
    model = _model(nodes, inits, [1, 5, 1], opset=11)
    net = from_model(model, "mm.onnx")
    assert net.input_shape == (5, 1) and net.output_shape == (4, 1)
    _check(net, model, n=4)


def test_matmul_on_non_flat_tensor_uses_exact_block_weights():
    N = helper.make_node
    nodes = [N("MatMul", ["x", "W"], ["a"]), N("MatMul", ["V", "a"], ["b"]), N("Tanh", ["b"], ["y"])]
    model = _model(nodes, {"W": _f(4, 3), "V": _f(2, 5, seed=1)}, [1, 5, 4], opset=13)
    net = from_model(model, "block.onnx")
    assert net.output_shape == (2, 3)
    assert any(isinstance(n.op, Linear) and n.op.weight.shape == (15, 20) for n in net.nodes)
    _check(net, model, n=3)


def test_two_branch_add_sub_and_global_pool():
    N = helper.make_node
    nodes = [N("Conv", ["x", "w"], ["a"], kernel_shape=[1, 1]), N("Sigmoid", ["x"], ["b"]),
             N("Sub", ["a", "b"], ["c"]), N("Add", ["c", "x"], ["d"]), N("GlobalAveragePool", ["d"], ["e"]),
             N("Flatten", ["e"], ["y"], axis=1)]
    model = _model(nodes, {"w": _f(3, 3, 1, 1)}, [1, 3, 4, 4])
    net = from_model(model, "branch.onnx")
    assert net.output_shape == (3,)
    _check(net, model, n=3)


def test_rank1_input_and_left_gemm():
    N = helper.make_node
    # constant A (1, 2) with transA: A^T (2, 1) @ x (1, 3) = (2, 3). The product runs over the
    # ONNX batch axis; the IR keeps the batch-1 computation exactly: per-sample (3,) -> (2, 3).
    nodes = [N("Gemm", ["A", "x2", "C"], ["y0"], transA=1, alpha=2.0),
             N("Relu", ["y0"], ["y"])]
    pre = [N("Identity", ["x"], ["x2"])]
    model = _model(pre + nodes, {"A": _f(1, 2), "C": _f(2, 3, seed=1)}, [1, 3])
    net = from_model(model, "leftgemm.onnx")
    assert net.output_shape == (2, 3)
    _check(net, model, n=3)


# ----------------------------------------------------------------------------- errors
def _single(op_type, in_shape, inits=None, **attrs):
    inputs = ["x"] + list((inits or {}).keys())
    node = helper.make_node(op_type, inputs, ["y"], name="bad_node", **attrs)
    return _model([node], inits or {}, in_shape)


def test_unsupported_op_names_op_node_and_file():
    with pytest.raises(CertifyError, match=r"bad\.onnx: node 'bad_node' \(Erf\): op type Erf is not supported"):
        from_model(_single("Erf", [1, 4]), "bad.onnx")


def test_asymmetric_pads_rejected():
    with pytest.raises(CertifyError, match=r"node 'bad_node' \(Conv\): asymmetric pads \[0, 0, 1, 1\]"):
        from_model(_single("Conv", [1, 1, 4, 4], {"w": _f(2, 1, 3, 3)}, pads=[0, 0, 1, 1]), "bad.onnx")
    with pytest.raises(CertifyError, match="auto_pad=SAME_UPPER is not supported"):
        from_model(_single("MaxPool", [1, 1, 4, 4], kernel_shape=[2, 2], auto_pad="SAME_UPPER"), "bad.onnx")
    with pytest.raises(CertifyError, match="ceil_mode=1"):
        from_model(_single("AveragePool", [1, 1, 5, 5], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), "b")


def test_unsupported_products_and_powers_rejected():
    N = helper.make_node
    m = _model([N("Relu", ["x"], ["r"]), N("MatMul", ["x", "r"], ["y"], name="prod")], {}, [1, 4])
    with pytest.raises(CertifyError, match=r"node 'prod' \(MatMul\): MatMul of two network tensors"):
        from_model(m, "p.onnx")
    m = _model([N("Pow", ["c", "x"], ["y"], name="pw")], {"c": np.full(4, 2.0, np.float32)}, [1, 4])
    with pytest.raises(CertifyError, match="a network tensor as the exponent"):
        from_model(m, "p.onnx")
    net = from_model(_single("Add", [1, 1], {"c": _f(1, 4)}), "p.onnx")       # x is broadcast
    assert net.output_shape == (4,)
    _check(net, _single("Add", [1, 1], {"c": _f(1, 4)}))


def test_data_moving_transpose_is_a_transpose_node():
    model = _single("Transpose", [1, 2, 3], perm=[0, 2, 1])
    net = from_model(model, "t.onnx")
    assert net.output_shape == (3, 2) and any(n.op.kind == "Transpose" for n in net.nodes)
    _check(net, model)


def test_file_errors_and_gzip(tmp_path, shared_dir):
    with pytest.raises(CertifyError, match="ONNX file not found"):
        load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(CertifyError, match="junk.onnx: not a readable ONNX model"):
        load(junk)
    src = shared_dir / "vnncomp/test/test_small.onnx"
    gz = tmp_path / "small.onnx.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    a, b = load(src), load(gz)
    assert b.name == "small.onnx.gz"
    x = torch.linspace(-2, 2, 9).reshape(9, 1)
    assert torch.equal(a(x), b(x))


def test_two_inputs_rejected():
    x1 = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2])
    x2 = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [x1, x2], [y])
    with pytest.raises(CertifyError, match="exactly one network input, found 2"):
        from_model(helper.make_model(g), "two.onnx")


def test_torch_exported_model_with_dynamic_batch_and_batchnorm(tmp_path):
    """A model exported by torch (legacy exporter): Normalize arithmetic, BatchNormalization kept
    (no constant folding), ``x.view(x.size(0), -1)`` with a symbolic batch dimension."""
    import warnings

    import torch.nn as nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.4, 0.5]).view(1, 2, 1, 1))
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 3 * 3, 3)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv((x - self.mean) / 0.25)))
            y = nn.functional.max_pool2d(y + self.conv(x), 2)
            return self.fc(y.view(y.size(0), -1))

    model = M()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (torch.rand(1, 2, 6, 6),), str(path), dynamo=False, do_constant_folding=False,
                              input_names=["x"], dynamic_axes={"x": {0: "N"}})
        except Exception as e:  # pragma: no cover - exporter unavailable
            pytest.skip(f"torch.onnx legacy exporter unavailable: {e}")
    types = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Shape", "Gather", "BatchNormalization", "Reshape"} <= types
    net = load(path)
    assert net.input_shape == (2, 6, 6)
    x = torch.rand(5, 2, 6, 6)
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max().item() < TOL
    _check(net, onnx.load(path), str(path), n=2, use_ref=False)


def test_zero_pad_merges_into_conv_and_avgpool_clip_and_sum():
    N = helper.make_node
    nodes = [N("Pad", ["x", "pads"], ["p"], mode="constant"),
             N("Conv", ["p", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             N("Clip", ["c", "zero"], ["r"]),
             N("Pad", ["r", "pads2"], ["p2"]),
             N("AveragePool", ["p2"], ["a"], kernel_shape=[3, 3], strides=[2, 2]),
             N("Relu", ["a"], ["b"]),
             N("Sum", ["a", "b"], ["y"])]
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 1, 2], np.int64), "w": _f(3, 2, 3, 3),
             "zero": np.array(0.0, np.float32), "pads2": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    model = _model(nodes, inits, [1, 2, 5, 5], opset=13)
    net = from_model(model, "pad.onnx")
    conv = next(n.op for n in net.nodes if isinstance(n.op, Conv2d))
    assert conv.padding == (2, 3)
    _check(net, model, n=3)
    bad = _model([N("Pad", ["x", "pads"], ["p"], name="pad"), N("Relu", ["p"], ["y"], name="after")],
                 {"pads": inits["pads"]}, [1, 2, 5, 5])
    net = from_model(bad, "pad_relu.onnx")          # not merged: a Pad node
    assert [n.op.kind for n in net.nodes] == ["Pad", "ReLU"]
    _check(net, bad)
    clip6 = _model([N("Clip", ["x", "lo", "hi"], ["y"], name="relu6")],
                   {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}, [1, 4])
    with pytest.raises(CertifyError, match=r"node 'relu6' \(Clip\): only Clip\(min=0, no max\)"):
        from_model(clip6, "bad.onnx")
