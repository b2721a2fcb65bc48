"""Sequential sampling (``smoothing.sequential``, ``Smooth.certify_adaptive``): the (1 - alpha)
guarantee measured on classifiers whose pA is known in closed form, and the sample savings.

Most runs are a vectorized simulation of the binomial counts through the same ``SequentialTest``
(selection from n0 draws, then fresh draws up to each look); a few go through ``Smooth`` with a
linear torch model, whose smoothed pA is Phi(margin / (sigma ||w||)). Allowed failure counts are
binomial quantiles at 1e-6."""
import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from certify.errors import CertifyError
from smoothing import Smooth, lower_confidence_bound
from smoothing.noise import NOISES
from smoothing.sequential import CONTINUE, REASONS, SequentialTest, looks
from smoothing.stats import clopper_pearson

SIGMA = 0.25


def simulate(test: SequentialTest, p: float, runs: int, n0: int, seed: int):
    """Cohen's two stages with two classes, class 0 of probability ``p``: selection from n0 draws
    (ties go to class 0, as argmax does), then the sequential estimation of the selected class.
    Returns (p of the selected class, final lower bound, reason codes, estimation samples)."""
    rng = np.random.default_rng(seed)
    k0 = rng.binomial(n0, p, runs)
    pc = np.where(k0 >= n0 - k0, p, 1.0 - p)
    k, lo, code, used = (np.zeros(runs, dtype=np.int64), np.zeros(runs), np.zeros(runs, dtype=np.int64),
                         np.zeros(runs, dtype=np.int64))
    active, prev = np.ones(runs, dtype=bool), 0
    for j, n_j in enumerate(test.looks):
        ids = np.flatnonzero(active)
        k[ids] += rng.binomial(n_j - prev, pc[ids])
        prev = n_j
        lo[ids], _, code[ids] = test.decide(k[ids], j)
        used[ids] = n_j
        active[ids[code[ids] != CONTINUE]] = False
        if not active.any():
            break
    return pc, lo, code, used


def wrong(test: SequentialTest, pc, lo):
    """Answers wrong for the selected class of true probability ``pc``: a radius above the true
    radius sigma Phi^-1(pc) (any non-abstaining answer when pc <= 1/2), or, with a target r,
    certified at r though the true radius is below r."""
    true_r = np.where(pc > 0.5, SIGMA * norm.ppf(np.clip(pc, 0.5, 1.0)), -np.inf)
    radius = test.radii(lo)
    bad = (lo >= 0.5) & (radius > true_r)
    if test.radius is not None:
        bad |= (lo >= 0.5) & (radius >= test.radius) & (true_r < test.radius)
    return bad


def test_looks_schedule_and_arguments():
    assert looks(100_000) == (100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 100_000)
    assert looks(50, first=100) == (50,)
    assert looks(1000, first=3, growth=1.1)[:4] == (3, 4, 5, 6)       # strictly increasing after rounding
    with pytest.raises(CertifyError, match="growth"):
        looks(1000, growth=1.0)
    with pytest.raises(CertifyError, match="radius"):
        SequentialTest("gaussian", SIGMA, 0.001, 1000, radius=-0.1)
    t = SequentialTest("gaussian", SIGMA, 0.001, 100_000, radius=0.5)
    assert t.level == pytest.approx(0.001 / 11) and t.needed == pytest.approx(norm.cdf(2.0))


def test_clopper_pearson_bounds_match_the_one_sided_test():
    k = np.array([0, 1, 7, 50, 99, 100])
    lo, hi = clopper_pearson(k, 100, 0.01)
    assert lo.tolist() == pytest.approx([lower_confidence_bound(int(a), 100, 0.01) for a in k], abs=1e-12)
    assert hi.tolist() == pytest.approx([1 - lower_confidence_bound(100 - int(a), 100, 0.01) for a in k], abs=1e-12)
    assert lo[0] == 0.0 and hi[-1] == 1.0 and np.all(lo < k / 100 + 1e-12) and np.all(hi > k / 100 - 1e-12)


@pytest.mark.parametrize("name", list(NOISES))
def test_needed_probability_inverts_the_radius(name):
    fam = NOISES[name]
    assert fam.needed(0.0, 0.5) == 0.5
    for r in (0.05, 0.2, 0.4):
        assert fam.radius(fam.needed(r, 0.5), 0.5) == pytest.approx(r, rel=1e-9)


# true pA of class 0 per case: near 1/2, near the value R = 0.25 needs (Phi(1) = 0.841), far above
CASES = [0.5, 0.7, float(norm.cdf(1.0)) - 0.01, float(norm.cdf(1.0)), 0.9, 0.99, 0.9999]


@pytest.mark.parametrize("radius", [0.25, 0.0, None])
def test_simulated_error_rate_at_most_alpha(radius):
    alpha, runs, n_max = 0.05, 2000, 20_000
    test = SequentialTest("gaussian", SIGMA, alpha, n_max, radius=radius)
    limit = binom.ppf(1 - 1e-6, runs, alpha)
    for i, p in enumerate(CASES):
        pc, lo, code, used = simulate(test, p, runs, n0=100, seed=i)
        assert wrong(test, pc, lo).sum() <= limit, (p, wrong(test, pc, lo).sum())
        assert np.all(np.isin(used, test.looks)) and np.all(code != CONTINUE)
    # the same check catches a sequential test that spends alpha at every look: pA just below
    # Phi(1) gets certified at R = 0.25 far more often than alpha
    naive = SequentialTest("gaussian", SIGMA, alpha, n_max, radius=0.25)
    naive.level = alpha
    pc, lo, _, _ = simulate(naive, float(norm.cdf(1.0)) - 0.003, runs, n0=100, seed=99)
    assert wrong(naive, pc, lo).sum() > binom.ppf(1 - 1e-6, runs, alpha)


