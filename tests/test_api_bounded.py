"""certify.Bounded (the bounded-model object of the Python API) and certify.spec.margins: the same
bounds as the engine functions, auto_LiRPA's method names, return_A's linear bounds hold on
sampled points of the ball, intermediate bounds of every node contain its sampled values, radius
and verify agree with sampling / bounds, and no ball is clipped unless a domain is given."""
from __future__ import annotations

import pytest
import torch

import bounds
import certify
from certify.data import load_dataset
from certify.errors import CertifyError
from certify.spec import ball, margins, robustness_matrix


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("digits", "test")
    return certify.Bounded("digits-mlp"), x[:6].double(), y[:6]


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


def test_margins_is_the_robustness_spec():
    y = torch.tensor([2, 0])
    C = margins(y, 4)
    assert torch.equal(C, robustness_matrix(y, 4))
    assert C.shape == (2, 3, 4) and C[0, 0].tolist() == [-1.0, 0.0, 1.0, 0.0]


def test_bounded_is_exported_lazily_from_the_package():
    import ast
    from pathlib import Path
    src = (Path(certify.__file__)).read_text()
    top = [n for n in ast.parse(src).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top == []                 # nothing imported at module level: certify.api only on first use
    assert certify.Bounded.__module__ == "certify.api"


@pytest.mark.parametrize("ours, theirs", [("crown", "CROWN"), ("alpha", "alpha-CROWN"), ("alpha", "CROWN-Optimized"),
                                          ("ibp", "IBP"), ("crown-ibp", "CROWN-IBP"), ("crown-ibp", "IBP+backward")])
def test_auto_lirpa_method_names_give_our_methods_bounds(digits, ours, theirs):
    net, x, y = digits
    C = margins(y, 10, torch.float64)
    a = net.bounds(x, eps=0.02, method=ours, C=C)
    b = net.bounds(x, eps=0.02, method=theirs, C=C)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
    ref = bounds.compute_bounds(net.net, ball(x, 0.02, "inf"), C, method=ours)
    assert torch.equal(a.lower, ref.lower.detach())


def test_unknown_method_names_the_choices(digits):
    net, x, y = digits
    with pytest.raises(CertifyError, match="unknown bound method 'deepz'.*alpha-CROWN"):
        net.bounds(x, eps=0.01, method="deepz")


def test_models_from_module_onnx_and_network_give_the_same_bounds(tmp_path, digits):
    net, x, y = digits
    net.net.to_onnx(str(tmp_path / "m.onnx"))
    other = certify.Bounded(str(tmp_path / "m.onnx"))
    mod = certify.Bounded(net.net.to_torch(), (1, 8, 8))
    C = margins(y, 10)
    ref = net.bounds(x, eps=0.03, C=C).lower
    for m in (other, mod, certify.Bounded(net.net)):
        assert torch.allclose(m.bounds(x, eps=0.03, C=C).lower, ref, atol=1e-9)
    with pytest.raises(CertifyError, match="needs its per-sample input shape"):
        certify.Bounded(torch.nn.Linear(3, 2))
    assert net.bounds(x[0], eps=0.01).lower.shape == (1, 10)      # one input without a batch dimension


@pytest.mark.parametrize("norm, eps", [("inf", 0.15), ("2", 0.4), ("1", 0.6)])
@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
def test_return_A_linear_bounds_hold_on_sampled_points(norm, eps, method):
    net = certify.Bounded(_mlp(), (4,))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    C = torch.randn(3, 2, 3, generator=gen, dtype=torch.float64)
    d = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    b = net.bounds(x, eps=eps, norm=norm, method=method, C=C, d=d, return_A=True)
    assert b.A.lA.shape == (3, 2, 4) and b.A.uA.shape == (3, 2, 4) and b.A.lbias.shape == (3, 2)
    s = net.input_set(x, eps, norm)
    pts = torch.cat([s.sample(3000, gen), _vertices(x, eps, norm)])      # (n, 3, 4)
    worst_lo, worst_hi = 0.0, 0.0
    for p in pts:
        assert bool(s.contains(p, 1e-9).all())
        val = torch.einsum("brk,bk->br", C, net(p)) + d
        lo, hi = b.A.evaluate(p)
        worst_lo = min(worst_lo, float((val - lo).min()))
        worst_hi = min(worst_hi, float((hi - val).min()))
        assert bool((lo >= b.lower - 1e-9).all())           # the bound is the linear function's minimum
        assert bool((val >= b.lower - 1e-9).all()) and bool((val <= b.upper + 1e-9).all())
    assert worst_lo >= -1e-9 and worst_hi >= -1e-9


def _vertices(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Points on the boundary: +-eps e_i for L1, +-eps e_i / ... corners for L-inf, +-eps e_i for L2."""
    n = x.shape[1]
    E = torch.eye(n, dtype=x.dtype)
    if norm == "inf":
        signs = torch.tensor([[(k >> i & 1) * 2 - 1 for i in range(n)] for k in range(2 ** n)], dtype=x.dtype)
        return x.unsqueeze(0) + eps * signs.unsqueeze(1)
    return torch.cat([x.unsqueeze(0) + eps * E.unsqueeze(1), x.unsqueeze(0) - eps * E.unsqueeze(1)])


def test_return_A_is_refused_for_methods_without_linear_bounds(digits):
    net, x, y = digits
    with pytest.raises(CertifyError, match="return_A gives the linear bounds of CROWN"):
        net.bounds(x, eps=0.01, method="IBP", return_A=True)


def test_intermediate_bounds_contain_every_nodes_sampled_values():
    net = certify.Bounded(_mlp(2), (4,))
    x = torch.rand(2, 4, dtype=torch.float64)
    names = net.node_names()
    assert names[0] == net.net.input_name and len(names) == len(net.net.nodes) + 1
    for method in ("crown", "ibp"):
        got = net.intermediate(x, eps=0.2, method=method)
        assert list(got) == names
        pts = net.input_set(x, 0.2).sample(2000)
        for p in pts[:400]:
            vals = net.net.forward_all(p)
            vals[net.net.input_name] = p
            for n in names:
                v = vals[n].reshape(got[n].lower.shape)
                assert bool((v >= got[n].lower - 1e-9).all() and (v <= got[n].upper + 1e-9).all()), (method, n)
    crown, ibp = net.intermediate(x, 0.2, method="crown"), net.intermediate(x, 0.2, method="ibp")
    out = names[-1]
    assert bool((crown[out].gap <= ibp[out].gap + 1e-12).all()) and float((ibp[out].gap - crown[out].gap).max()) > 0
    with pytest.raises(CertifyError, match="no node 'nope'"):
        net.intermediate(x, 0.2, nodes=["nope"])


def test_radius_is_certified_and_verify_agrees_with_bounds(digits):
    net, x, y = digits
    r, b = net.radius(x, y, norm="inf", method="crown", domain=(0.0, 1.0))
    ok = net(x).argmax(1) == y
    assert bool((r[~ok] == 0).all()) and bool((r[ok] > 0).all())
    C = margins(y, 10, torch.float64)
    for k in ok.nonzero().flatten().tolist():
        assert bool((net.bounds(x[k], float(r[k]), C=C[k:k + 1], domain=(0.0, 1.0)).lower > 0).all())
    res = net.verify(x, 0.02, labels=y, timeout=20)
    crown = net.bounds(x, eps=0.02, C=C).lower.min(1).values > 0
    for k, v in enumerate(res):
        assert v.status in ("sat", "unsat", "unknown", "timeout")
        if bool(crown[k]):
            assert v.status == "unsat"
        if v.status == "sat":
            cx, cy = (torch.as_tensor(t) for t in v.counterexample)
            assert float((cx - x[k].flatten()).abs().max()) <= 0.02 + 1e-9
            assert float((C[k] @ net(cx.reshape(1, 1, 8, 8))[0]).min()) <= 0
    assert res[1].status == "sat"           # input 1 is misclassified: the attack finds it at once
    with pytest.raises(CertifyError, match="L2 ball is not one"):
        net.verify(x, 0.1, labels=y, norm=2)


def test_no_ball_is_clipped_unless_a_domain_is_given():
    """A sensor-space input: the margin is x_1 + 0.3 at x0 = (0.3, -0.2), eps 0.4; on the ball the
    minimum is -0.3 (at x_1 = -0.6); clipped to [0, 1] it would be +0.3."""
    lin = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
        lin.bias.copy_(torch.tensor([0.3, 0.0], dtype=torch.float64))
    net = certify.Bounded(lin, (2,))
    x0 = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    C = margins(torch.tensor([0]), 2, torch.float64)
    for method in ("ibp", "crown", "alpha"):
        free = net.bounds(x0, eps=0.4, C=C, method=method)
        assert float(free.lower) <= -0.3 + 1e-9
        clipped = net.bounds(x0, eps=0.4, C=C, method=method, domain=(0.0, 1.0))
        assert float(clipped.lower) >= 0.3 - 1e-9
        assert float(bounds.crown(lin, x0, eps=0.4, C=C).lower.detach()) <= -0.3 + 1e-9   # the engine's default
    from certify import convex
    assert float(convex.lp(lin, x0, eps=0.4, C=C).lower[0, 0]) <= -0.3 + 1e-6
    assert float(convex.milp(lin, x0, eps=0.4, C=C, mode="full").lower[0, 0]) <= -0.3 + 1e-6
    assert bool(ball(x0, 0.4).contains(torch.tensor([[0.3, -0.6]], dtype=torch.float64)).all())   # unclipped
