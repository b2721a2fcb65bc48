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


def _sign_staircase(n: int):
    """y = sum_i sign(x_i - 0.8) on [-1, 1]^n: piecewise constant (gradient 0 everywhere); y >= n - 0.5
    only where every x_i > 0.8, a corner of volume 0.1^n that random starts miss."""
    from certify.ir import Sign
    return sequential((n,), [Linear(torch.eye(n), torch.full((n,), -0.8)), Sign(),
                             Linear(torch.ones(1, n), torch.zeros(1))])


def test_surrogate_gradient_finds_what_plain_pgd_cannot_through_sign():
    """Through Sign the true gradient is 0, so plain PGD never moves from its starts; the
    straight-through search (``search_forward``) climbs into the corner. The counterexample is
    the real network's: re-evaluated in float64 it violates the property."""
    import numpy as np
    from bounds.bab.falsify import Falsifier
    from certify.attack import search_forward
    from certify.spec.vnnlib import Region, VnnlibProperty
    n = 10
    net = _sign_staircase(n)
    box = ball(torch.zeros(8, n), 1.0, "inf")
    _, v_plain = pgd_minimize(lambda x: -net(x)[:, 0], box, steps=30, restarts=2,
                              generator=torch.Generator().manual_seed(0))
    assert float(v_plain.min()) > -(n - 0.5)          # plain PGD: stuck where it started
    search = search_forward(net)
    x = torch.rand(4, n) * 2 - 1
    assert torch.equal(search(x), net(x))             # values are the network's own
    A, b = np.array([[-1.0]]), np.array([-(n - 0.5)])  # violated iff y >= n - 0.5
    prop = VnnlibProperty("<test>", n, 1, [Region(-np.ones(n), np.ones(n), [(A, b)])])
    fal = Falsifier(net, prop, seed=0)
    lo, hi = -torch.ones(1, n, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)
    ce, _ = fal.pgd(lo, hi, [(A, b)], steps=30, restarts=2)
    assert ce is not None
    xs, ys = ce
    assert np.all(xs >= -1) and np.all(xs <= 1) and np.all(xs > 0.8)
    y64 = net.detach().to(torch.float64)(torch.as_tensor(xs).reshape(1, n))[0].numpy()
    assert y64[0] == n and ys[0] == n


def test_pgd_stops_at_the_first_value_below_stop_below():
    """With ``stop_below`` the search ends once some row is below it (few objective calls); the
    returned value is the objective's at the returned point."""
    calls = []
    w = torch.ones(1, 4)

    def f(z):
        calls.append(1)
        return (z @ w.T)[:, 0]
    box = ball(torch.zeros(2, 4), 1.0, "inf")
    x, v = pgd_minimize(f, box, steps=50, restarts=4, stop_below=-0.5)
    assert len(calls) <= 8 and float(v.min()) < -0.5
    assert torch.allclose(v, f(x))
    calls.clear()
    pgd_minimize(f, box, steps=50, restarts=4)
    assert len(calls) > 100
