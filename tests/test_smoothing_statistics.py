"""The statistics of smoothing: exact coverage of the one-sided Clopper-Pearson bound, the
two-class test behind ``predict``'s abstain on a tie, and ``certify``'s abstain rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from smoothing.core import Smooth
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


def test_predict_abstains_on_a_tie():
    assert top_two_pvalue(50, 50) == pytest.approx(1.0)
    assert top_two_pvalue(60, 40) == pytest.approx(float(2 * binom.cdf(40, 100, 0.5)))


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
