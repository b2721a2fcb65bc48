"""Small random IR networks for the tests (float64 unless told): random ReLU MLPs, a CNN with
BatchNorm, a residual CNN, a network using every other op, and the identity ReLU network on
which margins tie exactly."""
from __future__ import annotations

import numpy as np
import torch

from certify.ir import (Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, Flatten, Identity,
                        Linear, MaxPool2d, Network, Node, Normalize, ReLU, Reshape, Sigmoid, Sub, Tanh,
                        sequential)

DT = torch.float64


def random_mlp(sizes, g=None, bias_scale: float = 0.3, normalize: bool = True, dtype=torch.float32,
               name: str = "network", gain: float | None = None, input_shape=None, head=()) -> Network:
    """A ReLU MLP with layer widths ``sizes``: per layer W (out, in) ~ N(0, 1), then b ~ N(0, 1)
    times ``bias_scale``, drawn in that order from ``g``: an int (the seed of a fresh
    torch.Generator), a torch.Generator, a numpy Generator (drawn in float64, then cast), or None
    (torch's global generator). W is divided by sqrt(fan-in) when ``normalize``, or multiplied
    by fan-in^-1/2 * ``gain`` when ``gain`` is given. ``input_shape``: a per-sample shape that
    is flattened first (after the ops ``head``); default ``(sizes[0],)``."""
    if isinstance(g, int):
        g = torch.Generator().manual_seed(g)
    ops = list(head) + ([Flatten()] if input_shape is not None else [])
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if isinstance(g, np.random.Generator):
            w = g.normal(size=(b, a))
            w = torch.tensor(w / np.sqrt(a) if normalize else w, dtype=dtype)
            bias = torch.tensor(g.normal(size=b) * bias_scale, dtype=dtype)
        else:
            w = torch.randn(b, a, generator=g, dtype=dtype)
            w = w * (a ** -0.5 * gain) if gain is not None else (w / a ** 0.5 if normalize else w)
            bias = torch.randn(b, generator=g, dtype=dtype) * bias_scale
        ops.append(Linear(w, bias))
        if k < len(sizes) - 2:
            ops.append(ReLU())
    return sequential(tuple(input_shape) if input_shape is not None else (sizes[0],), ops, name=name)


def unscaled_mlp(seed: int, widths) -> Network:
    """A float64 ReLU MLP with N(0, 1) weights and N(0, 0.25) biases (large, varied margins)."""
    return random_mlp(widths, seed, bias_scale=0.5, normalize=False, dtype=DT, name=f"net{seed}")


def tie_net() -> Network:
    """y = (relu(x0), relu(x1), 0) on 2 inputs: margins such as y0 - 0.6 reach exactly 0."""
    return sequential((2,), [Linear(torch.eye(3, 2, dtype=DT), torch.zeros(3, dtype=DT)), ReLU(),
                             Linear(torch.eye(3, dtype=DT), torch.zeros(3, dtype=DT))], name="tie")


def _r(*shape, scale=1.0):
    return torch.randn(*shape, dtype=DT) * scale


def mlp(seed=0, widths=(6, 12, 12, 4)) -> Network:
    """The bounds tests' float64 MLP: weights N(0, 2.25 / fan-in), biases N(0, 0.09)."""
    torch.manual_seed(seed)
    return random_mlp(widths, None, dtype=DT, name="mlp", gain=1.5)


def _bn(c):
    return BatchNorm(_r(c, scale=0.2), torch.rand(c, dtype=DT) + 0.5, 1 + _r(c, scale=0.2), _r(c, scale=0.2))


def cnn_bn(seed=0) -> Network:
    torch.manual_seed(seed)
    return sequential((1, 6, 6), [
        Conv2d(_r(3, 1, 3, 3, scale=0.6), _r(3, scale=0.2), 1, 1), _bn(3), ReLU(),
        Conv2d(_r(4, 3, 3, 3, scale=0.35), _r(4, scale=0.2), 2, 1), _bn(4), ReLU(),
        Flatten(), Linear(_r(4, 36, scale=0.3), _r(4, scale=0.2)),
    ], name="cnn_bn")


def resnet(seed=0) -> Network:
    torch.manual_seed(seed)
    nodes = [
        Node("c0", Conv2d(_r(3, 2, 3, 3, scale=0.5), _r(3, scale=0.2), 1, 1), ("input",)),
        Node("r0", ReLU(), ("c0",)),
        Node("c1", Conv2d(_r(3, 3, 3, 3, scale=0.35), _r(3, scale=0.2), 1, 1), ("r0",)),
        Node("b1", _bn(3), ("c1",)),
        Node("r1", ReLU(), ("b1",)),
        Node("c2", Conv2d(_r(3, 3, 3, 3, scale=0.35), None, 1, 1), ("r1",)),
        Node("add", Add(), ("c2", "r0")),
        Node("r2", ReLU(), ("add",)),
        Node("c3", Conv2d(_r(4, 3, 2, 2, scale=0.4), _r(4, scale=0.2), 2, 0), ("r2",)),
        Node("r3", ReLU(), ("c3",)),
        Node("f", Flatten(), ("r3",)),
        Node("out", Linear(_r(3, 16, scale=0.3), _r(3, scale=0.2)), ("f",)),
    ]
    return Network((2, 5, 5), nodes, name="resnet")


