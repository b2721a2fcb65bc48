"""Linear relaxations of the nonlinear ops, from pre-activation bounds ``lo <= x <= hi``.

Elementwise ops return ``Relax(lower_slope, lower_bias, upper_slope, upper_bias)``, tensors
(B, *shape), such that for every x in [lo, hi]:

    lower_slope * x + lower_bias  <=  f(x)  <=  upper_slope * x + upper_bias.

* ReLU: upper = chord ``hi (x - lo) / (hi - lo)`` for unstable neurons; lower = ``a x`` with
  any a in [0, 1] (CROWN's adaptive choice a = 1 if hi > -lo else 0, or alpha-CROWN's
  optimized a); stable neurons are exact (identity or zero).
* Sigmoid / Tanh (convex for x <= 0, concave for x >= 0): on a convex piece, chord above and
  the tangent at the midpoint below; on a concave piece the reverse; on an interval that
  straddles 0, the chord on a side where it is provably valid (upper if f'(hi) >= slope of
  the chord, lower if f'(lo) >= it), otherwise DeepPoly's line of slope min(f'(lo), f'(hi))
  through the endpoint. Intercepts are moved outward by ``10 * machine eps`` of the dtype
  (1.2e-6 in float32) to absorb rounding of f at the endpoints.
* LeakyReLU: as ReLU, the chord on one side and a line through 0 on the other; Sign and Floor:
  lines of free slope with the exact extremes of f(x) - k x as intercepts (step relaxations).
  The records of bounds/activations.py say which op uses which; smooth ops: bounds/smooth.py.
* MaxPool (DeepPoly): in each window, k = argmax of the lower bounds; ``y >= x_k`` always;
  ``y <= x_k`` when lo_k >= hi_j for every other j (the max is x_k), else ``y <= max_j hi_j``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Relax(NamedTuple):
    lower_slope: torch.Tensor
    lower_bias: torch.Tensor
    upper_slope: torch.Tensor
    upper_bias: torch.Tensor


def relu_unstable(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return (lo < 0) & (hi > 0)


def relu_adaptive_slope(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """CROWN's lower slope: 1 where hi > -lo (active-ish, or stable active), else 0."""
    return ((hi > -lo) & (hi > 0)).to(lo.dtype)


def relu_relax(lo: torch.Tensor, hi: torch.Tensor, alpha: torch.Tensor | None = None) -> Relax:
    """ReLU relaxation. ``alpha`` (broadcastable to lo, values in [0, 1]) replaces the adaptive
    lower slope of unstable neurons; stable neurons ignore it."""
    unstable = relu_unstable(lo, hi)
    active = (lo >= 0).to(lo.dtype)
    denom = torch.where(unstable, hi - lo, torch.ones_like(lo))
    up_slope = torch.where(unstable, hi / denom, active)
    up_bias = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
    if alpha is None:
        low_slope = torch.where(unstable, relu_adaptive_slope(lo, hi), active)
    else:
        low_slope = torch.where(unstable, alpha, active)
    return Relax(low_slope, torch.zeros_like(lo), up_slope, up_bias)


def _s_shaped(lo, hi, f, df) -> Relax:
    """Relaxation of a sigmoid-shaped f (convex on x <= 0, concave on x >= 0)."""
    margin = 10 * torch.finfo(lo.dtype).eps
    fl, fu, dl, du = f(lo), f(hi), df(lo), df(hi)
    width = hi - lo
    tiny = width <= 1e-6 * (1 + lo.abs())
    k = torch.where(tiny, df((lo + hi) / 2), (fu - fl) / torch.where(tiny, torch.ones_like(width), width))
    m = (lo + hi) / 2
    fm, dm = f(m), df(m)
    lam = torch.minimum(dl, du)
    # Candidate lines (slope, intercept).
    chord_b = fl - k * lo
    tan_b = fm - dm * m
    convex, concave = hi <= 0, lo >= 0
    mixed = ~(convex | concave)
    # Upper line.
    up_chord = convex | (mixed & (du >= k))
    up_s = torch.where(up_chord, k, torch.where(concave, dm, lam))
    up_b = torch.where(up_chord, chord_b, torch.where(concave, tan_b, fu - lam * hi))
    # Lower line.
    lo_chord = concave | (mixed & (dl >= k))
    lo_s = torch.where(lo_chord, k, torch.where(convex, dm, lam))
    lo_b = torch.where(lo_chord, chord_b, torch.where(convex, tan_b, fl - lam * lo))
    # A degenerate interval: the constant f(m) +- the (tiny) variation over the interval.
    var = du.maximum(dl).maximum(dm) * width
    lo_s, up_s = torch.where(tiny, torch.zeros_like(k), lo_s), torch.where(tiny, torch.zeros_like(k), up_s)
    lo_b = torch.where(tiny, torch.minimum(fl, fu) - var, lo_b)
    up_b = torch.where(tiny, torch.maximum(fl, fu) + var, up_b)
    return Relax(lo_s, lo_b - margin, up_s, up_b + margin)


