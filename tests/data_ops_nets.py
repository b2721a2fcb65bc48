"""Helpers (no tests): small float64 IR networks, one per data-movement / reduction op (each op
between ReLU layers, so that bounds are not trivially exact), and a residual-like network whose
branches are slices of one tensor concatenated back."""
from __future__ import annotations

import math

import torch

from certify.ir import (Add, Concat, ConvTranspose2d, Conv2d, Flatten, Gather, Linear, Network, Node, Pad,
                        ReduceMean, ReduceSum, ReLU, Reshape, Slice, Transpose, sequential)

DT = torch.float64


def _r(*shape, scale=1.0):
    return torch.randn(*shape, dtype=DT) * scale


def _lin(n_in, n_out):
    return Linear(_r(n_out, n_in, scale=1.5 * n_in ** -0.5), _r(n_out, scale=0.3))


def _around(ops, shape, n_in=5, n_out=3):
    """Linear -> ReLU -> Reshape(shape) -> ops -> ReLU -> Flatten -> Linear."""
    inner = sequential((n_in,), [_lin(n_in, math.prod(shape)), ReLU(), Reshape(shape)] + list(ops) + [ReLU(), Flatten()])
    return sequential((n_in,), list(n.op for n in inner.nodes) + [_lin(inner.output_size, n_out)])


def slice_net(seed=0):
    torch.manual_seed(seed)
    return _around([Slice(0, 3, -1, -2), Slice(1, 1, 6, 2)], (4, 6))          # reversed rows, every other column


def gather_net(seed=0):
    torch.manual_seed(seed)
    return _around([Gather(1, (4, 0, 0, 2, 5, 1), (2, 3))], (3, 6))            # repeats an index


def transpose_net(seed=0):
    torch.manual_seed(seed)
    return _around([Transpose((2, 0, 1))], (2, 3, 4))


def pad_net(seed=0):
    torch.manual_seed(seed)
    return _around([Pad(((1, 0), (-1, 2)), 0.5)], (3, 4))                    # a nonzero value, a cut


def reduce_net(seed=0):
    torch.manual_seed(seed)
    return _around([ReduceSum((1,), True), ReduceMean((0,))], (3, 4, 2))


def conv_transpose_net(seed=0):
    torch.manual_seed(seed)
    ops = [Conv2d(_r(3, 1, 3, 3, scale=0.5), _r(3, scale=0.2), padding=1), ReLU(),
           ConvTranspose2d(_r(3, 2, 3, 3, scale=0.4), _r(2, scale=0.2), stride=2, padding=1, output_padding=1),
           ReLU(), Flatten(), _lin(2 * 8 * 8, 3)]
    return sequential((1, 4, 4), ops, name="convT")


def branches_net(seed=0):
    """Residual-like: two slices of one hidden layer, concatenated in the other order and
    added back to it, then a transpose into the last layer."""
    torch.manual_seed(seed)
    nodes = [Node("a", _lin(4, 8), ("input",)), Node("ra", ReLU(), ("a",)),
             Node("lo", Slice(0, 0, 3, 1), ("ra",)), Node("hi", Slice(0, 3, 8, 1), ("ra",)),
             Node("lo2", Linear(_r(3, 3)), ("lo",)), Node("rlo", ReLU(), ("lo2",)),
             Node("cat", Concat(0), ("hi", "rlo")), Node("sum", Add(), ("cat", "a")),
             Node("rs", ReLU(), ("sum",)), Node("m", Reshape((2, 4)), ("rs",)), Node("t", Transpose((1, 0)), ("m",)),
             Node("f", Flatten(), ("t",)), Node("out", _lin(8, 3), ("f",))]
    return Network((4,), nodes, name="branches")


NETS = {"slice": slice_net, "gather": gather_net, "transpose": transpose_net, "pad": pad_net,
        "reduce": reduce_net, "conv_transpose": conv_transpose_net, "branches": branches_net}
