"""Adversarial review of smoothing: exact coverage of the one-sided Clopper-Pearson bound, the
radius formulas' tightness on a 1-D half-line classifier (the worst case of each family), the
n0 / n sample independence and sizes of ``certify``, the abstain rule, and L-inf reporting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from smoothing.core import Smooth
from smoothing.noise import NOISES, convert_radius, sample_noise
from smoothing.stats import beta_quantile_lower_bound, lower_confidence_bound, top_two_pvalue


@pytest.mark.parametrize("n", [10, 57])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_exact_coverage(n, alpha):
    """P_{k ~ Bin(n, p)}(LCB(k) > p) <= alpha for every p (exact sum over k), and the bound is
    the Beta(alpha; k, n - k + 1) quantile: one-sided at level alpha, not 2 alpha."""
    lcb = np.array([lower_confidence_bound(k, n, alpha) for k in range(n + 1)])
    assert np.allclose(lcb, [beta_quantile_lower_bound(k, n, alpha) for k in range(n + 1)], atol=1e-12)
    worst = 0.0
    for p in np.linspace(0.001, 0.999, 999):
        ks = np.nonzero(lcb > p)[0]
        worst = max(worst, float(binom.pmf(ks, n, p).sum()))
    assert worst <= alpha + 1e-12
    assert worst > 0.5 * alpha        # not needlessly conservative (i.e. not level alpha / 2)
    assert lcb[n] == pytest.approx(alpha ** (1.0 / n), rel=1e-9)   # k = n: solve p^n = alpha


@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform"])
@pytest.mark.parametrize("dist", [0.05, 0.2, 0.4])
def test_radius_is_exact_on_half_line(name, dist):
    """f(z) = A iff z < a in 1-D, x = a - dist: pA = F(dist); the certified radius must equal dist
    (never exceed it: at x + dist the smoothed classifier is a tie)."""
    sigma = 0.5
    fam = NOISES[name]
    if name == "gaussian":
        pa = float(norm.cdf(dist / sigma))
    elif name == "laplace":
        pa = 1 - 0.5 * math.exp(-dist / sigma)
    else:
        pa = (dist + sigma) / (2 * sigma)
    assert fam.radius(pa, sigma) == pytest.approx(dist, rel=1e-9)


class _Recorder(torch.nn.Module):
    """Class 0 iff the first coordinate < 0.3, else 1; records every input row it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone().reshape(x.shape[0], -1))
        a = (x.reshape(x.shape[0], -1)[:, 0] < 0.3).to(x.dtype)
        return torch.stack([a, 1 - a], 1)


def test_certify_uses_fresh_samples_of_the_right_sizes():
    m = _Recorder()
    sm = Smooth(m, 2, "gaussian", sigma=0.25, seed=0, batch=37, input_shape=(3,))
    r = sm.certify(torch.zeros(3), n0=50, n=200, alpha=0.01)
    rows = torch.cat(m.seen)
    assert rows.shape[0] == 250
    assert int(r.counts_selection.sum()) == 50 and int(r.counts.sum()) == 200
    sel, est = rows[:50], rows[50:]
    assert torch.cdist(sel, est).min() > 0          # no selection sample reused
    assert int((est[:, 0] < 0.3).sum()) == int(r.counts[0])
    assert r.pa_lower == pytest.approx(lower_confidence_bound(int(r.counts[r.prediction]), 200, 0.01))
    assert r.radius == pytest.approx(0.25 * norm.ppf(r.pa_lower))
    assert r.radius_in("inf") == pytest.approx(r.radius / math.sqrt(3))
    assert r.radius_in("1") == pytest.approx(r.radius)


def test_abstain_rule_exact():
    """Constant classifier: k = n, pA_lower = alpha^(1/n); abstain iff that is < 1/2."""
    const = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        const[1].weight.zero_()
        const[1].bias.copy_(torch.tensor([1.0, 0.0]))
    sm = Smooth(const, 2, "gaussian", sigma=1.0, seed=0, input_shape=(2,))
    r = sm.certify(torch.zeros(2), n0=1, n=9, alpha=0.01)      # 0.01^(1/9) = 0.599
    assert r.prediction == 0 and r.radius == pytest.approx(norm.ppf(0.01 ** (1 / 9)))
    r = sm.certify(torch.zeros(2), n0=1, n=6, alpha=0.01)      # 0.01^(1/6) = 0.464 < 1/2
    assert r.abstained and r.radius == 0.0


def test_predict_abstains_on_a_tie():
    assert top_two_pvalue(50, 50) == pytest.approx(1.0)
    assert top_two_pvalue(60, 40) == pytest.approx(float(2 * binom.cdf(40, 100, 0.5)))


def test_convert_radius_ball_inclusion():
    """Random directions: a vector of q-norm convert_radius(R, p, q, d) has p-norm <= R."""
    g = torch.Generator().manual_seed(0)
    d = 17
    for p, q in [("2", "inf"), ("1", "inf"), ("1", "2"), ("2", "1"), ("inf", "2")]:
        r = convert_radius(1.0, p, q, d)
        v = torch.randn(2000, d, generator=g, dtype=torch.float64)
        v = torch.where(torch.rand(2000, 1, generator=g) < 0.5, v.sign(), v)    # corners too
        qn = {"1": 1, "2": 2, "inf": float("inf")}
        v = v / torch.linalg.vector_norm(v, ord=qn[q], dim=1, keepdim=True) * r
        assert float(torch.linalg.vector_norm(v, ord=qn[p], dim=1).max()) <= 1.0 + 1e-9


@pytest.mark.parametrize("name,mean_abs", [("gaussian", math.sqrt(2 / math.pi)), ("laplace", 1.0), ("uniform", 0.5)])
def test_noise_scale(name, mean_abs):
    z = sample_noise((200_000,), torch.Generator().manual_seed(1), name, sigma=2.0, dtype=torch.float64)
    assert float(z.abs().mean()) == pytest.approx(2.0 * mean_abs, rel=0.02)
    assert abs(float(z.mean())) < 0.02
    if name == "uniform":
        assert float(z.abs().max()) <= 2.0


@pytest.mark.parametrize("pushforward", [True, False])
def test_counts_match_exact_probability_linear_net(pushforward):
    """A linear 2-class IR net (first Linear out < in: the pushforward path applies): the class-0
    frequency must match the exact Phi(margin / (sigma ||w0 - w1||)) with or without pushforward."""
    from certify.ir import Linear, sequential
    g = torch.Generator().manual_seed(3)
    W = torch.randn(2, 5, generator=g)
    b = torch.randn(2, generator=g) * 0.1
    net = sequential((5,), [Linear(W, b)])
    x = torch.rand(5, generator=g) * 0.2
    sigma = 0.7
    dw = (W[0] - W[1]).double()
    p0 = float(norm.cdf(float(dw @ x.double() + (b[0] - b[1]).double()) / (sigma * float(dw.norm()))))
    n = 40_000
    sm = Smooth(net, 2, "gaussian", sigma=sigma, seed=5, pushforward=pushforward, prefetch=False)
    c = sm.counts(x, n)
    assert abs(c[0] / n - p0) < 4.5 * math.sqrt(p0 * (1 - p0) / n)
