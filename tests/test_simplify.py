"""simplify(net): same function (max abs diff < 1e-5 on random inputs), fewer nodes, and no fold
where it would be wrong (zero padding after a shift, shared intermediate values)."""
from __future__ import annotations

import random

import pytest
import torch

from certify.ir import (Add, AvgPool2d, BatchNorm, ConstAdd, ConstMul, Conv2d, Flatten, Identity, Linear, MaxPool2d,
                        Network, Node, Normalize, ReLU, Reshape, Sigmoid, Sub, Tanh, sequential)
from certify.ir.simplify import simplify

TOL = 1e-5


def _bn(c):
    return BatchNorm(torch.randn(c) * 0.5, torch.rand(c) + 0.5, torch.rand(c) + 0.5, torch.randn(c) * 0.5)


def _norm(c):
    return Normalize(torch.rand(c), torch.rand(c) * 0.5 + 0.5)


def _lin(i, o):
    return Linear(torch.randn(o, i) / i ** 0.5, torch.randn(o) * 0.1)


def _conv(i, o, k=3, p=1, s=1, bias=True):
    return Conv2d(torch.randn(o, i, k, k) / (i * k * k) ** 0.5, torch.randn(o) * 0.1 if bias else None, s, p)


def _same(a: Network, b: Network, n=16):
    x = torch.rand((n,) + a.input_shape) * 2 - 0.5
    assert a.output_shape == b.output_shape
    assert (a(x) - b(x)).abs().max().item() < TOL


def _kinds(net):
    return [type(n.op) for n in net.nodes]


def test_mlp_folds_to_linear_relu_linear():
    net = sequential((3, 4, 4), [_norm(3), Flatten(), _lin(48, 16), _bn(16), ReLU(), _lin(16, 10),
                                 ConstMul(torch.rand(10) + 0.5), ConstAdd(torch.randn(10)), _lin(10, 5), Identity()])
    s = simplify(net)
    _same(net, s)
    assert _kinds(s) == [Flatten, Linear, ReLU, Linear]


def test_conv_batchnorm_and_normalize_folds():
    net = sequential((3, 8, 8), [_norm(3), _conv(3, 6, p=0, bias=False), _bn(6), ReLU(), _conv(6, 6, p=1), _bn(6),
                                 ReLU(), Flatten(), _lin(6 * 6 * 6, 10)])
    s = simplify(net)
    _same(net, s)
    assert _kinds(s) == [Conv2d, ReLU, Conv2d, ReLU, Flatten, Linear]


def test_shift_not_folded_into_zero_padded_conv():
    """(x - mean) / std before a padded conv: the scale folds, the shift must stay (zero padding)."""
    net = sequential((3, 6, 6), [_norm(3), _conv(3, 4, p=1), ReLU()])
    s = simplify(net)
    _same(net, s)
    assert ConstAdd in _kinds(s) or Normalize in _kinds(s)
    # a pure scale folds even with padding
    net2 = sequential((3, 6, 6), [ConstMul(torch.rand(3, 1, 1) + 0.5), _conv(3, 4, p=1), ReLU()])
    s2 = simplify(net2)
    _same(net2, s2)
    assert _kinds(s2) == [Conv2d, ReLU]


def test_spatially_varying_constant_not_folded_into_conv():
    net = sequential((2, 5, 5), [_conv(2, 3, p=0), ConstAdd(torch.randn(3, 3, 3)), ReLU()])
    s = simplify(net)
    _same(net, s)
    assert ConstAdd in _kinds(s)


def test_shared_values_are_not_folded():
    """A Linear whose output is used twice keeps its own node; a residual BN folds into its conv."""
    nodes = [Node("l1", _lin(4, 6), ("input",)), Node("bn", _bn(6), ("l1",)), Node("r", ReLU(), ("l1",)),
             Node("add", Add(), ("bn", "r")), Node("l2", _lin(6, 3), ("add",))]
    net = Network((4,), nodes)
    s = simplify(net)
    _same(net, s)
    assert _kinds(s).count(Linear) == 2 and BatchNorm in _kinds(s)

    nodes = [Node("c0", _conv(2, 4), ("input",)), Node("r0", ReLU(), ("c0",)), Node("c1", _conv(4, 4), ("r0",)),
             Node("bn", _bn(4), ("c1",)), Node("add", Add(), ("bn", "r0")), Node("r1", ReLU(), ("add",))]
    net = Network((2, 5, 5), nodes)
    s = simplify(net)
    _same(net, s)
    assert BatchNorm not in _kinds(s) and len(s.nodes) == 5


