"""Statistics (Clopper-Pearson, binomial test), noise families (samplers, radius formulas) and the
sampling engine (bincount counting, exact pushed-forward first-layer noise)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, binomtest, laplace

from certify.errors import CertifyError
from certify.ir import Conv2d, Flatten, Linear, Normalize, sequential
from smoothing import (NOISES, NoiseCounter, Smooth, beta_quantile_lower_bound, certified_radius, convert_radius,
                       get_noise, lower_confidence_bound, sample_noise, top_two_pvalue)
from smoothing.sampling import find_pushforward, pushforward_plan
from helpers.networks import random_mlp


# ------------------------------------------------------------------------------------ stats
@pytest.mark.parametrize("n", [1, 10, 100, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_clopper_pearson_equals_beta_quantile(n, alpha):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        cp = lower_confidence_bound(k, n, alpha)
        ref = 0.0 if k == 0 else beta.ppf(alpha, k, n - k + 1)
        assert cp == pytest.approx(ref, abs=1e-10)
        assert beta_quantile_lower_bound(k, n, alpha) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("p", [0.3, 0.5, 0.77, 0.95, 0.999])
def test_clopper_pearson_exact_coverage(p):
    # P(lower bound > p) summed exactly over the binomial law is <= alpha
    n, alpha = 400, 0.01
    k = np.arange(n + 1)
    lcb = np.array([lower_confidence_bound(int(i), n, alpha) for i in k])
    assert binom.pmf(k[lcb > p], n, p).sum() <= alpha
    assert np.all(np.diff(lcb) > 0)


def test_binomial_pvalue_and_known_values():
    assert top_two_pvalue(60, 40) == pytest.approx(binomtest(60, 100, 0.5).pvalue)
    assert top_two_pvalue(60, 40) == pytest.approx(0.056888, abs=1e-6)
    assert top_two_pvalue(0, 0) == 1.0
    assert lower_confidence_bound(50, 100, 0.05) == pytest.approx(0.41362, abs=1e-5)  # R: binom.test(50, 100, conf.level=0.9)
    with pytest.raises(CertifyError):
        lower_confidence_bound(5, 3, 0.01)


# ------------------------------------------------------------------------------------ radii
def test_radius_reference_values():
    assert certified_radius("gaussian", 0.25, 0.975) == pytest.approx(0.25 * 1.959963985, rel=1e-8)
    assert certified_radius("gaussian", 1.0, 0.8413447461) == pytest.approx(1.0, rel=1e-8)
    assert certified_radius("laplace", 1.0, 0.9) == pytest.approx(math.log(5), rel=1e-12)   # -log(0.2)
    assert certified_radius("laplace", 0.5, 0.75) == pytest.approx(0.5 * math.log(2), rel=1e-12)
    assert certified_radius("uniform", 0.5, 0.9) == pytest.approx(0.4, rel=1e-12)
    for fam in NOISES:
        assert certified_radius(fam, 0.5, 0.5) == 0.0 and certified_radius(fam, 0.5, 0.3) == 0.0
    assert NOISES["gaussian"].norm == "2" and NOISES["laplace"].norm == "1" and NOISES["uniform"].norm == "1"


@pytest.mark.parametrize("p", [0.55, 0.7, 0.9, 0.99])
def test_laplace_radius_equals_teng_and_is_tight_in_1d(p):
    b = 0.7
    pb = 1 - p
    teng = max(b / 2 * math.log(p / pb), -b * math.log(1 - p + pb))   # Teng et al. 2020, Thm 1
    r = certified_radius("laplace", b, p)
    assert r == pytest.approx(teng, rel=1e-12)
    # worst case in 1-D: A = {z <= t} with P(A) = p; shifted by d, P = F(t - d)
    t = laplace.ppf(p, scale=b)
    assert laplace.cdf(t - r * 0.999, scale=b) > 0.5
    assert laplace.cdf(t - r * 1.001, scale=b) < 0.5


@pytest.mark.parametrize("p", [0.55, 0.8, 0.99])
def test_uniform_radius_sound_in_any_l1_direction_and_tight_in_1d(p):
    s = 0.4
    r = certified_radius("uniform", s, p)
    # worst-case set keeps all mass it can outside the overlap: P_shift(A) >= p - (1 - prod(1 - |d_i| / 2s))
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = rng.dirichlet(np.ones(6)) * r * 0.999
        assert p - (1 - np.prod(1 - d / (2 * s))) > 0.5
    d1 = r * 1.001                       # 1-D: exactly p - |d| / 2s: beyond r the class can flip
    assert p - d1 / (2 * s) < 0.5


def test_convert_radius_by_ball_inclusion():
    assert convert_radius(1.0, "2", "inf", 784) == pytest.approx(1 / 28)
    assert convert_radius(1.0, "1", "2", 16) == pytest.approx(0.25)
    assert convert_radius(1.0, "1", "inf", 16) == pytest.approx(1 / 16)
    assert convert_radius(0.3, "inf", "2", 16) == 0.3 and convert_radius(0.3, "2", "1", 16) == 0.3
    # a point on the boundary of the converted L-inf ball lies in the L2 ball
    v = torch.full((784,), 1 / 28)
    assert v.norm() <= 1.0 + 1e-6


# ------------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("name,var,absmean", [("gaussian", 0.25 ** 2, 0.25 * math.sqrt(2 / math.pi)),
                                               ("laplace", 2 * 0.25 ** 2, 0.25),
                                               ("uniform", 0.25 ** 2 / 3, 0.125)])
def test_sampler_moments(name, var, absmean):
    g = torch.Generator().manual_seed(0)
    z = sample_noise((400_000,), g, name, 0.25, dtype=torch.float64)
    assert abs(z.mean().item()) < 5 * math.sqrt(var / 4e5)
    assert z.var().item() == pytest.approx(var, rel=0.02)
    assert z.abs().mean().item() == pytest.approx(absmean, rel=0.01)
    assert torch.isfinite(z).all()
    if name == "uniform":
        assert z.abs().max().item() <= 0.25
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(z, sample_noise((400_000,), g2, name, 0.25, dtype=torch.float64))


def test_unknown_noise_is_a_clear_error():
    with pytest.raises(CertifyError, match="gaussian"):
        get_noise("cauchy")


# ------------------------------------------------------------------------------------ counting
def mlp(din=12, h=6, k=4, seed=0):
    torch.manual_seed(seed)
    return random_mlp((din, h, k), None, bias_scale=1.0, normalize=False, input_shape=(1, 3, 4))


def test_counts_match_a_plain_loop_and_sum_to_n():
    net = mlp()
    x = torch.rand(1, 3, 4)
    c = NoiseCounter(net, (1, 3, 4), 4, NOISES["uniform"], 0.5, batch=64)
    g = torch.Generator().manual_seed(3)
    counts = c.counts(x, 1000, g)
    assert counts.sum() == 1000 and counts.dtype == np.int64
    g = torch.Generator().manual_seed(3)
    ref = np.zeros(4, int)
    for b in [64] * 15 + [40]:                            # same draws, one sample at a time
        e = torch.empty(b, 1, 3, 4).uniform_(-0.5, 0.5, generator=g)
        for i in range(b):
            ref[int(net(x[None] + e[i:i + 1]).argmax())] += 1
    assert counts.tolist() == ref.tolist()


def test_pushforward_factor_is_exact_and_detected():
    net = mlp()
    c = NoiseCounter(net, (1, 3, 4), 4, NOISES["gaussian"], 0.5)
    assert c.uses_pushforward
    W = net.nodes[1].op.weight.double()
    Lt = c.push.Lt.double()
    assert torch.allclose(Lt.T @ Lt, W @ W.T, atol=1e-4)  # cov of L z = W W^T
    # not used: wider first layer, conv first, other noise, or disabled
    assert find_pushforward(mlp(h=20)) is None
    conv = sequential((1, 4, 4), [Conv2d(torch.randn(2, 1, 3, 3), torch.zeros(2)), Flatten(),
                                  Linear(torch.randn(3, 8), torch.zeros(3))])
    assert find_pushforward(conv) is None
    assert not NoiseCounter(net, (1, 3, 4), 4, NOISES["laplace"], 0.5).uses_pushforward
    assert not NoiseCounter(net, (1, 3, 4), 4, NOISES["gaussian"], 0.5, pushforward=False).uses_pushforward
    with pytest.raises(CertifyError, match="pushforward"):
        NoiseCounter(conv, (1, 4, 4), 3, NOISES["gaussian"], 0.5, pushforward=True)


def normalized_mlp(seed=4):
    torch.manual_seed(seed)
    return random_mlp((12, 6, 4), None, bias_scale=1.0, normalize=False, input_shape=(1, 3, 4),
                      head=(Normalize(torch.tensor([0.13]), torch.tensor([0.31])),))


@pytest.mark.parametrize("make", [mlp, normalized_mlp])
def test_pushforward_has_the_same_distribution_of_counts(make):
    net = make(seed=4)
    assert pushforward_plan(net, (1, 3, 4)) is not None       # Normalize folded by simplify()
    x = torch.rand(1, 3, 4)
    n = 60_000
    a = Smooth(net, 4, sigma=0.5, seed=1, pushforward=False).counts(x, n)
    b = Smooth(net, 4, sigma=0.5, seed=2, pushforward=True).counts(x, n)
    pa, pb = a / n, b / n
    sd = np.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n) + 1e-12
    assert np.all(np.abs(pa - pb) <= 5 * sd), (a, b)     # two-sample z per class, 5 sd
    assert (a > 0).sum() >= 2                             # a non-trivial split among classes


@pytest.mark.parametrize("push", [False, True])
def test_prefetch_thread_gives_identical_counts(push):
    net = mlp(seed=2)
    x = torch.rand(1, 3, 4)
    a = Smooth(net, 4, sigma=0.5, seed=9, batch=128, pushforward=push, prefetch=False).certify(x, n0=100, n=1000)
    sm = Smooth(net, 4, sigma=0.5, seed=9, batch=128, pushforward=push, prefetch=True)
    b = sm.certify(x, n0=100, n=1000)
    assert sm.counter((1, 3, 4)).uses_prefetch() and sm.counter((1, 3, 4)).uses_pushforward == push
    assert a.counts.tolist() == b.counts.tolist() and a.counts_selection.tolist() == b.counts_selection.tolist()
    assert a.radius == b.radius


class Branchy(torch.nn.Module):
    """An MLP module whose forward depends on the data (torch.fx cannot trace it)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, z):
        return self.body(z) if z.sum() > -1e9 else -self.body(z)


