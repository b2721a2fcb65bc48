"""CROWN's memory and time bounds: chunked backward passes give the same bounds as whole ones,
the transposed-convolution window rule equals dense rows, alpha-CROWN within a memory budget
stays sound and never looser than CROWN, and deadlines stop a bound computation."""
from __future__ import annotations

import sys
import time

import pytest
import torch

import bounds
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from data_ops_nets import conv_transpose_net
from helpers.networks import ALL, centers

NETS = dict(ALL, conv_transpose=conv_transpose_net)


def _crown_all(net, x, norm, patches=True):
    s = ball(x, 0.03, norm, domain=(0.0, 1.0))
    out = bounds.compute_bounds(net, s, method="crown", patches=patches)
    inter = bounds.intermediate_bounds(net, s, "crown", patches=patches)
    return out, inter


@pytest.mark.parametrize("name", sorted(NETS))
def test_chunked_backward_passes_give_the_same_bounds(monkeypatch, name):
    """With a row budget of 64 elements every backward pass is split over rows and batch
    elements (``BatchSlice``), for L-inf, L2 and L1 balls: the bounds equal the unsplit ones."""
    crown_mod = sys.modules["bounds.crown"]
    net = NETS[name]()
    x = centers(net, B=3)
    for norm in ("inf", "2", "1"):
        a, ia = _crown_all(net, x, norm)
        monkeypatch.setattr(crown_mod, "ROW_BUDGET", 64)
        b, ib = _crown_all(net, x, norm)
        monkeypatch.undo()
        assert torch.allclose(a.lower, b.lower, atol=1e-10) and torch.allclose(a.upper, b.upper, atol=1e-10), norm
        for k in ia:
            assert torch.allclose(ia[k].lower, ib[k].lower, atol=1e-10), (norm, k)
            assert torch.allclose(ia[k].upper, ib[k].upper, atol=1e-10), (norm, k)


def test_transposed_convolution_windows_equal_dense_rows():
    """Rows that reach a ConvTranspose2d as receptive-field windows (its patch rule) give the
    bounds of dense rows, and every sampled output lies inside them."""
    net = conv_transpose_net(3)
    x = centers(net, B=2)
    a, ia = _crown_all(net, x, "inf")
    b, ib = _crown_all(net, x, "inf", patches=False)
    assert torch.allclose(a.lower, b.lower, atol=1e-10) and torch.allclose(a.upper, b.upper, atol=1e-10)
    for k in ia:
        assert torch.allclose(ia[k].lower, ib[k].lower, atol=1e-10), k
    g = torch.Generator().manual_seed(0)
    pts = (x.unsqueeze(1) + (torch.rand((2, 400) + net.input_shape, generator=g, dtype=x.dtype) * 2 - 1) * 0.03)
    y = net(pts.clamp(0, 1).flatten(0, 1)).reshape(2, 400, -1)
    assert (y >= a.lower.unsqueeze(1) - 1e-9).all() and (y <= a.upper.unsqueeze(1) + 1e-9).all()


def test_alpha_within_a_memory_budget(monkeypatch):
    """A budget of 0 bytes leaves nothing to optimize: alpha-CROWN returns CROWN's bound. A budget
    that holds only the spec pass optimizes the final slopes but keeps CROWN's intermediate bounds:
    never looser than CROWN, never above a sampled margin, at most as tight as the full alpha."""
    mem = sys.modules["bounds.memory"]
    net = ALL["resnet"]()
    x = centers(net, B=2)
    y = net(x).argmax(1)
    C = robustness_matrix(y, net.output_size, dtype=x.dtype)
    s = ball(x, 0.05, "inf", domain=(0.0, 1.0))
    crown = bounds.compute_bounds(net, s, C, method="crown", upper=False).lower
    full = bounds.compute_bounds(net, s, C, method="alpha", upper=False, iterations=10).lower
    monkeypatch.setattr(mem, "ALPHA_BUDGET", 0)
    none = bounds.compute_bounds(net, s, C, method="alpha", upper=False, iterations=10).lower
    assert torch.allclose(none, crown, atol=1e-12)
    spec_only = mem.GRAPH_FACTOR * x.element_size() * mem.spec_volume(net, 2, C.shape[1], False)
    monkeypatch.setattr(mem, "ALPHA_BUDGET", spec_only)
    part = bounds.compute_bounds(net, s, C, method="alpha", upper=False, iterations=10).lower
    g = torch.Generator().manual_seed(1)
    pts = (x.unsqueeze(1) + (torch.rand((2, 500) + net.input_shape, generator=g, dtype=x.dtype) * 2 - 1) * 0.05)
    margins = torch.einsum("brk,bnk->bnr", C, net(pts.clamp(0, 1).flatten(0, 1)).reshape(2, 500, -1))
    assert (part >= crown - 1e-9).all() and (part <= full + 1e-9).all()
    assert (part.unsqueeze(1) <= margins + 1e-9).all()


def test_deadlines_stop_bound_computations():
    """A deadline already past: CROWN and alpha-CROWN's first pass raise ``BoundTimeout``; a
    deadline far away changes nothing."""
    net = ALL["cnn_bn"]()
    x = centers(net, B=2)
    s = ball(x, 0.02, "inf", domain=(0.0, 1.0))
    for method in ("crown", "alpha"):
        with pytest.raises(bounds.BoundTimeout):
            bounds.compute_bounds(net, s, method=method, deadline=time.monotonic() - 1.0)
    a = bounds.compute_bounds(net, s, method="crown")
    b = bounds.compute_bounds(net, s, method="crown", deadline=time.monotonic() + 600)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
