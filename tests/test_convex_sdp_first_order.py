"""First-order (SDP-FO style) SDP solver: the matrix-free operator equals the dense matrix, any
dual point gives a bound below the exact MILP minimum, the ascent closes most of the gap from the
LP to the Clarabel SDP value, and on a 784-input MNIST MLP it runs in minutes with a valid bound."""
import numpy as np
import pytest
import torch

from certify.attack import pgd_margin
from certify.convex import lp, milp, sdp
from certify.convex.problem import prepare
from certify.convex.sdp_dual import Multipliers, families, from_lp
from certify.convex.sdp_first_order import Scaled, certify_point, lanczos, solve_first_order
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from helpers.networks import random_mlp


def net_2_8_8():
    torch.manual_seed(0)
    return random_mlp((2, 8, 8, 3), None, bias_scale=1.0, normalize=False), torch.rand(1, 2)


def wide(seed=0, sizes=(6, 40, 40, 3)):
    g = torch.Generator().manual_seed(seed)
    net = random_mlp(sizes, g)
    x = torch.rand(1, sizes[0], generator=g)
    return net, x, robustness_matrix(net(x).argmax(1), sizes[-1])


def random_lam(f, rng):
    z = Multipliers.zeros(f)
    return Multipliers([rng.exponential(size=a.shape) for a in z.A], [rng.exponential(size=a.shape) for a in z.B],
                       [rng.normal(size=a.shape) for a in z.C], rng.exponential(size=z.D.shape), 0.0,
                       [rng.exponential(size=a.shape) for a in z.F])


def test_operator_matches_dense_matrix_and_lanczos_finds_lambda_min():
    net, x, C = wide(1)
    prob = prepare(net, x, eps=0.1, C=C, domain=(0.0, 1.0))
    f = families(prob, 0, 0)
    op = Scaled(f, random_lam(f, np.random.default_rng(0)), kappa=0.7)
    assert op.n > 64                                   # the Lanczos path, not the tiny dense one
    M, err = op.dense()
    assert np.allclose(op.matvec(np.eye(op.n)), M, atol=1e-10)
    assert 0 < err < 1e-8
    lmin = np.linalg.eigvalsh(M)[0]
    theta, u, res = lanczos(op, None, steps=op.n)
    assert theta >= lmin - 1e-9 and abs(theta - lmin) < 1e-6 and res < 1e-4


def test_any_dual_point_is_below_the_exact_minimum():
    net, x, C = wide(2, (4, 12, 12, 3))
    eps = 0.15
    exact = milp(net, x, eps=eps, C=C, mode="full", domain=(0.0, 1.0)).upper[0]       # margin at a real point
    prob = prepare(net, x, eps=eps, C=C, domain=(0.0, 1.0))
    rng = np.random.default_rng(1)
    for r in range(C.shape[1]):
        f = families(prob, 0, r)
        for _ in range(4):
            val, st = certify_point(f, random_lam(f, rng), float(rng.normal() * 5))
            assert st == "dual_feasible" and val <= float(exact[r]) + 1e-9


def test_first_order_approaches_clarabel_and_beats_lp():
    net, x = net_2_8_8()
    a = lp(net, x, eps=0.3, domain=None)
    c = sdp(net, x, eps=0.3, domain=None, solver="Clarabel")            # 8.5646 on row 1 (LP 8.3677)
    r = sdp(net, x, eps=0.3, domain=None, solver="first-order", iters=300)
    exact = milp(net, x, eps=0.3, domain=None, mode="full").upper
    assert all(s == "dual_feasible" for s in r.status[0])
    assert bool((r.lower <= exact + 1e-9).all())
    assert bool((r.lower >= a.lower - 1e-4).all())          # LP multipliers: at the LP bound up to slack
    gap = float(c.lower[0, 1] - a.lower[0, 1])
    assert gap > 0.15
    assert float(c.lower[0, 1] - r.lower[0, 1]) < 0.25 * gap, (r.lower, c.lower, a.lower)   # >= 75% of the gap closed
    assert bool((r.lower <= c.lower + 1e-4).all())                      # never above the SDP optimum


def test_first_order_iterates_climb_from_the_lp_start():
    net, x, C = wide(3)
    prob = prepare(net, x, eps=0.08, C=C, domain=(0.0, 1.0))
    f = families(prob, 0, 0)
    init, lp_val = from_lp(prob, 0, 0, f)
    val, st, info = solve_first_order(f, init, iters=150)
    assert st == "dual_feasible" and np.isfinite(val)
    assert info["best"] >= info["start"] and len(info["trace"]) == info["iters"] == 150
    exact = milp(net, x, eps=0.08, C=C, mode="full", domain=(0.0, 1.0)).upper[0, 0]
    assert val <= float(exact) + 1e-9
    assert val >= lp_val - 1e-3 * (1 + abs(lp_val))


@pytest.mark.slow
def test_first_order_on_mnist_256x2_is_valid_and_beats_lp(shared_dir):
    from certify.data import load_dataset
    from certify.frontends.onnx import load
    path = shared_dir / "vnncomp" / "mnistfc" / "mnist-net_256x2.onnx"
    if not path.exists():
        pytest.skip(f"{path} not found")
    net = load(str(path))
    X, y = load_dataset("mnist", "test", str(shared_dir / "data"))
    x, C, eps = X[:1].reshape((1,) + tuple(net.input_shape)), robustness_matrix(y[:1], 10)[:, 2:3], 0.02  # hardest row
    a = lp(net, x, eps=eps, C=C, bounds_method="alpha", domain=(0.0, 1.0))
    r = sdp(net, x, eps=eps, C=C, solver="first-order", iters=300, bounds_method="alpha", domain=(0.0, 1.0))
    assert r.status[0] == ["dual_feasible"] and r.seconds[0] < 180
    _, v = pgd_margin(net, ball(x, eps, domain=(0.0, 1.0)), C, per_row=True, steps=50, restarts=2)
    assert float(r.lower[0, 0]) <= float(v[0, 0]) + 1e-6
    assert float(r.lower[0, 0]) > float(a.lower[0, 0]) + 0.03      # -0.422 vs LP -0.470 (exact -0.333)


def test_sdp_with_lp_all_bounds_is_tighter_and_still_valid():
    net, x, C = wide(5, (3, 10, 10, 10, 4))
    eps = 0.2
    plain = sdp(net, x, eps=eps, C=C, solver="Clarabel", domain=(0.0, 1.0))
    ref = sdp(net, x, eps=eps, C=C, solver="Clarabel", refine="all", domain=(0.0, 1.0))
    fo = sdp(net, x, eps=eps, C=C, solver="first-order", iters=100, refine="all", domain=(0.0, 1.0))
    exact = milp(net, x, eps=eps, C=C, mode="full", domain=(0.0, 1.0)).upper
    assert bool((ref.lower >= plain.lower - 1e-4).all())                  # smaller feasible set
    assert bool((ref.lower <= exact + 1e-9).all()) and bool((fo.lower <= exact + 1e-9).all())
    assert bool((fo.lower >= lp(net, x, eps=eps, C=C, refine="all", domain=(0.0, 1.0)).lower - 1e-4).all())
