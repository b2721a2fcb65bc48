"""Bounds through the nonlinear ops (bounds/activations.py, smooth.py, bilinear.py, softmax.py).

For every op, a small network whose pre-activation intervals cross the op's kinks, inflection
points and periods: no sampled point (10k) and no PGD point per bound may escape the IBP,
CROWN or alpha bounds, exactly in float64 and with the documented 1e-5 relative tolerance in
float32. Then exact answers: x**2 and x*x on [1, 3] (upper bound 9, alpha's lower bound near
1), chords and tangents that touch where they should, the interval hull of sin, infinite
("cannot bound") results where 1/x or log meets 0, and a clear error for a fractional power of a
possibly negative base. Every record's lines hold on a dense grid for random alpha.
"""
from __future__ import annotations

import math

import pytest
import torch

import bounds
from bounds import activations as act
from certify.attack import pgd_margin
from certify.errors import CertifyError
from certify.ir import (ConstAdd, Cos, Exp, Flatten, Floor, LeakyReLU, Linear, Log, MatMul, Mul, Network, Node, Pow,
                        Reciprocal, Reshape, Sigmoid, Sign, Sin, Softmax, Tanh, ReLU, sequential)
from certify.spec.output import margins
from certify.spec.sets import Box

DT = torch.float64


def _lin(g, n_out, n_in, scale=1.0, bias=0.3, positive=False):
    w = torch.randn(n_out, n_in, generator=g, dtype=DT) * scale
    b = torch.randn(n_out, generator=g, dtype=DT) * bias
    return Linear(w.abs() if positive else w, b.abs() + 0.3 if positive else b)


def _elementwise(op, scale=1.0, positive=False, signs=False):
    """Linear -> op -> Linear; ``positive`` / ``signs``: pre-activations > 0 / of fixed signs
    (on the positive input boxes these nets get)."""
    def build(g):
        first = _lin(g, 6, 3, scale, positive=positive or signs)
        if signs:               # three positive and three negative pre-activations, none crossing 0
            s = torch.tensor([1.0, 1, 1, -1, -1, -1], dtype=DT)
            first = Linear(first.weight * s[:, None], first.bias * s)
        return sequential((3,), [first, op, _lin(g, 3, 6, 0.5)])
    return build


def _two_branch(kind):
    def build(g):
        nodes = [Node("a", _lin(g, 6, 3), ("input",)), Node("b", _lin(g, 6, 3), ("input",))]
        if kind == "mul":
            nodes.append(Node("p", Mul(), ("a", "b")))
        elif kind == "square":
            nodes.append(Node("p", Mul(), ("a", "a")))
        elif kind == "broadcast":
            nodes += [Node("a2", Reshape((2, 3)), ("a",)), Node("b1", Linear(torch.randn(3, 3, generator=g, dtype=DT),
                                                                          None), ("input",)),
                      Node("b2", Reshape((1, 3)), ("b1",)), Node("pp", Mul(), ("a2", "b2")), Node("p", Flatten(), ("pp",))]
        elif kind == "div":
            pos = _lin(g, 6, 3, positive=True)
            nodes += [Node("c", pos, ("input",)), Node("r", Reciprocal(), ("c",)), Node("p", Mul(), ("a", "r"))]
        elif kind == "matmul":
            nodes += [Node("a2", Reshape((2, 3)), ("a",)), Node("b2", Reshape((3, 2)), ("b",)),
                      Node("pp", MatMul(), ("a2", "b2")), Node("p", Flatten(), ("pp",))]
        elif kind in ("softmax0", "softmax1"):
            nodes += [Node("a2", Reshape((2, 3)), ("a",)), Node("s", Softmax(int(kind[-1])), ("a2",)),
                      Node("p", Flatten(), ("s",))]
        n = 4 if kind == "matmul" else 6
        nodes.append(Node("out", _lin(g, 3, n, 0.5), ("p",)))
        return Network((3,), nodes, name=kind)
    return build


