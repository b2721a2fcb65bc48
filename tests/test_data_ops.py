"""Data-movement and reduction ops (Slice, Gather, Transpose, Pad, ReduceSum, ReduceMean,
ConvTranspose2d): sound and exact bounds, the ONNX and torch front-end rules against
onnxruntime / the module, the export round trip, and the convex engines on them."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import bounds
from certify.errors import CertifyError
from certify.frontends.onnx import from_model
from certify.frontends.torch import from_module
from certify.ir import (ConvTranspose2d, Gather, Pad, ReduceMean, ReduceSum, Slice, Transpose, sequential)
from certify.ir.export import to_model, to_torch
from certify.spec.output import margin_values
from certify.spec.sets import Box, ball
from data_ops_nets import NETS
from test_bounds_soundness import _check, _extremes, _spec

ort = pytest.importorskip("onnxruntime")
TOL = 1e-5


# ----------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("name", list(NETS))
def test_bounds_hold_for_samples_and_attacks_float64(name):
    net = NETS[name]()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((2,) + net.input_shape, generator=g, dtype=torch.float64)
    s = ball(x, 0.25, "inf", None)
    C, d = _spec(net, 2)
    ext = _extremes(net, s, C, d)                  # 10k samples, PGD on every row (min and max)
    res = {}
    for method in ("ibp", "crown", "alpha"):
        res[method] = bounds.compute_bounds(net, s, C, d, method=method, **({"iterations": 8} if method == "alpha" else {}))
        _check(res[method], ext, 1e-9)
    assert (res["alpha"].lower >= res["crown"].lower - 1e-9).all()
    # the ReLUs make the bounds loose: the check is not vacuous
    assert float((ext[1] - res["crown"].lower).max()) > 1e-3


@pytest.mark.parametrize("name", ["slice", "gather", "pad", "reduce", "conv_transpose", "branches"])
def test_bounds_hold_float32(name):
    net = NETS[name]().to(torch.float32)
    net64 = net.to(torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.rand((2,) + net.input_shape, generator=g, dtype=torch.float64)
    C, d = _spec(net, 2, seed=3)
    ext = _extremes(net64, ball(x, 0.25, "inf", None), C, d)
    s32 = ball(x.float(), 0.25, "inf", None)
    for method in ("ibp", "crown", "alpha"):
        b = bounds.compute_bounds(net, s32, C.float(), d.float(), method=method,
                                  **({"iterations": 5} if method == "alpha" else {}))
        scale = float(b.upper.abs().max()) + 1.0
        b64 = type(b)(b.lower.double(), b.upper.double())
        _check(b64, ext, 1e-5 * scale)


def _jacobian(op, in_shape):
    """(J, c) of the affine op on flattened tensors: y = J x + c (float64)."""
    n = math.prod(in_shape)
    basis = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
    out = op.forward(basis.reshape((n + 1,) + tuple(in_shape))).reshape(n + 1, -1)
    return (out[1:] - out[0]).T, out[0]


OPS = {
    "slice": (Slice(1, 4, -1, -3), (2, 6)),
    "gather": (Gather(0, (2, 2, 0), (3,)), (3, 2)),
    "transpose": (Transpose((1, 2, 0)), (2, 3, 2)),
    "pad": (Pad(((0, 1), (2, -1)), -0.7), (2, 3)),
    "reduce_sum": (ReduceSum((0, 2)), (2, 3, 2)),
    "reduce_mean": (ReduceMean((1,), keepdims=True), (2, 3)),
    "conv_transpose": (ConvTranspose2d(torch.randn(4, 2, 3, 2, dtype=torch.float64),
                                       torch.randn(4, dtype=torch.float64), (2, 1), (1, 0), (1, 0), (1, 2), 2),
                       (4, 3, 3)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_ibp_and_crown_are_exact_on_the_op_alone(name):
    """An affine op alone: IBP gives each output's exact range, CROWN each row's exact range."""
    op, shape = OPS[name]
    net = sequential(shape, [op])
    J, c = _jacobian(op, shape)
    g = torch.Generator().manual_seed(0)
    lo = torch.randn((2,) + shape, generator=g, dtype=torch.float64)
    hi = lo + torch.rand((2,) + shape, generator=g, dtype=torch.float64)
    s = Box(lo, hi)
    mid, rad = ((lo + hi) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    ib = bounds.compute_bounds(net, s, method="ibp")
    exact_lo, exact_hi = mid @ J.T + c - rad @ J.abs().T, mid @ J.T + c + rad @ J.abs().T
    assert torch.allclose(ib.lower, exact_lo, atol=1e-12) and torch.allclose(ib.upper, exact_hi, atol=1e-12)
    C = torch.randn(2, 4, net.output_size, generator=g, dtype=torch.float64)
    cr = bounds.compute_bounds(net, s, C, method="crown")
    CJ = torch.matmul(C, J)                                     # (2, 4, n)
    centre = (CJ @ mid.unsqueeze(2)).squeeze(2) + C @ c
    radius = (CJ.abs() @ rad.unsqueeze(2)).squeeze(2)
    assert torch.allclose(cr.lower, centre - radius, atol=1e-12)
    assert torch.allclose(cr.upper, centre + radius, atol=1e-12)


def test_convex_engines_bound_networks_with_these_ops():
    """LP and MILP (the ops as exact sparse maps) agree with sampling and enclose it tightly."""
    from certify.convex import lp, milp
    net = NETS["branches"]()
    x = torch.rand((1,) + net.input_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s = ball(x, 0.2, "inf", None)
    C, d = _spec(net, 1, seed=5)
    m, vmin, vmax = _extremes(net, s, C, d)
    r_lp = lp(net, x, input_set=s, C=C, d=d)
    r_milp = milp(net, x, input_set=s, C=C, d=d, mode="full")
    for r in (r_lp, r_milp):
        assert all(st == "optimal" for st in r.status[0])
        assert (m >= r.lower - 1e-7).all() and (vmin >= r.lower - 1e-7).all()
    assert (r_milp.lower >= r_lp.lower - 1e-7).all()
    # MILP is exact: PGD's minimum is attained up to the attack's own gap
    assert float((vmin - r_milp.lower).max()) < 1e-3


# ----------------------------------------------------------------------------- ONNX front end
N = helper.make_node


def _model(nodes, inits, in_shape, opset=13, inputs=None, outputs=("y",)):
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)] if inputs is None else inputs
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    init = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    g = helper.make_graph(nodes, "g", x, ys, initializer=init)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m


def _i(*v):
    return np.array(v, dtype=np.int64)


def _w(*shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32)


def _matches_onnxruntime(model, name="m.onnx", n=4):
    net = from_model(model, name)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.uniform(-1, 1, size=[d if isinstance(d, int) and d > 0 else 1 for d in i.shape])
             .astype(np.float32) for i in sess.get_inputs()}     # other inputs: only their shape is read
    xs = rng.uniform(-1, 1, size=(n,) + feeds[net.input_name].shape).astype(np.float32)
    with torch.no_grad():
        ys = net(torch.from_numpy(xs).reshape((n,) + net.input_shape)).numpy()
    for k in range(n):
        y = sess.run(None, {**feeds, net.input_name: xs[k]})[0]
        assert ys[k].size == y.size
        assert np.abs(ys[k].reshape(-1) - y.reshape(-1)).max() < TOL
    return net


def _kinds(net):
    return {n.op.kind for n in net.nodes}


def test_onnx_slice_steps_negative_and_clamped_and_old_opset():
    nodes = [N("Slice", ["x", "st", "en", "ax", "sp"], ["s"]), N("Relu", ["s"], ["y"])]
    inits = {"st": _i(-1, 1, 0), "en": _i(-100, 100, 2), "ax": _i(2, -1, 1), "sp": _i(-2, 3, 1)}
    net = _matches_onnxruntime(_model(nodes, inits, [1, 4, 5, 7]))
    assert net.output_shape == (2, 3, 2) and "Slice" in _kinds(net)
    old = _model([N("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, 100], axes=[1, 2])], {}, [1, 4, 5], opset=9)
    assert _matches_onnxruntime(old).output_shape == (2, 5)


@pytest.mark.parametrize("opset", [11, 13])
def test_onnx_split_into_slices_recombined(opset):
    """Split's outputs are slices; the parts are used in another order (a residual-like graph)."""
    split = N("Split", ["x", "sizes"] if opset >= 13 else ["x"], ["a", "b", "c"], axis=1,
              **({} if opset >= 13 else {"split": [1, 3, 2]}))
    nodes = [split, N("Relu", ["b"], ["rb"]), N("Concat", ["c", "rb", "a"], ["cat"], axis=1),
             N("Add", ["cat", "x"], ["y"])]
    net = _matches_onnxruntime(_model(nodes, {"sizes": _i(1, 3, 2)} if opset >= 13 else {}, [1, 6], opset))
    assert sum(n.op.kind == "Slice" for n in net.nodes) == 3
    even = _model([N("Split", ["x"], ["a", "b"], axis=-1), N("Sub", ["a", "b"], ["y"])], {}, [1, 2, 6], opset)
    assert _matches_onnxruntime(even).output_shape == (2, 3)


