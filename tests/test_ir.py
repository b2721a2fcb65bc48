"""IR ops and Network: shape rules, reference semantics against torch, and bad shapes or
wiring raising IRError that names the network, the node and the op."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from certify.errors import CertifyError
from certify.ir import (Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, Flatten, Identity, IRError,
                        Linear, MaxPool2d, Network, Node, Normalize, ReLU, Reshape, Sigmoid, Sub, Tanh, sequential)


def test_irerror_is_a_certify_error():
    assert issubclass(IRError, CertifyError)


@pytest.mark.parametrize("op, in_shape, out_shape", [
    (Linear(torch.zeros(3, 5), torch.zeros(3)), (5,), (3,)),
    (Conv2d(torch.zeros(4, 2, 3, 3), None, stride=2, padding=1), (2, 7, 7), (4, 4, 4)),
    (Conv2d(torch.zeros(4, 1, 3, 3), None, dilation=2, groups=2), (2, 7, 7), (4, 3, 3)),
    (ConstAdd(torch.zeros(3, 1, 1)), (3, 4, 4), (3, 4, 4)),
    (ConstMul(torch.zeros(())), (7,), (7,)),
    (BatchNorm(torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3)), (3, 2, 2), (3, 2, 2)),
    (Normalize(torch.zeros(3), torch.ones(3)), (3, 5, 5), (3, 5, 5)),
    (AvgPool2d(2), (3, 5, 5), (3, 2, 2)),
    (MaxPool2d(3, 1, 1), (3, 5, 5), (3, 5, 5)),
    (Flatten(), (3, 4, 5), (60,)),
    (Reshape((6, 10)), (3, 4, 5), (6, 10)),
    (Identity(), (2, 2), (2, 2)),
    (ReLU(), (4,), (4,)), (Sigmoid(), (4,), (4,)), (Tanh(), (4,), (4,)),
])
def test_shape_rules_match_torch(op, in_shape, out_shape):
    net = sequential(in_shape, [op])
    assert net.output_shape == out_shape
    assert net(torch.rand((2,) + in_shape)).shape == (2,) + out_shape


def test_multi_input_shapes():
    nodes = [Node("a", ReLU(), ("input",)), Node("b", Tanh(), ("input",)), Node("s", Sub(), ("a", "b")),
             Node("p", Add(), ("s", "a")), Node("c", Concat(1), ("p", "b", "a"))]
    net = Network((2, 3), nodes)
    assert net.output_shape == (2, 9)
    x = torch.randn(4, 2, 3)
    a, b = x.relu(), x.tanh()
    assert torch.allclose(net(x), torch.cat([a - b + a, b, a], dim=2))
    assert set(net.forward_all(x)) == {"input", "a", "b", "s", "p", "c"}


def test_semantics_equal_torch_functional():
    x = torch.randn(3, 2, 6, 6)
    w, b = torch.randn(4, 2, 3, 3), torch.randn(4)
    assert torch.allclose(Conv2d(w, b, 1, 1).forward(x), F.conv2d(x, w, b, 1, 1))
    m, v, g, h = torch.randn(2), torch.rand(2) + 0.1, torch.randn(2), torch.randn(2)
    ref = F.batch_norm(x, m, v, g, h, training=False, eps=1e-5)
    assert torch.allclose(BatchNorm(m, v, g, h).forward(x), ref, atol=1e-6)
    mean, std = torch.rand(2), torch.rand(2) + 0.5
    assert torch.allclose(Normalize(mean, std).forward(x), (x - mean.view(2, 1, 1)) / std.view(2, 1, 1))
    s, t = Normalize(mean, std).scale_shift()
    assert torch.allclose(x * s.view(2, 1, 1) + t.view(2, 1, 1), Normalize(mean, std).forward(x), atol=1e-6)
    assert torch.allclose(AvgPool2d(3, 1, 1, count_include_pad=False).forward(x),
                          F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))


@pytest.mark.parametrize("op, in_shape, message", [
    (Linear(torch.zeros(3, 5)), (4,), r"Linear expects input shape \(5,\), got \(4,\)"),
    (Linear(torch.zeros(3, 5), torch.zeros(4)), (5,), r"Linear bias shape \(4,\) != \(3,\)"),
    (Conv2d(torch.zeros(4, 2, 3, 3)), (3, 7, 7), "Conv2d expects 2 input channels, got 3"),
    (Conv2d(torch.zeros(4, 2, 3, 3)), (2, 2, 2), "Conv2d output would be empty"),
    (Conv2d(torch.zeros(4, 2, 3, 3)), (2, 7), r"Conv2d expects a \(C, H, W\) input"),
    (ConstAdd(torch.zeros(5)), (3,), "does not broadcast"),
    (ConstMul(torch.zeros(2, 3)), (3,), "would enlarge"),
    (BatchNorm(torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3)), (4, 2), "BatchNorm over 3 channels"),
    (Normalize(torch.zeros(2), torch.zeros(2)), (2,), "std has a zero entry"),
    (AvgPool2d(4), (3, 2, 2), "AvgPool2d output would be empty"),
    (MaxPool2d(2, 1, 2), (3, 5, 5), "padding must be at most half the kernel"),
    (Reshape((7,)), (2, 3), r"Reshape cannot turn \(2, 3\) into \(7,\)"),
])
def test_bad_shapes_name_network_node_and_op(op, in_shape, message):
    with pytest.raises(IRError, match=rf"mynet: node 'bad' \({op.kind}\): .*{message}"):
        Network(in_shape, [Node("ok", Identity(), ("input",)), Node("bad", op, ("ok",))], name="mynet")


def test_bad_wiring_names_node():
    with pytest.raises(IRError, match=r"net: node 'a' \(ReLU\) uses 'nowhere'"):
        Network((3,), [Node("a", ReLU(), ("nowhere",))], name="net")
    with pytest.raises(IRError, match="duplicate node name 'a'"):
        Network((3,), [Node("a", ReLU(), ("input",)), Node("a", Tanh(), ("a",))], name="net")
    with pytest.raises(IRError, match=r"node 's' \(Sub\) takes 2 inputs, got 1"):
        Network((3,), [Node("s", Sub(), ("input",))], name="net")
    with pytest.raises(IRError, match=r"node 'p' \(Add\): Add needs equal shapes, got \(3,\) and \(2,\)"):
        Network((3,), [Node("l", Linear(torch.zeros(2, 3)), ("input",)), Node("p", Add(), ("input", "l"))])
    with pytest.raises(IRError, match=r"node 'c' \(Concat\): Concat along axis 0: shapes \(2, 3\) and \(3, 2\)"):
        Network((2, 3), [Node("l", Reshape((2, 3)), ("input",)), Node("f", Reshape((3, 2)), ("input",)),
                         Node("c", Concat(0), ("l", "f"))])
    with pytest.raises(IRError, match="output 'zzz' is not a node"):
        Network((3,), [Node("a", ReLU(), ("input",))], output="zzz")
    with pytest.raises(IRError, match="at least one node"):
        Network((3,), [])


def test_wrong_input_batch_shape_is_reported():
    net = sequential((3, 4), [Flatten()], name="flat")
    with pytest.raises(IRError, match=r"flat: input of shape \(2, 12\) does not fit \(batch, 3, 4\)"):
        net(torch.zeros(2, 12))


def test_network_helpers_and_dtype():
    net = sequential((4,), [Linear(torch.randn(6, 4), torch.randn(6)), ReLU(), Linear(torch.randn(2, 6))])
    assert net.num_relus() == 6 and net.num_params() == 24 + 6 + 12
    assert "Linear 4->6" in net.summary() and "6 ReLUs" in net.summary()
    d = net.to(torch.float64)
    assert d.dtype == torch.float64
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(d(x), net(x.float()).double(), atol=1e-5)
    assert [n.name for n in net.consumers("n1")] == ["n2"]