NETS = {      # name: (builder, whether the input box is positive: x in [0.1, 2.1]^3)
    "leaky_relu": (_elementwise(LeakyReLU(0.125)), False),
    "leaky_relu_concave": (_elementwise(LeakyReLU(2.0)), False),
    "exp": (_elementwise(Exp()), False),
    "log": (_elementwise(Log(), positive=True), True),
    "reciprocal": (_elementwise(Reciprocal(), signs=True), True),
    "pow2": (_elementwise(Pow(2.0)), False),
    "pow3": (_elementwise(Pow(3.0)), False),
    "pow0.5": (_elementwise(Pow(0.5), positive=True), True),
    "pow-2": (_elementwise(Pow(-2.0), signs=True), True),
    "sin": (_elementwise(Sin(), scale=4.0), False),
    "cos": (_elementwise(Cos(), scale=4.0), False),
    "sigmoid": (_elementwise(Sigmoid(), scale=2.0), False),
    "tanh": (_elementwise(Tanh(), scale=2.0), False),
    "sign": (_elementwise(Sign()), False),
    "floor": (_elementwise(Floor(), scale=3.0), False),
    "mul": (_two_branch("mul"), False),
    "square": (_two_branch("square"), False),
    "broadcast_mul": (_two_branch("broadcast"), False),
    "div": (_two_branch("div"), True),
    "matmul": (_two_branch("matmul"), False),
    "softmax_axis0": (_two_branch("softmax0"), False),
    "softmax_axis1": (_two_branch("softmax1"), False),
}


def _problem(name):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    build, positive = NETS[name]
    net = build(g)
    c = torch.rand(2, 3, generator=g, dtype=DT) + (0.6 if positive else 0.0)
    box = Box(c - 0.5, c + 0.5)
    C = torch.randn(2, 3, 3, generator=g, dtype=DT)
    return net, box, C


def _extremes(net, box, C):
    """Sampled values (n, B, rows) of C y and the PGD minimum and maximum of every row."""
    pts = box.sample(5000, torch.Generator().manual_seed(3))                  # 5000 x B=2
    with torch.no_grad():
        y = net(pts.reshape(-1, 3)).reshape(5000, 2, -1)
    m = torch.einsum("brk,nbk->nbr", C, y)
    kw = dict(per_row=True, steps=15, restarts=1, generator=torch.Generator().manual_seed(4))
    _, vmin = pgd_margin(net, box, C, None, **kw)
    _, vmax = pgd_margin(net, box, -C, None, **kw)
    return m, vmin, -vmax


@pytest.mark.parametrize("name", list(NETS))
def test_no_sample_or_attack_escapes_the_bounds(name):
    net, box, C = _problem(name)
    m, vmin, vmax = _extremes(net, box, C)
    results = {}
    for dtype in (torch.float64, torch.float32):
        n, s = net.to(dtype), Box(box.lower.to(dtype), box.upper.to(dtype))
        for method in ("ibp", "crown", "alpha"):
            opts = {"iterations": 5} if method == "alpha" else {}
            b = bounds.compute_bounds(n, s, C.to(dtype), method=method, **opts)
            lo, hi = b.lower.double(), b.upper.double()
            assert torch.isfinite(lo).all() and torch.isfinite(hi).all(), (method, dtype)
            tol = 1e-9 if dtype == torch.float64 else 1e-5 * (1 + float(hi.abs().max()))
            for v in (m, vmin, vmax):
                assert (v >= lo - tol).all(), (method, dtype, float((lo - v).max()))
                assert (v <= hi + tol).all(), (method, dtype, float((v - hi).max()))
            results[method, dtype] = (lo, hi)
    lo_c, hi_c = results["crown", torch.float64]
    lo_a, hi_a = results["alpha", torch.float64]
    assert (lo_a >= lo_c - 1e-9).all() and (hi_a <= hi_c + 1e-9).all()


@pytest.mark.parametrize("name", ["mul", "broadcast_mul", "matmul", "sigmoid", "tanh"])
def test_alpha_optimizes_the_product_planes_and_s_shaped_lines(name):
    net, box, C = _problem(name)
    c = bounds.compute_bounds(net, box, C, method="crown")
    a = bounds.compute_bounds(net, box, C, method="alpha", iterations=20)
    assert float((a.upper - a.lower).mean()) < 0.95 * float((c.upper - c.lower).mean())