def test_onnx_nhwc_transpose_before_conv_and_back():
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), N("Conv", ["t", "w"], ["c"], kernel_shape=[3, 3]),
             N("Transpose", ["c"], ["t2"], perm=[0, 2, 3, 1]), N("Relu", ["t2"], ["y"])]
    net = _matches_onnxruntime(_model(nodes, {"w": _w(4, 3, 3, 3)}, ["N", 6, 5, 3]))
    assert net.input_shape == (6, 5, 3) and net.output_shape == (4, 3, 4)
    assert sum(n.op.kind == "Transpose" for n in net.nodes) == 2


def test_onnx_gather_on_network_tensor_and_on_constants():
    nodes = [N("Gather", ["x", "i"], ["g"], axis=2), N("Gather", ["g", "j"], ["h"], axis=1),
             N("Shape", ["h"], ["sh"]), N("Gather", ["sh", "k"], ["n"], axis=0),           # folded: 4
             N("Unsqueeze", ["n", "ax"], ["n1"]), N("Concat", ["one", "n1", "m1"], ["shape"], axis=0),
             N("Reshape", ["h", "shape"], ["y"])]
    inits = {"i": np.array([[3, -1], [0, 0]], np.int64), "j": np.array(2, np.int64), "k": np.array(1, np.int64),
             "ax": _i(0), "one": _i(1), "m1": _i(-1)}
    net = _matches_onnxruntime(_model(nodes, inits, [1, 3, 5]))
    assert net.output_shape == (2, 2) and "Gather" in _kinds(net)


