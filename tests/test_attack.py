"""PGD: finds the exact minimum of a linear objective over a box / L2 ball and stays in the set."""
import torch

from certify.attack import pgd_margin, pgd_minimize
from certify.ir import Linear, ReLU, sequential
from certify.spec import ball, robustness_matrix


def test_pgd_reaches_the_linear_minimum_linf_and_l2():
    torch.manual_seed(0)
    w = torch.randn(1, 6)
    x = torch.rand(3, 6) * 0.5 + 0.25
    f = lambda z: (z @ w.T)[:, 0]  # noqa: E731
    _, v = pgd_minimize(f, ball(x, 0.1, "inf"), steps=30)
    exact = (x @ w.T)[:, 0] - 0.1 * w.abs().sum()
    assert torch.allclose(v, exact, atol=1e-5)
    _, v = pgd_minimize(f, ball(x, 0.1, 2, domain=None), steps=50)
    exact = (x @ w.T)[:, 0] - 0.1 * w.norm()
    assert torch.allclose(v, exact, atol=1e-4)


def test_pgd_margin_points_stay_in_set_and_beat_the_centre():
    torch.manual_seed(1)
    net = sequential((5,), [Linear(torch.randn(16, 5)), ReLU(), Linear(torch.randn(4, 16))])
    x = torch.rand(6, 5)
    C = robustness_matrix(net(x).argmax(1), 4)
    s = ball(x, 0.2, "inf")
    xa, v = pgd_margin(net, s, C, steps=20, restarts=2)
    assert bool(s.contains(xa).all())
    centre = (C @ net(x).unsqueeze(-1))[..., 0].min(1).values
    assert bool((v <= centre + 1e-6).all())
    assert torch.allclose(v, (C @ net(xa).unsqueeze(-1))[..., 0].min(1).values, atol=1e-5)