def _dsigmoid(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def _dtanh(x):
    t = torch.tanh(x)
    return 1 - t * t


def sigmoid_relax(lo: torch.Tensor, hi: torch.Tensor, alpha=None) -> Relax:
    return _s_shaped(lo, hi, torch.sigmoid, _dsigmoid)


def tanh_relax(lo: torch.Tensor, hi: torch.Tensor, alpha=None) -> Relax:
    return _s_shaped(lo, hi, torch.tanh, _dtanh)


# ----------------------------------------------------------------------------- piecewise-linear and step ops
def _margin(lo: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """The outward rounding margin of an intercept: 10 eps of the dtype times the magnitudes."""
    return 10 * torch.finfo(lo.dtype).eps * mag


def leaky_relu_relax(lo: torch.Tensor, hi: torch.Tensor, slope: float, alpha: torch.Tensor | None = None) -> Relax:
    """LeakyReLU with negative slope ``slope`` (a). Stable neurons are exact. An unstable one
    (lo < 0 < hi) gets the chord on one side and a line through 0 of slope a + t (1 - a) on the
    other (below for a <= 1, where the function is convex; above for a > 1); t is ``alpha`` in
    [0, 1] or CROWN's adaptive 1 if hi > -lo else 0. The chord's intercept moves outward by 10 eps."""
    a = float(slope)
    unstable = relu_unstable(lo, hi)
    one, zero = torch.ones_like(lo), torch.zeros_like(lo)
    exact = torch.where(lo >= 0, one, one * a)
    den = torch.where(unstable, hi - lo, one)
    k = (hi - a * lo) / den
    b = (a - k) * lo
    m = _margin(lo, (a * lo).abs() + k.abs() * torch.maximum(lo.abs(), hi.abs()))
    t = relu_adaptive_slope(lo, hi) if alpha is None else alpha.clamp(0.0, 1.0)
    s = torch.where(unstable, a + t * (1 - a), exact)
    chord_s = torch.where(unstable, k, exact)
    if a <= 1:
        return Relax(s, zero, chord_s, torch.where(unstable, b + m, zero))
    return Relax(chord_s, torch.where(unstable, b - m, zero), s, zero)


def _step_lines(lo, hi, k_ranges, intercept, exact, value, alpha):
    """Lines of a step function with slopes in [0, k_max] (lower, upper) and sound intercepts
    ``intercept(k, upper)``: CROWN's choice is the slope tightest at the midpoint (0 or k_max),
    alpha's a fraction of the range. Exact (constant ``value``) where ``exact``."""
    m = (lo + hi) / 2
    rad = torch.maximum(lo.abs(), hi.abs())
    out = []
    for j, (kmax, upper) in enumerate(zip(k_ranges, (False, True))):
        if alpha is None:
            cands = [torch.zeros_like(kmax), kmax]
            vals = [c * m + intercept(c, upper) for c in cands]
            better = vals[1] > vals[0] if not upper else vals[1] < vals[0]
            k = torch.where(better, kmax, torch.zeros_like(kmax))
        else:
            k = alpha[j].clamp(0.0, 1.0) * kmax
        b = intercept(k, upper)
        mag = intercept(torch.zeros_like(k), upper).abs() + 1 + k.abs() * rad
        b = b + _margin(lo, mag) if upper else b - _margin(lo, mag)
        out += [torch.where(exact, torch.zeros_like(k), k), torch.where(exact, value, b)]
    return Relax(*out)


def _sign_slope_ranges(lo, hi):
    """(lower, upper) largest valid slopes of Sign's lines on [lo, hi] (0 where the step is not inside)."""
    jump = torch.sign(hi) - torch.sign(lo)
    one, zero = torch.ones_like(lo), torch.zeros_like(lo)
    k_up = torch.where(lo < 0, jump / torch.where(lo < 0, -lo, one), zero)
    k_lo = torch.where(hi > 0, jump / torch.where(hi > 0, hi, one), zero)
    return k_lo, k_up


def sign_alpha_init(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """CROWN's Sign lines as alpha (B, 2 * shape[0], ...): fractions of the slope ranges (lower, upper)."""
    r = sign_relax(lo, hi)
    fr = [torch.where(kmax > 0, k / torch.where(kmax > 0, kmax, torch.ones_like(kmax)), torch.zeros_like(k))
          for k, kmax in zip((r.lower_slope, r.upper_slope), _sign_slope_ranges(lo, hi))]
    return torch.cat(fr, 1)


def floor_alpha_init(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """CROWN's Floor lines as alpha (B, 2 * shape[0], ...): the slopes (lower, upper), in [0, 1]."""
    r = floor_relax(lo, hi)
    return torch.cat([r.lower_slope, r.upper_slope], 1)


def sign_relax(lo: torch.Tensor, hi: torch.Tensor, alpha=None) -> Relax:
    """Sign (sign(0) = 0). Where sign(lo) != sign(hi): the upper line has intercept sign(hi) and
    a slope in [0, (sign(hi) - sign(lo)) / -lo] (it passes above (lo, sign(lo))), the lower line
    intercept sign(lo) and a slope in [0, (sign(hi) - sign(lo)) / hi]; ``alpha``: None or
    (lower, upper) fractions of those ranges."""
    s_lo, s_hi = torch.sign(lo), torch.sign(hi)
    exact = s_lo == s_hi
    k_lo, k_up = _sign_slope_ranges(lo, hi)

    def intercept(k, upper):
        return (s_hi if upper else s_lo) + 0 * k
    return _step_lines(lo, hi, (k_lo, k_up), intercept, exact, s_lo, alpha)


def floor_relax(lo: torch.Tensor, hi: torch.Tensor, alpha=None) -> Relax:
    """Floor. Where floor(lo) != floor(hi): slopes k in [0, 1] with the exact extremes of
    floor(x) - k x over [lo, hi], max(floor(lo) - k lo, floor(hi) (1 - k)) above and
    min(floor(lo) (1 - k) - k, floor(hi) - k hi) below (k = 1 gives x - 1 <= floor(x) <= x)."""
    fl, fh = torch.floor(lo), torch.floor(hi)
    exact = fl == fh

    def intercept(k, upper):
        if upper:
            return torch.maximum(fl - k * lo, fh * (1 - k))
        return torch.minimum(fl * (1 - k) - k, fh - k * hi)
    one = torch.ones_like(lo)
    return _step_lines(lo, hi, (one, one), intercept, exact, fl, alpha)


class PoolRelax(NamedTuple):
    """MaxPool relaxation per output position: index (within the window) of the chosen input,
    whether ``y = x_k`` exactly, and the constant upper bound. Shapes (B, C, Ho, Wo)."""
    index: torch.Tensor
    exact: torch.Tensor
    upper_const: torch.Tensor


def pool_windows(x: torch.Tensor, op, fill: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, kh*kw, Ho*Wo) windows of ``op`` (padding filled with ``fill``)."""
    B, C, H, W = x.shape
    ph, pw = op.padding
    xp = F.pad(x, (pw, pw, ph, ph), value=fill) if (ph or pw) else x
    cols = F.unfold(xp.reshape(B * C, 1, H + 2 * ph, W + 2 * pw), op.kernel, stride=op.stride)
    return cols.reshape(B, C, cols.shape[1], cols.shape[2])


def maxpool_relax(op, lo: torch.Tensor, hi: torch.Tensor) -> PoolRelax:
    lw = pool_windows(lo, op, float("-inf"))
    hw = pool_windows(hi, op, float("-inf"))
    lmax, k = lw.max(dim=2)                                    # (B, C, L)
    others = hw.scatter(2, k.unsqueeze(2), float("-inf")).max(dim=2).values
    exact = lmax >= others
    umax = hw.max(dim=2).values
    return PoolRelax(k, exact, umax)