@pytest.mark.parametrize("square", ["pow", "mul"])
def test_x_squared_on_1_3(square):
    net = sequential((1,), [Pow(2.0)]) if square == "pow" else Network((1,), [Node("sq", Mul(), ("input", "input"))])
    box = Box(torch.tensor([[1.0]], dtype=DT), torch.tensor([[3.0]], dtype=DT))
    grid = net(torch.linspace(1.0, 3.0, 2001, dtype=DT).reshape(-1, 1)).flatten()
    ibp = bounds.compute_bounds(net, box, method="ibp")      # the exact image [min, max] of the grid, moved outward
    assert grid.min() - 1e-12 <= float(ibp.lower) <= grid.min() and grid.max() <= float(ibp.upper) <= grid.max() + 1e-12
    crown = bounds.compute_bounds(net, box, method="crown")
    assert grid.max() <= float(crown.upper) <= grid.max() + 1e-12      # the chord, exact at x = 3
    assert 0.0 - 1e-12 <= float(crown.lower) <= 1.0          # the midpoint tangent 4x - 4
    alpha = bounds.compute_bounds(net, box, method="alpha", iterations=30)
    assert 0.9 <= float(alpha.lower) <= 1.0 and 9.0 <= float(alpha.upper) <= 9 + 1e-12
    # crossing zero: x*x on [-1, 2] is [0, 4], not the product of two independent copies [-2, 4]
    box = Box(torch.tensor([[-1.0]], dtype=DT), torch.tensor([[2.0]], dtype=DT))
    ibp = bounds.compute_bounds(net, box, method="ibp")
    assert float(ibp.lower) == 0.0 and 4.0 <= float(ibp.upper) <= 4 + 1e-12


def test_products_crossing_zero_are_exact_in_ibp_and_sound_in_crown():
    net = Network((2,), [Node("a", Linear(torch.tensor([[1.0, 0.0]], dtype=DT)), ("input",)),
                         Node("b", Linear(torch.tensor([[0.0, 1.0]], dtype=DT)), ("input",)),
                         Node("p", Mul(), ("a", "b"))])
    box = Box(torch.tensor([[-1.0, -2.0]], dtype=DT), torch.tensor([[3.0, 1.0]], dtype=DT))
    ibp = bounds.compute_bounds(net, box, method="ibp")
    assert float(ibp.lower) == -6.0 and float(ibp.upper) == 3.0        # corners (3, -2) and (3, 1)
    crown = bounds.compute_bounds(net, box, method="crown")
    assert float(crown.lower) <= -6.0 and float(crown.upper) >= 3.0


def _line(r, x, upper):
    return (r.upper_slope if upper else r.lower_slope) * x + (r.upper_bias if upper else r.lower_bias)


def test_chords_and_tangents_touch_where_they_should():
    lo, hi = torch.tensor([-1.0, 0.3], dtype=DT), torch.tensor([2.0, 2.8], dtype=DT)
    # exp (convex): chord through both ends above, midpoint tangent below
    r = act.relax(Exp(), lo, hi)
    for x in (lo, hi):
        assert torch.allclose(_line(r, x, True), torch.exp(x), rtol=1e-13)
    m = (lo + hi) / 2
    assert torch.allclose(_line(r, m, False), torch.exp(m), rtol=1e-13)
    assert torch.allclose(r.lower_slope, torch.exp(m), rtol=1e-13)
    # sin on [0.3, 2.8] (concave): midpoint tangent above, chord below
    r = act.relax(Sin(), lo[1:], hi[1:])
    assert torch.allclose(_line(r, m[1:], True), torch.sin(m[1:]), atol=1e-13)
    for x in (lo[1:], hi[1:]):
        assert torch.allclose(_line(r, x, False), torch.sin(x), atol=1e-13)
    # log (concave) and 1/x on x > 0 (convex), x < 0 (concave)
    r = act.relax(Log(), torch.tensor([0.5], dtype=DT), torch.tensor([4.0], dtype=DT))
    assert torch.allclose(_line(r, torch.tensor([0.5], dtype=DT), False), torch.log(torch.tensor([0.5], dtype=DT)))
    r = act.relax(Reciprocal(), torch.tensor([0.5, -4.0], dtype=DT), torch.tensor([4.0, -0.5], dtype=DT))
    ends = torch.tensor([0.5, -0.5], dtype=DT), torch.tensor([4.0, -4.0], dtype=DT)
    for x in ends:              # chord above on the positive side, below on the negative side
        assert torch.allclose(_line(r, x, True)[0], 1 / x[0]) and torch.allclose(_line(r, x, False)[1], 1 / x[1])


