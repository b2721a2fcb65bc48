"""The IBP fast paths: the stacked form on chain networks, the per-network plan, the cached
weights (invalidated by in-place updates, bypassed under autograd), and the spec folded into
the last Linear layer (sound, and never looser than bounding the outputs first)."""
from __future__ import annotations

import pytest
import torch

import bounds
from bounds.ibp import ibp_forward, ibp_node, interval_spec, plan
from certify.ir import Flatten, Linear, ReLU, Reshape, Sigmoid, sequential
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from helpers.networks import ALL, DT, centers, mlp


def _node_by_node(net, lo, hi):
    """IBP through the rule table, one node at a time (no plan, no stacked form)."""
    vals = {net.input_name: (lo, hi)}
    for n in net.nodes:
        vals[n.name] = ibp_node(n.op, [vals[i] for i in n.inputs])
    return vals[net.output]


def _chain(seed=0):
    torch.manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=DT) * 0.4   # noqa: E731
    return sequential((2, 3, 3), [Flatten(), Linear(r(300, 18), r(300)), ReLU(), Linear(r(250, 300), r(250)),
                                  Sigmoid(), Linear(r(5, 250), r(5))], name="chain")


@pytest.mark.parametrize("B", [1, 40])      # 40: the big layers switch to the centre/radius form
def test_stacked_chain_equals_rule_table(B):
    net = _chain()
    assert plan(net).chain is not None
    s = ball(centers(net, B=B), 0.05, domain=(0.0, 1.0))
    lo, hi = s.box()
    want = _node_by_node(net, lo, hi)
    got = ibp_forward(net, (lo, hi))[net.output]
    assert torch.allclose(got[0], want[0], atol=1e-10) and torch.allclose(got[1], want[1], atol=1e-10)
    # and it is sound: sampled outputs stay inside
    with torch.no_grad():
        y = net(s.sample(2000, torch.Generator().manual_seed(0)).reshape((-1,) + net.input_shape))
    y = y.reshape(2000, B, -1)
    assert (y >= got[0] - 1e-9).all() and (y <= got[1] + 1e-9).all()


def test_chain_ending_in_reshapes_before_the_output_layer():
    torch.manual_seed(3)
    net = sequential((6,), [Linear(torch.randn(8, 6, dtype=DT), torch.randn(8, dtype=DT)), ReLU(), Reshape((2, 4)),
                            Flatten(), Linear(torch.randn(3, 8, dtype=DT), torch.randn(3, dtype=DT))])
    assert plan(net).chain is not None
    s = ball(centers(net, B=2), 0.2, domain=None)
    lo, hi = _node_by_node(net, *s.box())
    b = bounds.ibp(net, input_set=s)
    assert torch.allclose(b.lower, lo) and torch.allclose(b.upper, hi)
    C = robustness_matrix(torch.tensor([0, 2]), 3, dtype=DT)
    f = bounds.ibp(net, input_set=s, C=C)
    u = interval_spec((lo, hi), C, None)
    assert (f.lower >= u[0] - 1e-10).all() and (f.upper <= u[1] + 1e-10).all()
    one = sequential((6,), [Flatten(), Linear(torch.randn(3, 6, dtype=DT), None)])   # stop right after the input
    w = one.nodes[-1].op.weight
    f1 = bounds.ibp(one, input_set=s, C=C)
    Wc = torch.einsum("brk,ki->bri", C, w)
    x0, r0 = s.center, torch.full_like(s.center, 0.2)
    want = torch.einsum("bri,bi->br", Wc, x0) - torch.einsum("bri,bi->br", Wc.abs(), r0)
    assert torch.allclose(f1.lower, want)