def test_simulated_savings_near_one_and_near_half():
    n_max, runs = 100_000, 2000
    at_r = SequentialTest("gaussian", SIGMA, 0.001, n_max, radius=0.5)
    free = SequentialTest("gaussian", SIGMA, 0.001, n_max)
    # pA = 1/2 exactly cannot be shown below 1/2: without a target it ends "settled" (radius 0 and
    # at most tol from the largest radius the upper bound allows)
    for p, test, stop in [(0.9999, at_r, "certified"), (0.5, at_r, "below"), (0.6, at_r, "below"),
                          (0.5, free, "settled")]:
        _, lo, code, used = simulate(test, p, runs, n0=100, seed=1)
        assert used.mean() < n_max / 20, (p, used.mean())
        assert np.mean(code == REASONS.index(stop)) > 0.99
        assert p > 0.5 or np.mean(lo < 0.5) > 0.99
    # a radius the budget cannot reach even with every sample a success ends at the first look
    far = SequentialTest("gaussian", SIGMA, 0.001, n_max, radius=1.0)
    assert far.r_max < 1.0
    _, _, code, used = simulate(far, 1.0, 100, n0=100, seed=4)
    assert np.all(used == 100) and np.all(code == REASONS.index("below"))
    # near the value R needs, the budget is used and the answer matches fixed-N's most of the time
    _, lo, code, used = simulate(at_r, float(norm.cdf(2.0)) + 0.002, runs, n0=100, seed=2)
    assert used.mean() > n_max / 10 and np.mean(code == REASONS.index("certified")) > 0.5
    # the no-target rule stops once the radius is within tol of what the budget can reach
    loose = SequentialTest("gaussian", SIGMA, 0.001, n_max, tol=0.1)
    _, lo, code, used = simulate(loose, 1.0, runs, n0=100, seed=3)
    assert used.mean() < n_max / 2 and np.all(loose.radii(lo) >= loose.r_max - 0.1 - 1e-12)


class LinearModel(torch.nn.Module):
    """Two logits [0, w.x + b]: pA of class 1 is Phi((w.x + b) / (sigma ||w||)) under N(0, sigma^2 I)."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.fc = torch.nn.Linear(len(w), 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([torch.zeros_like(w), w]))
            self.fc.bias.copy_(torch.tensor([0.0, b]))

    def forward(self, z):
        return self.fc(z)


@pytest.mark.parametrize("margin,radius,stop,share", [(1.0, 0.25, "certified", 1 / 100), (0.0, 0.25, "below", 1 / 100),
                                                      (0.0, None, "settled", 1 / 10)])
def test_smooth_certify_adaptive_on_a_linear_model(margin, radius, stop, share):
    w = torch.tensor([0.6, -0.8, 0.0, 0.0])                     # ||w|| = 1: the true radius is the margin
    x = torch.tensor([0.3, 0.1, 0.5, -0.2])
    model = LinearModel(w, margin - float(w @ x))
    sm = Smooth(model, 2, sigma=SIGMA, seed=0)
    n_max, alpha, runs = 100_000, 0.001, 10
    results = [sm.certify_adaptive(x, radius=radius, n0=100, n_max=n_max, alpha=alpha) for _ in range(runs)]
    test = SequentialTest("gaussian", SIGMA, alpha, n_max, radius=radius)
    for r in results:
        c = r.counts_selection.argmax()
        assert r.n in test.looks and r.counts.sum() == r.n and r.samples == 100 + r.n and r.n_max == n_max
        assert r.level == test.level
        assert r.pa_lower == pytest.approx(float(clopper_pearson(r.counts[c], r.n, test.level)[0]), abs=1e-12)
        assert r.evidence()["stop"] == r.stop and r.evidence()["samples"] == r.samples
        assert r.radius <= max(margin, 0.0) + 1e-9 or r.abstained     # never above the true radius here
        assert r.abstained == (margin == 0.0)
    assert sum(r.stop == stop for r in results) >= runs - 1
    assert np.mean([r.samples for r in results]) < share * n_max
    assert sm.counter((4,)).uses_pushforward                        # the module was traced to the IR


def test_one_look_is_cohens_certify():
    model = LinearModel(torch.tensor([0.6, -0.8]), 0.1)
    x = torch.tensor([0.2, 0.1])
    a = Smooth(model, 2, sigma=SIGMA, seed=3).certify(x, n0=50, n=80, alpha=0.01)
    b = Smooth(model, 2, sigma=SIGMA, seed=3).certify_adaptive(x, radius=0.2, n0=50, n_max=80, alpha=0.01)
    assert b.looks == 1 and b.level == 0.01 and b.n == 80
    assert (a.counts.tolist(), a.prediction, a.radius) == (b.counts.tolist(), b.prediction, b.radius)
    assert a.pa_lower == pytest.approx(b.pa_lower, abs=1e-12)


def test_certify_adaptive_rejects_bad_arguments():
    sm = Smooth(LinearModel(torch.ones(2), 0.0), 2, sigma=SIGMA, seed=0)
    for kw, msg in [({"radius": float("nan")}, "radius"), ({"alpha": 0.7}, "alpha"), ({"n_max": 0}, "budget"),
                    ({"n0": 0}, "n0"), ({"tol": -1.0}, "tol")]:
        with pytest.raises(CertifyError, match=msg):
            sm.certify_adaptive(torch.zeros(2), **kw)
