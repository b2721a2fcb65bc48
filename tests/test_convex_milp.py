"""MILP: exact minimum against brute force on 2-D nets (every activation pattern solved as its own
LP by scipy, checked by a fine grid), decision vs full mode, checked counterexamples, solver
failure -> unknown, and (when maraboupy is importable) agreement with Marabou."""
import pytest
import torch

from certify.convex import milp
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from helpers.networks import random_mlp
from helpers.oracles import brute_force_min, grid_min


def mlp(sizes, seed):
    return random_mlp(sizes, seed, bias_scale=0.5, normalize=False)


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
    grid = grid_min(n64, lo, hi, C[0].double(), 0.0)
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
        full = milp(net, x, eps=eps, C=C, mode="full", domain=(0.0, 1.0))
        dec = milp(net, x, eps=eps, C=C, mode="decision", domain=(0.0, 1.0))
        want = ["certified" if float(full.lower[b].min()) > 0 else "falsified" for b in range(6)]
        assert full.verdict == want and dec.verdict == want
        s = ball(x, eps, domain=(0.0, 1.0))
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
    r = milp(net, x, eps=0.4, C=C, mode="full", time_limit=1e-3, domain=(0.0, 1.0))
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
    r_lp = certified_radius(lp, net, x, lab, hi=0.5, tol=1e-3, domain=(0.0, 1.0))
    r_milp = certified_radius(milp, net, x, lab, hi=0.5, tol=1e-3, mode="decision", domain=(0.0, 1.0))
    assert bool((r_lp <= r_milp + 1e-3).all()) and bool((r_milp > 0).all())
    for b in range(2):
        C = robustness_matrix(lab[b: b + 1], 3)
        if r_milp[b] < 0.5:      # just above the radius a counterexample exists
            assert milp(net, x[b: b + 1], eps=float(r_milp[b]) + 2e-3, C=C, domain=(0.0, 1.0)).verdict == ["falsified"]
        assert milp(net, x[b: b + 1], eps=float(r_milp[b]), C=C, domain=(0.0, 1.0)).verdict == ["certified"]