def mixed(seed=0) -> Network:
    """Normalize, ConstMul/ConstAdd, Conv, MaxPool, Tanh, AvgPool, Sigmoid, Concat, Sub, Reshape, Identity."""
    torch.manual_seed(seed)
    nodes = [
        Node("norm", Normalize(torch.tensor([0.4, 0.5], dtype=DT), torch.tensor([0.3, 0.25], dtype=DT)), ("input",)),
        Node("cm", ConstMul(_r(2, 1, 1, scale=0.5).abs() + 0.5), ("norm",)),
        Node("ca", ConstAdd(_r(2, 6, 6, scale=0.1)), ("cm",)),
        Node("conv", Conv2d(_r(3, 2, 3, 3, scale=0.4), _r(3, scale=0.2), 1, 1), ("ca",)),
        Node("mp", MaxPool2d(2, 2), ("conv",)),
        Node("th", Tanh(), ("mp",)),
        Node("ap", AvgPool2d(2, 1, 1, count_include_pad=False), ("conv",)),
        Node("rl", ReLU(), ("ap",)),
        Node("mp2", MaxPool2d(3, 3, 1), ("rl",)),
        Node("cat", Concat(0), ("th", "mp2")),
        Node("id", Identity(), ("cat",)),
        Node("flat", Reshape((54,)), ("id",)),
        Node("l1", Linear(_r(8, 54, scale=0.3), _r(8, scale=0.2)), ("flat",)),
        Node("sg", Sigmoid(), ("l1",)),
        Node("l2", Linear(_r(8, 54, scale=0.3), None), ("flat",)),
        Node("sub", Sub(), ("sg", "l2")),
        Node("rs", ReLU(), ("sub",)),
        Node("out", Linear(_r(3, 8, scale=0.5), _r(3, scale=0.2)), ("rs",)),
    ]
    return Network((2, 6, 6), nodes, name="mixed")


def _lin(g, a, b, gain=1.5, bias=0.3):
    return Linear(torch.randn(b, a, generator=g, dtype=DT) * gain / a ** 0.5, torch.randn(b, generator=g, dtype=DT) * bias)


def residual_mlp(seed=0, n_in=2, width=8) -> Network:
    """``n_in`` inputs -> Linear, ReLU -> Linear, + the first ReLU's output (residual Add), ReLU -> 3 outputs."""
    g = torch.Generator().manual_seed(seed)
    nodes = [Node("l0", _lin(g, n_in, width), ("input",)), Node("r0", ReLU(), ("l0",)),
             Node("l1", _lin(g, width, width), ("r0",)), Node("add", Add(), ("l1", "r0")),
             Node("r1", ReLU(), ("add",)), Node("out", _lin(g, width, 3), ("r1",))]
    return Network((n_in,), nodes, name="residual_mlp")


def maxpool_2d(seed=0) -> Network:
    """2 inputs -> Linear to a 1x4x4 image, Conv 2x2 (2 channels), ReLU, MaxPool 2 (stride 1),
    then a residual branch (Add of the pooled image and a conv of it), Flatten -> 3 outputs."""
    g = torch.Generator().manual_seed(seed)
    conv = Conv2d(torch.randn(2, 1, 2, 2, generator=g, dtype=DT) * 0.8, torch.randn(2, generator=g, dtype=DT) * 0.2)
    conv2 = Conv2d(torch.randn(2, 2, 1, 1, generator=g, dtype=DT) * 0.7, None)
    nodes = [Node("l0", _lin(g, 2, 16), ("input",)), Node("img", Reshape((1, 4, 4)), ("l0",)),
             Node("c0", conv, ("img",)), Node("r0", ReLU(), ("c0",)), Node("mp", MaxPool2d(2, 1), ("r0",)),
             Node("c1", conv2, ("mp",)), Node("add", Add(), ("c1", "mp")), Node("f", Flatten(), ("add",)),
             Node("out", _lin(g, 8, 3), ("f",))]
    return Network((2,), nodes, name="maxpool_2d")


def smooth_2d(seed=0, act=Sigmoid, widths=(2, 6, 6, 3), gain=1.5) -> Network:
    """A 2-input MLP with the activation ``act`` (Sigmoid or Tanh) between layers."""
    g = torch.Generator().manual_seed(seed)
    ops = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        ops.append(_lin(g, a, b, gain, 0.5))
        if k < len(widths) - 2:
            ops.append(act())
    return sequential((widths[0],), ops, name=f"{act.__name__.lower()}_2d")


ALL = {"mlp": mlp, "cnn_bn": cnn_bn, "resnet": resnet, "mixed": mixed}


def centers(net, B=2, seed=1):
    """B input points of ``net`` in [0.1, 0.9] (float64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((B,) + net.input_shape, generator=g, dtype=DT) * 0.8 + 0.1