def test_sin_and_cos_over_more_than_a_period_take_the_hull():
    lo, hi = torch.tensor([[-1.0, 3.0]], dtype=DT), torch.tensor([[6.0, 20.0]], dtype=DT)
    for op in (Sin(), Cos()):
        l, h = act.interval(op, lo, hi)
        assert (l == -1).all() and (h == 1).all()
        r = act.relax(op, lo, hi)
        assert (r.lower_slope == 0).all() and (r.upper_slope == 0).all()
        assert (r.lower_bias == -1).all() and (r.upper_bias == 1).all()
    l, h = act.interval(Cos(), torch.tensor([-1.0], dtype=DT), torch.tensor([2.0], dtype=DT))
    grid = torch.cos(torch.cat([torch.linspace(-1.0, 2.0, 3001, dtype=DT), torch.zeros(1, dtype=DT)]))
    assert grid.max() <= float(h) <= grid.max() + 1e-12 and grid.min() - 1e-12 <= float(l) <= grid.min()


def test_cannot_bound_is_infinite_never_a_wrong_number():
    one = lambda v: torch.tensor([[v]], dtype=DT)  # noqa: E731
    for op, lo, hi in ((Reciprocal(), -1.0, 2.0), (Pow(-1.0), -0.5, 0.5), (Log(), -1.0, 1.0)):
        net = sequential((1,), [ConstAdd(torch.zeros(1, dtype=DT)), op, Linear(torch.tensor([[2.0]], dtype=DT))])
        for method in ("ibp", "crown", "alpha"):
            b = bounds.compute_bounds(net, Box(one(lo), one(hi)), method=method)
            assert not b.lower.isnan().any() and not b.upper.isnan().any()
            assert float(b.lower) == -math.inf and float(b.upper) == math.inf, (op.kind, method)
    # 1/x on a negative interval and on a positive one: finite and sound
    net = sequential((1,), [Reciprocal()])
    for lo, hi in ((-3.0, -0.5), (0.25, 2.0)):
        exact = abs(1 / lo - 1 / hi)
        for method in ("ibp", "crown", "alpha"):
            b = bounds.compute_bounds(net, Box(one(lo), one(hi)), method=method, **(
                {"iterations": 40} if method == "alpha" else {}))
            assert b.lower <= 1 / hi <= b.upper and b.lower <= 1 / lo <= b.upper
            assert float(b.upper - b.lower) <= exact * (1 + 1e-12 if method == "ibp" else 1.1 if method == "alpha"
                                                        else 2.0), method
    # an unbounded neuron with a zero weight after it does not spoil the others
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    net = sequential((2,), [Reciprocal(), Linear(W), ReLU(), Linear(torch.tensor([[0.0, 1.0]], dtype=DT))])
    b = bounds.compute_bounds(net, Box(torch.tensor([[-1.0, 1.0]], dtype=DT), torch.tensor([[1.0, 2.0]], dtype=DT)),
                              method="crown")
    assert 0.4 <= float(b.lower) <= 0.5 and 1.0 <= float(b.upper) <= 1 + 1e-9


@pytest.mark.parametrize("product", ["mul", "matmul"])
def test_products_of_an_unbounded_tensor(product):
    """x0 in [-1, 1] makes 1/x0 unbounded; the outputs that do not depend on it stay finite."""
    if product == "mul":
        nodes = [Node("r", Reciprocal(), ("input",)), Node("p", Mul(), ("r", "input"))]
    else:
        nodes = [Node("r", Reciprocal(), ("input",)), Node("a", Reshape((2, 1)), ("r",)),
                 Node("b", Reshape((1, 2)), ("input",)), Node("mm", MatMul(), ("a", "b")), Node("p", Flatten(), ("mm",))]
    net = Network((2,), nodes)
    box = Box(torch.tensor([[-1.0, 1.0]], dtype=DT), torch.tensor([[1.0, 2.0]], dtype=DT))
    y = net(box.sample(4000, torch.Generator().manual_seed(0))[:, 0])
    for method in ("ibp", "crown", "alpha"):
        b = bounds.compute_bounds(net, box, method=method)
        assert not b.lower.isnan().any() and not b.upper.isnan().any()
        fin = torch.isfinite(b.lower) & torch.isfinite(b.upper)
        assert bool(fin.any()) and not bool(fin[0, 0])          # 1/x0 * x0 (or * x0, x1) cannot be bounded
        assert bool(fin[0, -1])                                  # 1/x1 * x1
        assert (y[:, fin[0]] >= b.lower[:, fin[0]] - 1e-9).all() and (y[:, fin[0]] <= b.upper[:, fin[0]] + 1e-9).all()


