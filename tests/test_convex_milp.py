"""MILP: exact minimum against brute force on 2-D nets (every activation pattern solved as its own
LP by scipy, checked by a fine grid), decision vs full mode, checked counterexamples, solver
failure -> unknown, and (when maraboupy is importable) agreement with Marabou."""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from certify.convex import milp
from certify.ir import Linear, ReLU, sequential
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball


def mlp(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    ops = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        ops.append(Linear(torch.randn(b, a, generator=g), torch.randn(b, generator=g) * 0.5))
        if i < len(sizes) - 2:
            ops.append(ReLU())
    return sequential((sizes[0],), ops)


def brute_force_min(net, c, lo, hi):
    """min over the box of c @ net(x) for a 2-hidden-layer net: one LP per activation pattern."""
    W = [n.op.weight.double().numpy() for n in net.nodes if isinstance(n.op, Linear)]
    b = [n.op.bias.double().numpy() for n in net.nodes if isinstance(n.op, Linear)]
    n1, n2 = len(b[0]), len(b[1])
    best = np.inf
    for pat in itertools.product([0, 1], repeat=n1 + n2):
        D1, D2 = np.diag(pat[:n1]), np.diag(pat[n1:])
        A1, c1 = W[0], b[0]                                   # pre1 = A1 x + c1
        A2, c2 = W[1] @ D1 @ A1, W[1] @ D1 @ c1 + b[1]        # pre2 = A2 x + c2
        obj, off = c @ W[2] @ D2 @ A2, c @ (W[2] @ D2 @ c2 + b[2])
        s1 = 1 - 2 * np.array(pat[:n1])                       # active: -pre <= 0, inactive: pre <= 0
        s2 = 1 - 2 * np.array(pat[n1:])
        A_ub = np.vstack([s1[:, None] * A1, s2[:, None] * A2])
        b_ub = np.concatenate([-s1 * c1, -s2 * c2])
        r = linprog(obj, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lo, hi)), method="highs")
        if r.status == 0:
            best = min(best, r.fun + off)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_milp_minimum_equals_brute_force(seed):
    net = mlp((2, 5, 4, 3), seed)
    x = torch.tensor([[0.5, 0.4]])
    eps = 0.3
    C = robustness_matrix(net(x).argmax(1), 3)
    r = milp(net, x, eps=eps, C=C, mode="full", domain=None)
    assert all(s == "optimal" for s in r.status[0])
    lo, hi = (x[0] - eps).double().numpy(), (x[0] + eps).double().numpy()
    n64 = net.to(torch.float64)
    g = torch.stack(torch.meshgrid(torch.linspace(lo[0], hi[0], 301, dtype=torch.float64),
                                   torch.linspace(lo[1], hi[1], 301, dtype=torch.float64), indexing="ij"), -1)
    grid = (n64(g.reshape(-1, 2)) @ C[0].double().T).min(0).values
    for k in range(C.shape[1]):
        exact = brute_force_min(n64, C[0, k].double().numpy(), lo, hi)
        assert abs(float(r.lower[0, k]) - exact) < 1e-4 * (1 + abs(exact)), (k, float(r.lower[0, k]), exact)
        assert float(r.lower[0, k]) <= exact + 1e-9           # never above the true minimum
        assert float(r.upper[0, k]) >= exact - 1e-9           # a real point's margin
        assert exact <= float(grid[k]) + 1e-9 and float(grid[k]) - exact < 0.05


def test_decision_mode_agrees_with_full_mode_and_counterexamples_are_real():
    net = mlp((4, 10, 10, 3), 7)
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(1))
    lab = net(x).argmax(1)
    C = robustness_matrix(lab, 3)
    for eps in (0.05, 0.3):
        full = milp(net, x, eps=eps, C=C, mode="full")
        dec = milp(net, x, eps=eps, C=C, mode="decision")
        want = ["certified" if float(full.lower[b].min()) > 0 else "falsified" for b in range(6)]
        assert full.verdict == want and dec.verdict == want
        s = ball(x, eps)
        for res in (full, dec):
            for b, cx in enumerate(res.counterexample):
                if cx is None:
                    continue
                assert bool(s.contains(cx[None].expand(6, -1), tol=1e-7)[b])
                y = net.to(torch.float64)(cx[None].double())
                assert float((y @ C[b].double().T).min()) < 0
    assert "falsified" in want or "certified" in want


def test_time_limit_gives_unknown_never_certified():
    net = mlp((10, 40, 40, 40, 3), 3)
    x = torch.rand(1, 10, generator=torch.Generator().manual_seed(0))
    C = robustness_matrix(net(x).argmax(1), 3)
    r = milp(net, x, eps=0.4, C=C, mode="full", time_limit=1e-3)
    assert r.verdict == ["unknown"]
    assert any("time" in s for s in r.status[0])


def test_marabou_agrees_when_available(tmp_path):
    maraboupy = pytest.importorskip("maraboupy")
    from maraboupy import Marabou
    net = mlp((2, 6, 6, 2), 11)
    x = torch.tensor([[0.5, 0.5]])
    lab = int(net(x).argmax(1))
    path = tmp_path / "n.onnx"
    net.to_onnx(str(path))
    for eps in (0.02, 0.2, 0.5):
        ours = milp(net, x, eps=eps, C=robustness_matrix(torch.tensor([lab]), 2), domain=None).verdict[0]
        m = Marabou.read_onnx(str(path))
        iv, ov = m.inputVars[0].flatten(), m.outputVars[0].flatten()
        for i, v in enumerate(iv):
            m.setLowerBound(v, float(x[0, i]) - eps)
            m.setUpperBound(v, float(x[0, i]) + eps)
        m.addInequality([ov[lab], ov[1 - lab]], [1.0, -1.0], 0.0)     # y_lab - y_other <= 0
        res = m.solve(verbose=False)[0]
        assert (res == "unsat") == (ours == "certified")


def test_certified_radius_lp_below_milp_and_bracketed():
    from certify.convex import certified_radius, lp
    net = mlp((3, 8, 8, 3), 21)
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(2))
    lab = net(x).argmax(1)
    r_lp = certified_radius(lp, net, x, lab, hi=0.5, tol=1e-3)
    r_milp = certified_radius(milp, net, x, lab, hi=0.5, tol=1e-3, mode="decision")
    assert bool((r_lp <= r_milp + 1e-3).all()) and bool((r_milp > 0).all())
    for b in range(2):
        C = robustness_matrix(lab[b: b + 1], 3)
        if r_milp[b] < 0.5:      # just above the radius a counterexample exists
            assert milp(net, x[b: b + 1], eps=float(r_milp[b]) + 2e-3, C=C).verdict == ["falsified"]
        assert milp(net, x[b: b + 1], eps=float(r_milp[b]), C=C).verdict == ["certified"]