def test_onnx_shape_subgraph_with_range_cast_expand_folds():
    nodes = [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "k"], ["n"], axis=0), N("Range", ["zero", "n", "one"], ["r"]),
             N("Cast", ["r"], ["rf"], to=TensorProto.FLOAT), N("Expand", ["rf", "shape"], ["e"]),
             N("Squeeze", ["e", "ax"], ["e2"]), N("Add", ["x", "e2"], ["y"])]
    inits = {"k": np.array(1, np.int64), "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
             "shape": _i(1, 1, 4), "ax": _i(0)}
    net = _matches_onnxruntime(_model(nodes, inits, [1, 4]))
    assert _kinds(net) == {"ConstAdd"}


def test_onnx_squeeze_unsqueeze_with_axes_inputs_and_constant_unsqueeze_at_opset_11():
    nodes = [N("Unsqueeze", ["x", "a"], ["u"]), N("Squeeze", ["u", "b"], ["y"])]
    assert _matches_onnxruntime(_model(nodes, {"a": _i(0, 3), "b": _i(1)}, [1, 4])).output_shape == (4, 1)
    # opset 11 takes the axes as an attribute, also when the Unsqueeze folds a constant
    nodes = [N("Unsqueeze", ["c"], ["cu"], axes=[0]), N("Add", ["x", "cu"], ["y"])]
    assert _matches_onnxruntime(_model(nodes, {"c": _w(3)}, [1, 3], opset=11)).output_shape == (3,)


