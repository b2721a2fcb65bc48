"""torch.fx front end: IR forward == module forward (eval semantics), parameters shared,
unsupported constructs rejected naming the fx node."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from certify.errors import CertifyError
from certify.frontends.torch import from_module
from certify.ir import Add, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, IRError, Linear, MaxPool2d, Sub

TOL = 1e-5


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _agree(model: nn.Module, shape, n=6) -> "Network":  # noqa: F821
    model.eval()
    net = from_module(model, shape)
    x = torch.randn((n,) + tuple(shape))
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max().item() < TOL
    return net


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding="same")
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = ResBlock(8)
        self.pool = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.stem(self.norm(x)))
        x = self.pool(self.block(x))
        x = x.view(x.size(0), -1)
        return self.fc(self.drop(x))


def test_mlp_matches_and_references_parameters():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 20), nn.Tanh(),
                          nn.Linear(20, 5), nn.Sigmoid())
    net = _agree(model, (1, 4, 4))
    linears = [n.op for n in net.nodes if isinstance(n.op, Linear)]
    assert [op.weight is m.weight for op, m in zip(linears, [model[1], model[3], model[5]])] == [True] * 3


def test_cnn_with_batchnorm_running_stats():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    _randomize_bn(model)
    net = _agree(model, (1, 8, 8))
    assert sum(isinstance(n.op, BatchNorm) for n in net.nodes) == 3
    assert sum(isinstance(n.op, MaxPool2d) for n in net.nodes) == 1


def test_residual_net_with_normalize_module():
    model = ResNet()
    _randomize_bn(model)
    net = _agree(model, (3, 8, 8))
    kinds = [type(n.op) for n in net.nodes]
    assert Add in kinds and ConstAdd in kinds and ConstMul in kinds
    # (x - mean) / std traced to exact per-channel constants
    sub = next(n.op for n in net.nodes if isinstance(n.op, ConstAdd))
    assert torch.allclose(sub.const.reshape(-1), -torch.tensor([0.5, 0.4, 0.3]))


def test_train_mode_module_gets_eval_semantics():
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.9), nn.ReLU(), nn.Linear(8, 2))
    _randomize_bn(model)
    model.train()
    net = from_module(model, (6,))
    assert model.training  # not modified
    x = torch.randn(5, 6)
    model.eval()
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max().item() < TOL


class Functional(nn.Module):
    """sigmoid/tanh, constants on both sides, cat, functional pools, a Linear on a non-flat tensor."""

    def __init__(self, reduce: bool = False):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(4, 1, 1) + 0.5)
        self.fc = nn.Linear(2, 3)
        self.reduce = reduce

    def forward(self, x):                                   # x: (B, 4, 2, 4)
        a = torch.sigmoid(x) * self.scale
        b = 2.0 - x.tanh() / 3
        c = torch.cat([a, b], dim=1)                        # (B, 8, 2, 4)
        d = F.max_pool2d(c, 2) + F.avg_pool2d(c, kernel_size=2)
        d = torch.sub(d, F.relu(-d))                        # (B, 8, 1, 2)
        e = d.reshape(d.shape[0], 8, -1)                    # (B, 8, 2)
        if self.reduce:
            e = e.cumsum(2)
        f = F.dropout(self.fc(e), 0.3, training=False) * 0.5   # (B, 8, 3)
        return torch.flatten(f, 1)


def test_functional_ops_cat_constants_and_views():
    net = _agree(Functional(), (4, 2, 4))
    kinds = {type(n.op) for n in net.nodes}
    assert {Concat, Sub, MaxPool2d, ConstMul, ConstAdd, Linear}.issubset(kinds)
    assert net.output_shape == (24,)
    with pytest.raises(IRError, match=r"fx node 'cumsum\w*' \(method .cumsum\(\)\)"):
        from_module(Functional(reduce=True), (4, 2, 4))


def test_gradient_flows_to_module_weights():
    model = ResNet()
    net = from_module(model, (3, 8, 8))
    net(torch.rand(2, 3, 8, 8)).square().sum().backward()
    for p in (model.stem.weight, model.block.conv1.weight, model.block.bn2.weight, model.fc.weight, model.fc.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the IR holds the module's parameter objects, so an optimizer step is seen by the IR
    with torch.no_grad():
        model.fc.bias.add_(1.0)
        model.eval()
        x = torch.rand(3, 3, 8, 8)
        assert (net(x) - model(x)).abs().max().item() < TOL


def test_unsupported_function_names_fx_node():
    class Erf(nn.Module):
        def forward(self, x):
            return torch.erf(x)

    with pytest.raises(IRError, match=r"Erf: fx node 'erf' \(function torch.erf\).*not supported"):
        from_module(Erf(), (5,))


def test_unsupported_module_names_module():
    with pytest.raises(IRError, match=r"fx node '_1' \(module 1 : GELU\): module type GELU"):
        from_module(nn.Sequential(nn.Linear(3, 3), nn.GELU()), (3,))


def test_batch_mixing_and_nonlinear_products_rejected():
    class FixedBatch(nn.Module):
        def forward(self, x):
            return x.view(1, -1)

    class Flat0(nn.Module):
        def forward(self, x):
            return torch.flatten(x)

    class Prod(nn.Module):
        def forward(self, x):
            return x * torch.relu(x).flatten(1)

    class Inv(nn.Module):
        def forward(self, x):
            return 2.0 ** x

    with pytest.raises(IRError, match="first dim must be the batch size"):
        from_module(FixedBatch(), (4,))
    with pytest.raises(IRError, match="start_dim=0"):
        from_module(Flat0(), (2, 2))
    with pytest.raises(IRError, match="different ranks"):
        from_module(Prod(), (2, 2))
    with pytest.raises(IRError, match="pow is supported for a network tensor base"):
        from_module(Inv(), (4,))


def test_shape_mismatch_names_node():
    with pytest.raises(IRError, match=r"fx node '_1' \(module 1 : Linear\): weight of shape \(2, 7\) does not fit "
                                      r"input shape \(5,\)"):
        from_module(nn.Sequential(nn.Linear(3, 5), nn.Linear(7, 2)), (3,))


def test_untraceable_module_is_a_certify_error():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(CertifyError, match="torch.fx cannot trace"):
        from_module(Branchy(), (3,))


def test_conv_same_padding_and_groups():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding="same", groups=2), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, dilation=1, padding="valid"))
    net = _agree(model, (4, 7, 7))
    convs = [n.op for n in net.nodes if isinstance(n.op, Conv2d)]
    assert convs[0].padding == (1, 1) and convs[0].groups == 2 and convs[1].padding == (0, 0)


class InplaceBlock(nn.Module):
    """torchvision-style: ReLU(inplace=True), ``out += identity``, ``out.mul_(2)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.conv(x))
        out += x
        out.mul_(2)            # later uses of `out` see the doubled value
        return self.relu(out) - x


def test_inplace_ops_without_aliasing():
    _agree(InplaceBlock(), (3, 4, 4))


def test_aliasing_is_rejected_not_mistranslated():
    class Alias(nn.Module):            # fx records `z += 1` as out-of-place: caught by the check
        def forward(self, x):
            y = x * 1
            z = y
            z += 1
            return torch.relu_(y) + z

    class ViewAlias(nn.Module):
        def forward(self, x):
            y = x.view(x.size(0), -1)
            y.add_(1)
            return x.flatten(1) * 2 + y

    with pytest.raises(IRError, match="differs from module.forward"):
        from_module(Alias(), (3,))
    with pytest.raises(IRError, match=r"fx node 'add_' .*in-place op on 'view', which is a view"):
        from_module(ViewAlias(), (3,))
