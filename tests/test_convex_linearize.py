"""Linearization of IR networks into affine maps between ReLU layers: exact against
``Network.forward`` on conv / batch-norm / pooling / residual / concat nets; clear errors."""
import numpy as np
import pytest
import torch

from certify.convex import linearize, lp
from certify.solvers.linearize import PiecewiseLinear
from certify.errors import CertifyError
from certify.ir import (Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, Flatten, Linear, MaxPool2d,
                        Network, Node, Normalize, ReLU, Reshape, sequential)


def evaluate(pl: PiecewiseLinear, x: np.ndarray) -> np.ndarray:
    """Forward pass of the linearized network (x: (n0,))."""
    z = [x]
    for layer in pl.layers:
        pre = layer.pre.const + sum(T @ z[j] for j, T in layer.pre.terms.items())
        z.append(np.maximum(pre, 0))
    return pl.output.const + sum(T @ z[j] for j, T in pl.output.terms.items())


def conv_net():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    nodes = [
        Node("norm", Normalize(torch.tensor([0.4, 0.5]), torch.tensor([0.3, 0.2])), ("input",)),
        Node("c1", Conv2d(r(4, 2, 3, 3), r(4), stride=2, padding=1), ("norm",)),
        Node("bn", BatchNorm(r(4), r(4).abs() + 0.5, r(4), r(4)), ("c1",)),
        Node("r1", ReLU(), ("bn",)),
        Node("c2", Conv2d(r(4, 2, 3, 3), None, padding=1, groups=2), ("r1",)),
        Node("add", Add(), ("c2", "bn")),                       # residual across the ReLU
        Node("r2", ReLU(), ("add",)),
        Node("pool", AvgPool2d(2), ("r2",)),
        Node("pool2", AvgPool2d(2, padding=0), ("r2",)),
        Node("cat", Concat(axis=0), ("pool", "pool2")),
        Node("mul", ConstMul(r(8, 1, 1)), ("cat",)),
        Node("sh", ConstAdd(r(1, 2, 2)), ("mul",)),
        Node("flat", Flatten(), ("sh",)),
        Node("fc", Linear(r(5, 32), r(5)), ("flat",)),
        Node("r3", ReLU(), ("fc",)),
        Node("rs", Reshape((5,)), ("r3",)),
        Node("out", Linear(r(3, 5), r(3)), ("rs",)),
    ]
    return Network((2, 8, 8), nodes)


def test_linearization_is_exact():
    net = conv_net().to(torch.float64)
    pl = linearize(net)
    assert [l.node for l in pl.layers] == ["r1", "r2", "r3"]
    assert [l.pre_node for l in pl.layers] == ["bn", "add", "fc"]
    assert not pl.is_chain()
    x = torch.rand(20, 2, 8, 8, dtype=torch.float64)
    want = net(x).numpy()
    got = np.stack([evaluate(pl, xi.flatten().numpy()) for xi in x])
    assert np.abs(got - want).max() < 1e-10


def test_mlp_is_a_chain():
    net = sequential((1, 3, 3), [Flatten(), Linear(torch.randn(4, 9)), ReLU(), Linear(torch.randn(2, 4))])
    pl = linearize(net)
    assert pl.is_chain() and pl.sizes == [9, 4]


def test_lp_runs_on_the_residual_conv_net_and_stays_below_samples():
    net = conv_net()
    x = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    r = lp(net, x, eps=0.01, bounds_method="crown", domain=(0.0, 1.0))
    assert all(s == "optimal" for s in r.status[0])
    pts = torch.rand(2000, 2, 8, 8, dtype=torch.float64) * 0.02 - 0.01 + x.double()
    vals = net.to(torch.float64)(pts.clamp(0, 1))
    assert bool((vals.min(0).values >= r.lower[0] - 1e-9).all())


def test_unsupported_op_is_named():
    net = sequential((1, 4, 4), [MaxPool2d(2), Flatten(), Linear(torch.randn(2, 4))], name="pooled.onnx")
    with pytest.raises(CertifyError, match=r"n0.*pooled.onnx.*MaxPool2d"):
        linearize(net)
