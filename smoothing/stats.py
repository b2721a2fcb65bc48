"""The two statistical tests of Cohen et al. 2019, kept exactly.

* ``lower_confidence_bound(k, n, alpha)``: one-sided (1 - alpha) Clopper-Pearson lower bound on a
  binomial proportion: statsmodels ``proportion_confint(method="beta", alpha=2*alpha)`` (the lower
  end of the two-sided 1 - 2 alpha interval), which equals the Beta(alpha; k, n - k + 1) quantile
  (``beta_quantile_lower_bound``; 0 when k = 0). P(bound > true p) <= alpha.
* ``clopper_pearson(k, n, level)``: both one-sided (1 - level) bounds at once, elementwise over
  arrays (the Beta quantiles; used by the sequential test of ``smoothing.sequential``).
* ``top_two_pvalue(k1, k2)``: two-sided exact binomial test (scipy ``binomtest``) of
  k1 successes in k1 + k2 trials against p = 1/2, used by ``predict`` to abstain.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import beta, binomtest
from statsmodels.stats.proportion import proportion_confint

from certify.errors import CertifyError


def _check(k: int, n: int, alpha: float) -> None:
    if not (0 <= k <= n) or n <= 0:
        raise CertifyError(f"need 0 <= count <= n and n > 0, got count={k}, n={n}")
    if not (0.0 < alpha < 0.5):
        raise CertifyError(f"alpha must be in (0, 0.5), got {alpha}")


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on p from ``k`` successes in ``n`` trials, level 1-alpha."""
    _check(int(k), int(n), float(alpha))
    return float(proportion_confint(int(k), int(n), alpha=2 * float(alpha), method="beta")[0])


def beta_quantile_lower_bound(k: int, n: int, alpha: float) -> float:
    """The same bound from its closed form, the alpha-quantile of Beta(k, n - k + 1)."""
    _check(int(k), int(n), float(alpha))
    return 0.0 if k == 0 else float(beta.ppf(float(alpha), int(k), int(n) - int(k) + 1))


def clopper_pearson(k, n, level: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided (1 - ``level``) Clopper-Pearson lower and upper bounds on p from ``k`` of ``n``
    (arrays broadcast): Beta(level; k, n - k + 1) (0 at k = 0) and Beta(1 - level; k + 1, n - k)
    (1 at k = n). Each holds with probability >= 1 - level on its own."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n) or np.any(n <= 0):
        raise CertifyError("need 0 <= count <= n and n > 0 for every bound")
    if not 0.0 < float(level) < 0.5:
        raise CertifyError(f"level must be in (0, 0.5), got {level}")
    lo = np.where(k > 0, beta.ppf(float(level), np.maximum(k, 1), n - k + 1), 0.0)
    hi = np.where(k < n, beta.ppf(1.0 - float(level), k + 1, np.maximum(n - k, 1)), 1.0)
    return lo, hi


def top_two_pvalue(k1: int, k2: int) -> float:
    """Two-sided exact binomial p-value of ``k1`` out of ``k1 + k2`` against p = 1/2 (1.0 if both 0)."""
    k1, k2 = int(k1), int(k2)
    if k1 + k2 == 0:
        return 1.0
    return float(binomtest(k1, k1 + k2, p=0.5).pvalue)