def test_non_chain_networks_use_the_rule_table():
    for name in ("resnet", "mixed"):
        net = ALL[name]()
        assert plan(net).chain is None, name
        s = ball(centers(net), 0.05, domain=(0.0, 1.0))
        b = bounds.ibp(net, input_set=s)
        want = _node_by_node(net, *s.box())
        assert torch.allclose(b.lower, want[0].flatten(1)) and torch.allclose(b.upper, want[1].flatten(1))


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "resnet"])
def test_spec_folded_into_last_layer_is_sound_and_tighter(name):
    net = ALL[name]()
    x = centers(net, B=3)
    C = robustness_matrix(net(x).argmax(1), net.output_size, dtype=DT)
    s = ball(x, 0.08, domain=(0.0, 1.0))
    folded = bounds.ibp(net, input_set=s, C=C)
    unfolded = interval_spec(_node_by_node(net, *s.box()), C, None)
    assert (folded.lower >= unfolded[0] - 1e-10).all() and (folded.upper <= unfolded[1] + 1e-10).all()
    assert float((folded.lower - unfolded[0]).max()) > 1e-6       # strictly tighter somewhere
    with torch.no_grad():
        pts = s.sample(3000, torch.Generator().manual_seed(2))
        m = torch.einsum("brk,nbk->nbr", C, net(pts.reshape((-1,) + net.input_shape)).reshape(3000, 3, -1))
    assert (m >= folded.lower - 1e-9).all() and (m <= folded.upper + 1e-9).all()


def test_cached_weights_follow_in_place_updates():
    net = mlp(seed=3)
    x = centers(net, B=2)
    before = bounds.ibp(net, x, eps=0.1, domain=(0.0, 1.0))
    with torch.no_grad():
        for n in net.nodes:
            if isinstance(n.op, Linear):
                n.op.weight.mul_(-1.5)
    after = bounds.ibp(net, x, eps=0.1, domain=(0.0, 1.0))
    fresh = bounds.ibp(net.to(DT), x, eps=0.1, domain=(0.0, 1.0))           # new tensors: nothing cached
    assert torch.allclose(after.lower, fresh.lower) and torch.allclose(after.upper, fresh.upper)
    assert not torch.allclose(after.lower, before.lower)
    first = net.nodes[0].op
    first.weight = first.weight.clone() * 0.25                  # a new tensor on the same op
    replaced = bounds.ibp(net, x, eps=0.1, domain=(0.0, 1.0))
    fresh = bounds.ibp(net.to(DT), x, eps=0.1, domain=(0.0, 1.0))
    assert torch.allclose(replaced.lower, fresh.lower) and torch.allclose(replaced.upper, fresh.upper)


def test_gradients_flow_through_ibp_with_the_fast_paths():
    net = mlp(seed=4)
    ws = [n.op.weight for n in net.nodes if isinstance(n.op, Linear)]
    for w in ws:
        w.requires_grad_(True)
    x = centers(net, B=2)
    C = robustness_matrix(torch.tensor([0, 1]), net.output_size, dtype=DT)
    lb = bounds.ibp(net, x, eps=0.1, C=C, domain=(0.0, 1.0)).lower
    grads = torch.autograd.grad(lb.sum(), ws)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # finite difference on one weight of the first layer
    w0 = ws[0]
    with torch.no_grad():
        w0[0, 0] += 1e-6
        lb2 = bounds.ibp(net, x, eps=0.1, C=C, domain=(0.0, 1.0)).lower
        w0[0, 0] -= 1e-6
    assert abs(float(lb2.sum() - lb.detach().sum()) / 1e-6 - float(grads[0][0, 0])) < 1e-4


def test_fast_box_of_a_float_radius_ball_is_the_sets_box():
    from bounds.api import _Fixed
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float64):
        x = torch.rand(3, 1, 5, 5, generator=g, dtype=dt) * 1.06 - 0.03    # some centres outside [0, 1], by less than eps
        for dom in ((0.0, 1.0), None):
            s = ball(x, 0.037, domain=dom)
            for a, b in zip(_Fixed(s).box(), s.box()):
                assert torch.equal(a, b)