def test_onnx_pad_general_constant_and_merge_into_conv():
    nodes = [N("Pad", ["x", "p", "v"], ["y"], mode="constant")]
    model = _model(nodes, {"p": _i(0, 1, -1, 0, 2, 1), "v": np.array(0.3, np.float32)}, [1, 3, 4])
    net = _matches_onnxruntime(model)
    assert net.output_shape == (6, 4) and _kinds(net) >= {"Pad"}
    model = _model([N("Pad", ["x"], ["y"], pads=[0, 0, 1, 0, 0, 0, 0, 2], value=-1.0)], {}, [1, 2, 3, 3], opset=2)
    assert _matches_onnxruntime(model).output_shape == (2, 4, 5)
    merged = _model([N("Pad", ["x", "p"], ["p1"]), N("Conv", ["p1", "w"], ["y"], kernel_shape=[3, 3])],
                    {"p": _i(0, 0, 1, 1, 0, 0, 1, 1), "w": _w(2, 1, 3, 3)}, [1, 1, 4, 4])
    assert _kinds(_matches_onnxruntime(merged)) == {"Conv2d"}


@pytest.mark.parametrize("attrs", [{"strides": [2, 2], "pads": [1, 1, 1, 1]},
                                   {"strides": [2, 1], "pads": [0, 1, 1, 0], "output_padding": [1, 0]},  # asymmetric
                                   {"strides": [2, 2], "output_shape": [7, 8]},
                                   {"strides": [2, 2], "auto_pad": "SAME_UPPER", "group": 2}])