def test_bottleneck_linears_not_merged_into_a_bigger_matrix():
    net = sequential((100,), [_lin(100, 2), _lin(2, 100)])
    s = simplify(net)
    _same(net, s)
    assert len(s.nodes) == 2


def test_identity_only_network_and_dead_nodes():
    net = sequential((3,), [Identity()])
    s = simplify(net)
    assert len(s.nodes) == 1
    _same(net, s)
    nodes = [Node("dead", _lin(3, 7), ("input",)), Node("t", Tanh(), ("input",)), Node("id", Identity(), ("t",))]
    s = simplify(Network((3,), nodes))
    assert [n.name for n in s.nodes] == ["t"] and s.output == "t"


def test_output_of_simplify_is_not_shared_with_folded_tensors():
    lin = _lin(4, 4)
    w0 = lin.weight.clone()
    net = sequential((4,), [lin, ConstMul(torch.full((4,), 3.0))])
    simplify(net)
    assert torch.equal(lin.weight, w0)


ELEMENTWISE = ("bn", "norm", "mul", "add")


def _random_chain(rng: random.Random) -> Network:
    """A random chain over (C, 6, 6) then flat, with affine ops sprinkled between layers."""
    c = rng.choice([1, 2, 3])
    ops, shape = [], (c, 6, 6)

    def elementwise(shape):
        kind = rng.choice(ELEMENTWISE)
        ch = shape[0]
        if kind == "bn":
            return _bn(ch)
        if kind == "norm":
            return _norm(ch)
        per = rng.random() < 0.5
        size = (ch,) + (1,) * (len(shape) - 1) if per else shape
        return ConstMul(torch.rand(size) + 0.5) if kind == "mul" else ConstAdd(torch.randn(size) * 0.3)

    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.7:
            ops.append(elementwise(shape))
        o, p = rng.choice([2, 4]), rng.choice([0, 1])
        ops.append(_conv(shape[0], o, k=3, p=p))
        shape = (o, shape[1] + 2 * p - 2, shape[2] + 2 * p - 2)
        if shape[1] < 3:
            break
        if rng.random() < 0.5:
            ops.append(elementwise(shape))
        ops.append(rng.choice([ReLU, Sigmoid, Tanh])())
    if rng.random() < 0.5:
        ops.append(elementwise(shape))
    ops.append(rng.choice([Flatten(), Reshape((shape[0] * shape[1] * shape[2],))]))
    n = shape[0] * shape[1] * shape[2]
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.6:
            ops.append(elementwise((n,)))
        m = rng.choice([5, 8])
        ops.append(_lin(n, m))
        n = m
        if rng.random() < 0.5:
            ops.append(rng.choice([ReLU, Identity])())
    return sequential((c, 6, 6), ops)


@pytest.mark.parametrize("seed", range(40))
def test_random_chains_keep_their_function(seed):
    torch.manual_seed(seed)
    net = _random_chain(random.Random(seed))
    s = simplify(net)
    _same(net, s)
    assert len(s.nodes) <= len(net.nodes)
    assert not any(isinstance(n.op, Identity) for n in s.nodes)


def test_pools_sub_and_concat_pass_through_unchanged():
    nodes = [Node("c", _conv(2, 4, p=1), ("input",)), Node("mp", MaxPool2d(2), ("c",)),
             Node("ap", AvgPool2d(2), ("c",)), Node("d", Sub(), ("mp", "ap")), Node("f", Flatten(), ("d",)),
             Node("l", _lin(16, 3), ("f",))]
    net = Network((2, 4, 4), nodes)
    s = simplify(net)
    _same(net, s)
    assert _kinds(s) == _kinds(net)