def test_fractional_power_of_a_possibly_negative_base_is_a_clear_error():
    net = sequential((1,), [Pow(0.5)])
    box = Box(torch.tensor([[-0.1]], dtype=DT), torch.tensor([[1.0]], dtype=DT))
    for method in ("ibp", "crown"):
        with pytest.raises(CertifyError, match=r"Pow x\*\*0.5: the base's lower bound is -0.1"):
            bounds.compute_bounds(net, box, method=method)


def test_softmax_ibp_is_attained_at_corners():
    net = sequential((4,), [Softmax(0)])
    lo = torch.tensor([[-1.0, 0.0, 0.5, 2.0]], dtype=DT)
    hi = lo + torch.tensor([[0.5, 1.0, 0.2, 0.1]], dtype=DT)
    b = bounds.compute_bounds(net, Box(lo, hi), method="ibp")
    for i in range(4):
        worst = torch.where(torch.arange(4) == i, lo, hi)       # x_i low, the others high
        best = torch.where(torch.arange(4) == i, hi, lo)
        assert abs(float(net(worst)[0, i] - b.lower[0, i])) < 1e-12
        assert abs(float(net(best)[0, i] - b.upper[0, i])) < 1e-12


RECORD_OPS = [ReLU(), Sigmoid(), Tanh(), LeakyReLU(0.125), LeakyReLU(-0.5), LeakyReLU(2.0), Exp(), Log(),
              Reciprocal(), Pow(2.0), Pow(3.0), Pow(4.0), Pow(5.0), Pow(-1.0), Pow(-2.0), Pow(0.5), Pow(1.5),
              Pow(-0.5), Sin(), Cos(), Sign(), Floor()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", RECORD_OPS, ids=lambda op: op.describe().replace(" ", ""))
def test_record_lines_hold_on_a_dense_grid(op, dtype):
    """Every record's lines (CROWN's and random alphas') and interval contain f on [lo, hi];
    float32 lines are checked in float64 against f in float64, with no tolerance for the new
    ops (their intercepts carry the rounding margin)."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(400, generator=g, dtype=DT) * 3
    w = torch.rand(400, generator=g, dtype=DT) ** 2 * 10
    w[:10], w[10:20] = 0.0, 1e-7
    if isinstance(op, Log) or (isinstance(op, Pow) and not float(op.exponent).is_integer()):
        c = c.abs() + w + 1e-3
    lo, hi = (c - w).to(dtype), (c + w).to(dtype)
    t = torch.linspace(0, 1, 501, dtype=DT).unsqueeze(1)
    xs = torch.maximum(torch.minimum(lo.double() + t * (hi.double() - lo.double()), hi.double()), lo.double())
    fx = op.forward(xs)
    ok = torch.isfinite(fx)
    rec = act.record(op)
    tol = 0.0 if type(op) not in (ReLU, Sigmoid, Tanh) else (1e-14 if dtype == DT else 2e-6)
    alphas = [None]
    if rec.alpha_init is not None:
        a0 = rec.alpha_init(op, lo.unsqueeze(0), hi.unsqueeze(0))
        alphas += [act.split_alpha(op, a0, 1), act.split_alpha(op, torch.rand(a0.shape, generator=g).to(dtype), 1)]
    for a in alphas:
        if a is not None:
            a = a[0] if rec.n_alpha == 1 else tuple(x[0] for x in a)
        r = act.relax(op, lo, hi, a)
        low = r.lower_slope.double() * xs + r.lower_bias.double()
        up = r.upper_slope.double() * xs + r.upper_bias.double()
        assert not ((low > fx + tol) & ok).any() and not ((up < fx - tol) & ok).any()
    if type(op) in (Sigmoid, Tanh) and dtype == torch.float32:
        return                      # (their IBP is the unmargined forward pass)
    il, ih = act.interval(op, lo, hi)
    assert not (((fx < il.double() - tol) | (fx > ih.double() + tol)) & ok).any()


def test_leaky_relu_alpha_and_splits():
    g = torch.Generator().manual_seed(5)
    net = sequential((3,), [_lin(g, 8, 3, 1.5), LeakyReLU(0.125), _lin(g, 8, 8), LeakyReLU(0.125), _lin(g, 2, 8)])
    box = Box(torch.full((1, 3), -1.0, dtype=DT), torch.full((1, 3), 1.0, dtype=DT))
    c = bounds.compute_bounds(net, box, method="crown")
    a = bounds.compute_bounds(net, box, method="alpha", iterations=20)
    assert float((a.lower - c.lower).max()) > 1e-3          # alpha optimizes LeakyReLU's lower lines
    pre = bounds.intermediate_bounds(net, box, "crown")["n0"]
    j = int(((pre.lower < 0) & (pre.upper > 0)).flatten().nonzero()[0])
    pts = box.sample(20000, torch.Generator().manual_seed(1))[:, 0]
    vals = net.forward_all(pts)
    for sign in (1, -1):
        split = torch.zeros(1, 8, dtype=torch.int8)
        split[0, j] = sign
        b = bounds.compute_bounds(net, box, method="crown", splits={"n1": split})
        inside = vals["n0"][:, j] >= 0 if sign > 0 else vals["n0"][:, j] <= 0
        y = vals[net.output][inside]
        assert (y >= b.lower - 1e-9).all() and (y <= b.upper + 1e-9).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["exp", "log", "reciprocal+", "reciprocal-"])
def test_closed_form_lines_of_convex_and_concave_pieces(name, dtype):
    """Where f is convex or concave on every interval (exp; log; 1/x on one side of 0) the
    default lines come in closed form (midpoint tangent, chord): they hold on a dense grid with
    no tolerance, and in float64 equal the lines the generic candidates pick (to rounding)."""
    from bounds import smooth as S
    fn = {"exp": S.EXP, "log": S.LOG, "reciprocal+": S.RECIPROCAL, "reciprocal-": S.RECIPROCAL}[name]
    g = torch.Generator().manual_seed(3)
    c = torch.randn(300, generator=g, dtype=DT) * 3
    w = torch.rand(300, generator=g, dtype=DT) ** 2 * 5
    w[:10], w[10:20] = 0.0, 1e-7
    if name != "exp":
        c = c.abs() + w + 1e-2
        c = -c if name == "reciprocal-" else c
    lo, hi = (c - w).to(dtype), (c + w).to(dtype)
    r = S.curved_lines(fn, None, lo, hi)
    assert r is not None
    t = torch.linspace(0, 1, 501, dtype=DT).unsqueeze(1)
    xs = torch.maximum(torch.minimum(lo.double() + t * (hi.double() - lo.double()), hi.double()), lo.double())
    fx = fn.f(None, xs)
    assert not (r.lower_slope.double() * xs + r.lower_bias.double() > fx).any()
    assert not (r.upper_slope.double() * xs + r.upper_bias.double() < fx).any()
    if dtype == DT:
        k_lo, k_up = S.default_slopes(fn, None, lo, hi)
        b_lo, b_up = S.intercepts(fn, None, lo, hi, k_lo, k_up)
        scale = 1 + fx.abs().max(0).values
        for line, ref in ((r.lower_slope * xs + r.lower_bias, k_lo * xs + b_lo),
                          (r.upper_slope * xs + r.upper_bias, k_up * xs + b_up)):
            assert bool(((line - ref).abs() <= 1e-10 * scale).all())
    mixed = torch.tensor([-1.0, 0.5], dtype=dtype), torch.tensor([1.0, 2.0], dtype=dtype)
    assert S.curved_lines(S.RECIPROCAL, None, *mixed) is None      # 1/x across 0: no closed form