def test_onnx_conv_transpose(attrs):
    out = 4 if attrs.get("group", 1) == 2 else 3             # weight (I, O / group, kh, kw)
    nodes = [N("ConvTranspose", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], **attrs), N("Relu", ["c"], ["y"])]
    net = _matches_onnxruntime(_model(nodes, {"w": _w(2, out // attrs.get("group", 1), 3, 3), "b": _w(out)},
                                      [1, 2, 4, 4]))
    assert "ConvTranspose2d" in _kinds(net)


def test_onnx_upsample_and_resize_nearest():
    up = _model([N("Upsample", ["x", "s"], ["y"], mode="nearest")], {"s": np.array([1, 1, 2, 3], np.float32)},
                [1, 2, 3, 2], opset=9)
    assert _matches_onnxruntime(up).output_shape == (2, 6, 6)
    rs = _model([N("Resize", ["x", "", "s"], ["y"], mode="nearest")], {"s": np.array([1, 1, 2, 2], np.float32)},
                [1, 2, 3, 2], opset=13)
    assert _matches_onnxruntime(rs).output_shape == (2, 6, 4)
    sz = _model([N("Resize", ["x", "", "", "z"], ["y"], mode="nearest", coordinate_transformation_mode="half_pixel",
                   nearest_mode="round_prefer_ceil")], {"z": _i(1, 2, 5, 3)}, [1, 2, 3, 2], opset=13)
    assert _matches_onnxruntime(sz).output_shape == (2, 5, 3)
    lin = _model([N("Resize", ["x", "", "s"], ["y"], mode="linear")], {"s": np.array([1, 1, 2, 2], np.float32)},
                 [1, 2, 3, 2], opset=13)
    with pytest.raises(CertifyError, match=r"mode 'linear' is not supported"):
        from_model(lin, "lin.onnx")


@pytest.mark.parametrize("opset", [11, 13])
def test_onnx_reduce_sum_and_mean(opset):
    rs = N("ReduceSum", ["x", "a"] if opset >= 13 else ["x"], ["s"], keepdims=0, **({} if opset >= 13 else
                                                                                   {"axes": [-1]}))
    nodes = [rs, N("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=1), N("Neg", ["m"], ["nm"]),
             N("Add", ["nm", "s"], ["y"])]
    net = _matches_onnxruntime(_model(nodes, {"a": _i(-1)} if opset >= 13 else {}, [1, 3, 4], opset))
    assert {"ReduceSum", "ReduceMean"} <= _kinds(net) and net.output_shape == (1, 3)


def test_onnx_concat_with_constants_expand_and_broadcast():
    nodes = [N("Concat", ["c1", "x", "c2", "x"], ["cat"], axis=1),          # constants between network parts
             N("Concat", ["cls", "cat"], ["tok"], axis=1),                  # a constant in front (ViT class token)
             N("Expand", ["x", "shape"], ["e"]), N("Add", ["e", "col"], ["b"]),
             N("Flatten", ["tok"], ["f1"]), N("Flatten", ["b"], ["f2"]), N("Concat", ["f1", "f2"], ["y"], axis=1)]
    inits = {"c1": _w(1, 2, 3), "c2": _w(1, 1, 3, seed=1), "cls": _w(1, 1, 3, seed=2), "shape": _i(1, 4, 2, 3),
             "col": _w(4, 1, 1, seed=3)}
    net = _matches_onnxruntime(_model(nodes, inits, [1, 2, 3]))
    assert net.output_shape == (1 * 8 * 3 + 4 * 2 * 3,)


def test_onnx_shape_only_second_input_folded_and_real_inputs_outputs_named():
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    nodes = [N("Shape", ["z"], ["sz"]), N("ConstantOfShape", ["sz"], ["ones"],
                                          value=numpy_helper.from_array(np.array([2.0], np.float32))),
             N("Mul", ["x", "ones"], ["y"])]
    net = _matches_onnxruntime(_model(nodes, {}, None, inputs=[z, x]))
    assert net.input_name == "x"
    two = _model([N("Add", ["x", "z"], ["y"])], {}, None, inputs=[z, x])
    with pytest.raises(CertifyError, match=r"exactly one network input, found 2 \(z, x\)"):
        from_model(two, "two.onnx")
    outs = _model([N("Relu", ["x"], ["y"]), N("Neg", ["x"], ["w"])], {}, [1, 3], outputs=("y", "w"))
    with pytest.raises(CertifyError, match=r"exactly one graph output, found 2 \(y, w\)"):
        from_model(outs, "outs.onnx")
    bad = _model([N("Gather", ["c", "x"], ["y"])], {"c": _w(5)}, [1, 3])
    with pytest.raises(CertifyError, match=r"node 'y' \(Gather\): only a network tensor indexed by constant"):
        from_model(bad, "bad.onnx")


# ----------------------------------------------------------------------------- torch front end
class _Index(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(21, 4)

    def forward(self, x):                                          # (B, 2, 4, 5)
        a = torch.relu(self.conv(x))                               # (B, 3, 4, 5)
        b = a[:, 1:, ::2, [4, 0, 2]].flatten(1)                    # 12
        c = a.narrow(2, 1, 3)[..., 0].index_select(1, torch.tensor([2, 2, 0]))   # (3, 3) = 9
        return self.fc(torch.cat([b, c.reshape(c.size(0), -1)], 1))


class _Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)

    def forward(self, x):                                          # (B, 6)
        h = torch.relu(self.fc(x))
        p, q = h.split([3, 5], dim=1)
        u, v = torch.chunk(h, 2, dim=-1)
        w = torch.stack(h.unbind(1)[:2], dim=1)
        return torch.cat([q, p, v - u, w, x.unsqueeze(1).squeeze(1)], 1)


class _Layout(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):                                          # NHWC (B, 5, 6, 3)
        y = torch.relu(self.conv(x.permute(0, 3, 1, 2)))           # (B, 4, 3, 4)
        y = y.transpose(1, 3).flip(2)                              # (B, 4, 4, 3), flipped
        return y.sum(dim=(1, 3), keepdim=True) - torch.mean(y, 2).sum(-1, keepdim=True).unsqueeze(-1)


class _Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.convt = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))

    def forward(self, x):                                          # (B, 3, 2, 3)
        y = torch.relu(self.convt(x))                              # (B, 2, 4, 6)
        z = F.interpolate(self.up(y)[:, :, ::3], scale_factor=(1, 0.5), mode="nearest")   # (B, 2, 3, 6)
        w = F.conv_transpose2d(self.pad(y), torch.ones(2, 1, 1, 1) * 0.5, groups=2)       # (B, 2, 7, 7)
        return F.pad(z, (0, 1, 4, 0), value=0.5) + w.repeat(1, 1, 1, 1)


TORCH = {"index": (_Index, (2, 4, 5)), "split": (_Split, (6,)), "layout": (_Layout, (5, 6, 3)),
         "generator": (_Generator, (3, 2, 3))}


@pytest.mark.parametrize("name", list(TORCH))
def test_torch_modules_trace_and_export(name, tmp_path):
    """The traced network equals the module; its ONNX export runs in onnxruntime to the same values."""
    cls, shape = TORCH[name]
    torch.manual_seed(0)
    module = cls().eval()
    net = from_module(module, shape, name=name)
    x = torch.rand((5,) + shape) * 2 - 1
    with torch.no_grad():
        ref = module(x)
        assert (net(x) - ref).abs().max().item() < TOL
    sess = ort.InferenceSession(to_model(net).SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x.numpy()})[0]
    assert np.abs(y - ref.numpy().reshape(y.shape)).max() < TOL


