"""Smooth.certify / predict against closed forms (statistical tests with fixed seeds; the allowed
failure counts are binomial quantiles at 1e-6, so a correct implementation fails with
probability < 1e-6 per check while a broken bound fails almost surely)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from certify.errors import CertifyError
from certify.ir import Flatten, Linear, ReLU, sequential
from smoothing import Smooth

SIGMA = 0.5


def linear_net(w, b):
    """Two logits [0, w.x + b]: class 1 iff w.x + b > 0. Smoothed with N(0, s^2 I): pA is
    Phi(|w.x + b| / (s ||w||)) and the true L2 radius of g at x is |w.x + b| / ||w||."""
    W = torch.stack([torch.zeros_like(w), w]).double()
    return sequential((w.numel(),), [Linear(W, torch.tensor([0.0, b], dtype=torch.float64))])


@pytest.mark.parametrize("push", [True, False])
def test_linear_classifier_radius_sound_and_tight(push):
    torch.manual_seed(1)
    w = torch.randn(5)
    x = torch.randn(5)
    b = -float(w.double() @ x.double()) + 0.4 * float(w.double().norm())   # true radius 0.4
    net = linear_net(w, b)
    true_r = abs(float(w.double() @ x.double()) + b) / float(w.double().norm())
    assert true_r == pytest.approx(0.4, abs=1e-6)
    alpha, runs = 0.05, 200
    sm = Smooth(net, 2, sigma=SIGMA, seed=0, pushforward=push)
    assert sm.counter((5,)).uses_pushforward == push        # 2 logits < 5 inputs: pushforward applies
    exceed = 0
    for _ in range(runs):
        r = sm.certify(x, n0=50, n=1000, alpha=alpha)
        assert r.prediction in (1, -1)
        exceed += r.radius > true_r
    # P(radius > true radius) <= alpha per run
    assert exceed <= binom.ppf(1 - 1e-6, runs, alpha), exceed
    # the certified radius approaches the true one as n grows (gap ~ sigma * z_alpha * sd(pA))
    gaps = []
    for n in (1_000, 10_000, 200_000):
        rs = [sm.certify(x, n0=100, n=n, alpha=0.001).radius for _ in range(3)]
        gaps.append(true_r - float(np.mean(rs)))
    assert gaps[0] > gaps[1] > gaps[2] > -1e-3
    assert gaps[2] < 0.03 * true_r + 0.01


@pytest.mark.parametrize("noise", ["laplace", "uniform", "gaussian"])
def test_one_dimensional_threshold_radius_sound_and_tight(noise):
    # f(z) = 1 iff z > 0, x = 0.3: every family's radius formula is tight in 1-D, so the certified
    # radius is <= 0.3 except with probability alpha and tends to 0.3 as n grows
    net = sequential((1,), [Linear(torch.tensor([[0.0], [1.0]], dtype=torch.float64),
                                   torch.zeros(2, dtype=torch.float64))])
    x = torch.tensor([0.3])
    sm = Smooth(net, 2, noise=noise, sigma=0.5, seed=2)
    alpha, runs = 0.05, 200
    radii = np.array([sm.certify(x, n0=20, n=500, alpha=alpha).radius for _ in range(runs)])
    assert (radii > 0.3).sum() <= binom.ppf(1 - 1e-6, runs, alpha)
    big = sm.certify(x, n0=100, n=400_000, alpha=0.001).radius
    assert 0.3 - 0.02 < big <= 0.3


def test_constant_classifier_exact_bound_and_radius():
    W = torch.zeros(4, 3)
    net = sequential((3,), [Linear(W, torch.tensor([0.0, 0.0, 5.0, 0.0]))])   # always class 2
    sm = Smooth(net, 4, sigma=0.25, seed=0)
    r = sm.certify(torch.zeros(3), n0=10, n=1000, alpha=0.001)
    assert r.prediction == 2
    assert r.counts.tolist() == [0, 0, 1000, 0] and r.counts_selection.tolist() == [0, 0, 10, 0]
    pa = 0.001 ** (1 / 1000)                               # Clopper-Pearson lower bound for k = n
    assert r.pa_lower == pytest.approx(pa, rel=1e-9)
    assert r.radius == pytest.approx(0.25 * norm.ppf(pa), rel=1e-9)
    assert r.radius_in("inf") == pytest.approx(r.radius / math.sqrt(3))
    assert sm.predict(torch.zeros(3), n=50, alpha=0.001) == 2


class CoinFlip(torch.nn.Module):
    """Class 1 iff the first coordinate of the input is > 0: at x = 0, pA = 1/2 exactly."""

    def forward(self, z):
        return torch.stack([torch.zeros(len(z)), z[:, 0]], 1)


def test_abstain_rules_at_half():
    sm = Smooth(CoinFlip(), 2, sigma=1.0, seed=3, input_shape=(2,))
    x = torch.zeros(2)
    cert = [sm.certify(x, n0=20, n=2000, alpha=0.01) for _ in range(100)]
    # lower bound < 1/2 except with prob alpha: abstain, radius 0
    wrong = sum(c.prediction != -1 for c in cert)
    assert wrong <= binom.ppf(1 - 1e-6, 100, 0.01)
    assert all(c.radius == 0.0 for c in cert if c.prediction == -1)
    pred = [sm.predict(x, n=2000, alpha=0.01) for _ in range(100)]
    assert sum(p != -1 for p in pred) <= binom.ppf(1 - 1e-6, 100, 0.01)


class CallCounter(torch.nn.Module):
    """Predicts class 0 on its first call, class 1 afterwards; records every input row."""

    def __init__(self):
        super().__init__()
        self.calls, self.rows = 0, []

    def forward(self, z):
        self.rows.append(z.clone())
        out = torch.zeros(len(z), 3)
        out[:, 0 if self.calls == 0 else 1] = 1.0
        self.calls += 1
        return out


def test_selection_and_estimation_samples_are_independent():
    m = CallCounter()
    sm = Smooth(m, 3, sigma=0.5, seed=0, input_shape=(4,))
    r = sm.certify(torch.zeros(4), n0=100, n=500, alpha=0.001, batch=100)
    assert r.counts_selection.tolist() == [100, 0, 0]
    assert r.counts.tolist() == [0, 500, 0]              # class 0 is never counted again: fresh samples
    assert r.prediction == -1                            # selected class 0 has pA_lower = 0
    rows = torch.cat(m.rows)
    assert rows.shape == (600, 4)
    assert torch.unique(rows, dim=0).shape[0] == 600     # no noise sample reused


def test_predict_error_rate_within_alpha():
    # P(class 1) = Phi(0.2) = 0.579 under the noise: g(x) = 1; predict must rarely say 0
    w = torch.tensor([1.0, 0.0])
    net = linear_net(w, 0.2 * SIGMA)
    sm = Smooth(net, 2, sigma=SIGMA, seed=5)
    x = torch.zeros(2)
    alpha, runs = 0.1, 300
    answers = [sm.predict(x, n=60, alpha=alpha) for _ in range(runs)]
    assert sum(a == 0 for a in answers) <= binom.ppf(1 - 1e-6, runs, alpha)
    assert sum(a == 1 for a in answers) > 0              # it does answer sometimes
    # with many samples the answer is right and not abstained
    assert sm.predict(x, n=20_000, alpha=0.001) == 1


def test_seed_reproducible_and_per_call_seed():
    net = sequential((1, 4, 4), [Flatten(), Linear(torch.randn(8, 16), torch.randn(8)), ReLU(),
                                 Linear(torch.randn(5, 8), torch.randn(5))])
    x = torch.rand(1, 4, 4)
    a = Smooth(net, 5, sigma=0.5, seed=7).certify(x, n0=50, n=3000)
    b = Smooth(net, 5, sigma=0.5, seed=7).certify(x, n0=50, n=3000)
    assert a.counts.tolist() == b.counts.tolist() and a.radius == b.radius
    sm = Smooth(net, 5, sigma=0.5, seed=1)
    c1 = sm.certify(x, n0=50, n=3000, seed=11)
    sm.certify(x, n0=50, n=3000)
    c2 = sm.certify(x, n0=50, n=3000, seed=11)
    assert c1.counts.tolist() == c2.counts.tolist()
    assert Smooth(net, 5, sigma=0.5, seed=8).certify(x, n0=50, n=3000).counts.tolist() != a.counts.tolist()


def test_noise_added_without_clipping_before_the_network():
    m = CallCounter()
    Smooth(m, 3, sigma=2.0, seed=0, input_shape=(1, 2, 2)).certify(torch.full((1, 2, 2), 0.5), n0=10, n=2000)
    rows = torch.cat(m.rows)
    assert rows.min() < -1 and rows.max() > 2           # outside [0, 1]: not clipped
    assert rows.mean().item() == pytest.approx(0.5, abs=0.1)
    assert rows.std().item() == pytest.approx(2.0, rel=0.05)


def test_bad_arguments_are_certify_errors():
    net = linear_net(torch.ones(3), 0.0)
    with pytest.raises(CertifyError, match="noise"):
        Smooth(net, 2, noise="cauchy")
    with pytest.raises(CertifyError, match="sigma"):
        Smooth(net, 2, sigma=0)
    sm = Smooth(net, 2, seed=0)
    with pytest.raises(CertifyError, match="shape"):
        sm.certify(torch.zeros(4), n0=10, n=10)
    with pytest.raises(CertifyError, match="alpha"):
        sm.certify(torch.zeros(3), n0=10, n=10, alpha=0.7)
    with pytest.raises(CertifyError, match="num_classes"):
        Smooth(net, 3, seed=0).certify(torch.zeros(3), n0=10, n=10)


def test_soft_log_probs_matches_naive_and_has_gradients():
    torch.manual_seed(0)
    mod = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4))
    sm = Smooth(mod, 4, sigma=0.3, seed=0, input_shape=(1, 2, 3))
    x = torch.rand(5, 1, 2, 3, requires_grad=True)
    noise = sm.sample_noise((7, 5, 1, 2, 3))
    lp = sm.soft_log_probs(x, noise=noise)
    naive = torch.stack([torch.softmax(mod(x + noise[i]), -1) for i in range(7)]).mean(0).log()
    assert torch.allclose(lp, naive, atol=1e-6)
    assert torch.allclose(lp.exp().sum(1), torch.ones(5), atol=1e-6)
    lp[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert sm.soft_log_probs(x.detach(), m=3).shape == (5, 4)
