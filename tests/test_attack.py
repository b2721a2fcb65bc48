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
    _, v = pgd_minimize(f, ball(x, 0.1, "inf", domain=(0.0, 1.0)), steps=30)
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
    s = ball(x, 0.2, "inf", domain=(0.0, 1.0))
    xa, v = pgd_margin(net, s, C, steps=20, restarts=2)
    assert bool(s.contains(xa).all())
    centre = (C @ net(x).unsqueeze(-1))[..., 0].min(1).values
    assert bool((v <= centre + 1e-6).all())
    assert torch.allclose(v, (C @ net(xa).unsqueeze(-1))[..., 0].min(1).values, atol=1e-5)


def test_pgd_begins_no_step_past_its_deadline():
    """A deadline already past: only the start point is evaluated (no step); a near one ends a
    long attack early, with the best point so far, still in the set."""
    import time
    calls = []

    def f(z):
        calls.append(1)
        return z.sum(1)

    s = ball(torch.full((2, 3), 0.5), 0.1, "inf", domain=(0.0, 1.0))
    x, v = pgd_minimize(f, s, steps=1000, restarts=5, deadline=time.monotonic() - 1)
    assert len(calls) == 1 and torch.allclose(v, torch.full((2,), 1.5))
    calls.clear()
    t = time.monotonic()
    x, v = pgd_minimize(f, s, steps=10**6, restarts=1, deadline=t + 0.2)
    assert time.monotonic() - t < 5 and 1 < len(calls) < 10**6
    assert bool(s.contains(x).all()) and bool((v < 1.5).all())