def test_torch_rejects_batch_indexing_and_tensor_indices():
    class BatchSlice(nn.Module):
        def forward(self, x):
            return x[1:]

    class Masked(nn.Module):
        def forward(self, x):
            return x[:, x[0] > 0]

    with pytest.raises(CertifyError, match="keep the batch dimension whole"):
        from_module(BatchSlice(), (3,))
    with pytest.raises(CertifyError):
        from_module(Masked(), (3,))


# ----------------------------------------------------------------------------- export
def _exported_runs_the_same(net, x, tol):
    """onnxruntime on the export gives ``net(x)`` (float32: its CPU convolutions have no float64
    kernels); so do loading the export back and to_torch (any dtype)."""
    model = to_model(net)
    with torch.no_grad():
        y = net(x)
        if x.dtype == torch.float32:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            assert np.abs(sess.run(None, {"input": x.numpy()})[0] - y.numpy()).max() < tol
        assert (from_model(model, "back.onnx")(x) - y).abs().max().item() < tol
        assert (to_torch(net)(x) - y).abs().max().item() < tol


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_export_round_trip(name, dtype):
    net = NETS[name]().to(dtype)
    x = torch.rand((3,) + net.input_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    _exported_runs_the_same(net, x, TOL)


@pytest.mark.parametrize("name", list(OPS))
def test_each_op_exported_alone(name):
    """Every op on its own (negative steps, cuts, a nonzero pad value, groups, dilation)."""
    op, shape = OPS[name]
    net = sequential(shape, [op])
    x = torch.rand((3,) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _exported_runs_the_same(net.to(torch.float32), x.float(), TOL)
    if net.dtype == torch.float64:              # (a network without parameters exports as float32)
        _exported_runs_the_same(net, x, 1e-12)


def test_chain_fast_path_densifies_these_ops_exactly():
    """A chain whose affine runs include these ops (NHWC transpose, slices, padding) becomes the
    float64 affine/ReLU chain of branch and bound, computing the same function."""
    from bounds.bab.chain import to_chain
    from certify.ir import Conv2d, Flatten, Linear, ReLU
    torch.manual_seed(3)
    r = lambda *s: torch.randn(*s, dtype=torch.float64) * 0.4  # noqa: E731
    net = sequential((5, 4, 2), [Transpose((2, 0, 1)), Conv2d(r(3, 2, 2, 2), r(3)), ReLU(), Slice(1, 3, -1, -2),
                                 Pad(((0, 0), (1, 0), (0, 1)), 0.25), Gather(0, (2, 0)), Flatten(), Linear(r(4, 24), r(4)),
                                 ReLU(), ReduceSum((0,), keepdims=True)])
    chain = to_chain(net)
    assert chain is not None and len(chain.weights) == 3
    x = torch.rand(6, 5, 4, 2, dtype=torch.float64)
    assert (chain.forward(x.reshape(6, -1)) - net(x).reshape(6, -1)).abs().max().item() < 1e-12