def test_module_is_traced_for_the_pushforward_and_follows_its_weights():
    from certify.frontends.torch import from_module
    torch.manual_seed(5)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    x = torch.rand(1, 3, 4)
    sm = Smooth(module, 4, sigma=0.5, seed=3, batch=100)
    c = sm.counter((1, 3, 4))
    assert c.uses_pushforward
    # the same plan as for the traced network: identical counts from the same seed
    ref = Smooth(from_module(module, (1, 3, 4)), 4, sigma=0.5, seed=3, batch=100).counts(x, 3000)
    assert sm.counts(x, 3000).tolist() == ref.tolist()
    assert c.push.tail.nodes[-1].op.weight is module[3].weight          # parameters shared, not copied
    # the distribution equals input-space sampling of the module itself
    n = 40_000
    a, b = sm.counts(x, n), Smooth(module, 4, sigma=0.5, seed=4, pushforward=False).counts(x, n)
    sd = np.sqrt((a / n * (1 - a / n) + b / n * (1 - b / n)) / n) + 1e-12
    assert np.all(np.abs(a / n - b / n) <= 5 * sd), (a, b)
    # first-layer weights changed in place (here behind autograd's back): the noise covariance
    # W W^T changes and the plan is rebuilt, so the counts equal a fresh Smooth's
    module[1].weight.data.mul_(3.0)
    ref = Smooth(module, 4, sigma=0.5, seed=8, batch=100).counts(x, 2000)
    sm._reseed(8)
    assert sm.counts(x, 2000).tolist() == ref.tolist()


def test_untraceable_module_runs_as_is():
    torch.manual_seed(6)
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    module = Branchy(body)
    x = torch.rand(1, 3, 4)
    sm = Smooth(module, 4, sigma=0.5, seed=1)
    assert not sm.counter((1, 3, 4)).uses_pushforward
    ref = Smooth(module, 4, sigma=0.5, seed=1, pushforward=False).counts(x, 2000)
    assert sm.counts(x, 2000).tolist() == ref.tolist()
    assert Smooth(body, 4, sigma=0.5, seed=1).counter((1, 3, 4)).uses_pushforward
    with pytest.raises(CertifyError, match="pushforward"):
        Smooth(module, 4, sigma=0.5, pushforward=True).counts(x, 10)
