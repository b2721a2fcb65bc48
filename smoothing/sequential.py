"""Sequential estimation of pA: stop drawing noise once the answer is settled, keeping Cohen et
al.'s (1 - alpha) guarantee.

Looks: the estimation count is examined at J cumulative sample sizes fixed before sampling,
n_1 < n_2 < ... < n_J = n_max (``looks``: ``first``, ``first * growth``, ``first * growth^2``, ...,
rounded up, capped at n_max). At look j both one-sided Clopper-Pearson bounds L_j and U_j on the
selected class's probability are computed at level alpha / J.

Guarantee: given the class c selected from the n0 separate selection samples, the count at look
j is Binomial(n_j, p_c), so P(L_j > p_c) <= alpha / J for every j, and by the union bound
P(L_j > p_c for some j) <= alpha. So whatever rule decides after each look whether to go on (the
rules below included), the lower bound at the look where sampling stops is <= p_c with probability
>= 1 - alpha, and the radius computed from it (abstain when it is below 1/2) is wrong with
probability at most alpha: the statement of Cohen et al.'s CERTIFY. Likewise
P(U_j < p_c for some j) <= alpha, so a stop because U_j fell below a level is wrong (pA was at least
that level) with probability at most alpha.

Stopping rules, checked at every look (sampling always ends at n_max, reason "budget"):

* target radius r: "certified" when L_j >= 1/2 and the radius of L_j is >= r; "below" when
  U_j < p* = the noise family's pA needed for radius r (r cannot be certified; this includes
  abstaining early when pA is near 1/2, since p* >= 1/2), or when even n_max - n_j further
  successes would leave the radius of the last look's lower bound below r.
* no target: "abstain" when U_j < 1/2; "settled" when the radius cannot grow by more than ``tol``:
  min(R(U_j), R_max) - R(L_j) <= tol, with R_max the radius of n_max successes in n_max samples
  (the largest the budget can certify) and R(L_j) = 0 below 1/2.
"""
from __future__ import annotations

import math

import numpy as np

from certify.errors import CertifyError
from smoothing.noise import NoiseFamily, check_sigma, get_noise
from smoothing.stats import clopper_pearson

REASONS = ("continue", "certified", "below", "abstain", "settled", "budget")
CONTINUE, CERTIFIED, BELOW, ABSTAIN, SETTLED, BUDGET = range(len(REASONS))


def looks(n_max: int, first: int = 100, growth: float = 2.0) -> tuple[int, ...]:
    """Cumulative sample sizes first, ceil(first * growth), ... (strictly increasing), ending at n_max."""
    n_max, first, growth = int(n_max), int(first), float(growth)
    if n_max < 1 or first < 1:
        raise CertifyError(f"the sample budget and the first look must be >= 1, got n_max={n_max}, first={first}")
    if not (growth > 1.0 and math.isfinite(growth)):
        raise CertifyError(f"growth must be a number > 1, got {growth}")
    out, n = [], float(first)
    while math.ceil(n) < n_max:
        if not out or math.ceil(n) > out[-1]:
            out.append(math.ceil(n))
        n *= growth
    return tuple(out) + (n_max,)


class SequentialTest:
    """The looks, their level alpha / J and the stopping rule of the module docstring.

    Args:
        noise, sigma: the noise family (name or ``NoiseFamily``) and its scale.
        alpha: total failure probability of the lower bound (and, separately, of the upper bound).
        n_max: the sample budget (last look).
        radius: target radius r (the fixed-radius rule), or None (the no-target rule).
        tol: the no-target rule's radius tolerance (default sigma / 10); ignored with a target.
        first, growth: the schedule of looks (``looks``).
    """

    def __init__(self, noise, sigma: float, alpha: float, n_max: int, radius: float | None = None,
                 tol: float | None = None, first: int = 100, growth: float = 2.0):
        self.family: NoiseFamily = get_noise(noise)
        self.sigma = check_sigma(sigma)
        if not 0 < float(alpha) < 0.5:
            raise CertifyError(f"alpha must be in (0, 0.5), got {alpha}")
        if radius is not None and not (float(radius) >= 0 and math.isfinite(float(radius))):
            raise CertifyError(f"the target radius must be a number >= 0, got {radius}")
        self.tol = self.sigma / 10 if tol is None else float(tol)
        if not (self.tol >= 0 and math.isfinite(self.tol)):
            raise CertifyError(f"tol must be a number >= 0, got {tol}")
        self.alpha, self.radius = float(alpha), None if radius is None else float(radius)
        self.looks = looks(n_max, first, growth)
        self.n_max = self.looks[-1]
        self.level = self.alpha / len(self.looks)
        self.needed = None if radius is None else self.family.needed(self.radius, self.sigma)
        self.r_max = self.radii(clopper_pearson(self.n_max, self.n_max, self.level)[0])

    def radii(self, p) -> np.ndarray:
        """Certified radius of each lower bound in ``p`` (0 below 1/2), elementwise."""
        p = np.asarray(p, dtype=np.float64)
        values, where = np.unique(p, return_inverse=True)
        r = [self.family.radius(float(q), self.sigma) if q >= 0.5 else 0.0 for q in values]
        return np.asarray(r, dtype=np.float64)[where].reshape(p.shape)

    def decide(self, k, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bounds (L, U) from counts ``k`` (array) at look ``j`` and the reason codes (``REASONS``
        index; CONTINUE = draw up to the next look)."""
        lo, hi = clopper_pearson(k, self.looks[j], self.level)
        code = np.full(lo.shape, CONTINUE, dtype=np.int64)
        r_lo = self.radii(lo)
        if self.radius is not None:
            best = clopper_pearson(np.asarray(k) + (self.n_max - self.looks[j]), self.n_max, self.level)[0]
            code[(hi < self.needed) | (self.radii(best) < self.radius)] = BELOW
            code[(lo >= 0.5) & (r_lo >= self.radius)] = CERTIFIED
        else:
            gain = np.minimum(self.radii(hi), self.r_max) - r_lo
            code[gain <= self.tol] = SETTLED
            code[hi < 0.5] = ABSTAIN
        if j == len(self.looks) - 1:
            code[code == CONTINUE] = BUDGET
        return lo, hi, code
