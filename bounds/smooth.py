"""Interval images and linear bounds of smooth elementwise functions (exp, log, 1/x, x**p,
sin, cos; sigmoid and tanh for alpha's lines) on [lo, hi], sound by construction.

For any slope k the tightest valid lines of slope k are

    k x + min (f(c) - k c)  <=  f(x)  <=  k x + max (f(c) - k c),     c in [lo, hi],

and the extremes of f(x) - k x lie at lo, hi or where f'(x) = k. Each function gives those
points in closed form (``crit``); candidates are clamped into [lo, hi], so every one is a point
of the interval and missing none of the true extremes makes the intercepts valid whatever the
slope. The slope is a free choice: by default each line takes, among the chord, the tangent at
the midpoint and the two extreme slopes of f' on [lo, hi], the one whose line is tightest at
the midpoint (the chord and the midpoint tangent on a convex or concave piece); with ``alpha``
(two tensors in [0, 1]: lower line, upper line) the slope is ``kmin + alpha (kmax - kmin)``,
[kmin, kmax] the range of f' on [lo, hi] (what alpha-CROWN optimizes).

Rounding: images and intercepts move outward by ``MARGIN`` units of the dtype's eps times the
magnitudes involved (|f(c)| + |k| max(|lo|, |hi|)), which covers the few-ulp error of torch's
transcendental functions and of the products. sin / cos on an interval of width >= 2 pi are
bounded by the hull lines y = -1 and y = 1.

Where no finite line exists (1/x on an interval containing 0, log below 0, exp overflowing) the
lines are not finite; ``bounds.activations.relax`` replaces them by the interval's constants.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from certify.errors import CertifyError
from bounds.relaxations import Relax

Tensor = torch.Tensor
MARGIN = 10.0
TWO_PI = 2 * math.pi


def _eps(x: Tensor) -> float:
    return MARGIN * torch.finfo(x.dtype).eps


def nan_to_inf(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """An interval with NaN ends (inf - inf, 0 * inf) made sound: NaN -> -inf below, +inf above."""
    return (torch.nan_to_num(lo, nan=-math.inf, posinf=math.inf, neginf=-math.inf),
            torch.nan_to_num(hi, nan=math.inf, posinf=math.inf, neginf=-math.inf))


class Smooth(ABC):
    """f, f', the critical points of f(x) - k x, the range of f' and the image of [lo, hi].

    ``defined(op, lo, hi)``: where finite lines exist on [lo, hi]; ``hull``: f is bounded by
    [-1, 1] (sin / cos: long intervals get the hull lines)."""

    hull = False

    @abstractmethod
    def f(self, op, x: Tensor) -> Tensor:
        """f(x), elementwise."""

    @abstractmethod
    def df(self, op, x: Tensor) -> Tensor:
        """f'(x), elementwise."""

    def crit(self, op, k: Tensor, lo: Tensor, hi: Tensor) -> list[Tensor]:
        """Points where f'(x) = k (any extra point is harmless: candidates are clamped into [lo, hi])."""
        return []

    @abstractmethod
    def image(self, op, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Exact image of [lo, hi] (before the rounding margin); +-inf where unbounded."""

    @abstractmethod
    def slope_range(self, op, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """(min, max) of f' on [lo, hi]."""

    def defined(self, op, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.ones_like(lo, dtype=torch.bool)

    def curvature(self, op, lo: Tensor, hi: Tensor) -> Tensor | None:
        """+1 where f is convex on [lo, hi], -1 where concave, 0 where neither (or unknown);
        None: not known anywhere (the default lines come from the candidates)."""
        return None


def _extremes(fn: Smooth, op, lo, hi, k) -> tuple[Tensor, Tensor, Tensor]:
    """min and max of f(c) - k c over the candidates, and the largest |f(c)| (all shaped like k)."""
    pts = [lo, hi] + [c.detach() for c in fn.crit(op, k.detach(), lo, hi)]
    shape = torch.broadcast_shapes(k.shape, lo.shape)
    c = torch.stack([torch.broadcast_to(p, shape) for p in pts])
    c = torch.where(torch.isnan(c), lo.expand(shape), c)
    c = torch.maximum(torch.minimum(c, hi), lo)
    fc = fn.f(op, c)
    v = fc - k * c
    return v.min(0).values, v.max(0).values, fc.abs().max(0).values


def intercepts(fn: Smooth, op, lo, hi, k_lo, k_up) -> tuple[Tensor, Tensor]:
    """Sound intercepts of the lower line of slope ``k_lo`` and the upper line of slope ``k_up``."""
    e = _eps(lo)
    rad = torch.maximum(lo.abs(), hi.abs())
    vmin, _, mag = _extremes(fn, op, lo, hi, k_lo)
    b_lo = vmin - e * (mag + k_lo.abs() * rad)
    _, vmax, mag = _extremes(fn, op, lo, hi, k_up)
    b_up = vmax + e * (mag + k_up.abs() * rad)
    return b_lo, b_up


def _chord_mid(fn: Smooth, op, lo, hi) -> tuple[Tensor, Tensor]:
    """The chord's slope (the midpoint's slope on an empty-width interval) and f' at the midpoint."""
    w = hi - lo
    flat = w <= 0
    mid = fn.df(op, (lo + hi) / 2)
    chord = (fn.f(op, hi) - fn.f(op, lo)) / torch.where(flat, torch.ones_like(w), w)
    return torch.where(flat, mid, chord), mid


def _candidate_slopes(fn: Smooth, op, lo, hi, kmin, kmax) -> Tensor:
    """(4, ...): the chord (within [kmin, kmax]), the midpoint tangent, kmin and kmax."""
    chord, mid = _chord_mid(fn, op, lo, hi)
    chord = torch.maximum(torch.minimum(chord, kmax), kmin)
    ks = torch.stack([chord, mid, kmin, kmax])
    return torch.where(torch.isfinite(ks), ks, chord)


def _finite_range(fn, op, lo, hi, kmin, kmax) -> tuple[Tensor, Tensor]:
    """[kmin, kmax] with an infinite end (f' unbounded there) replaced by the chord's or the
    midpoint tangent's slope, whichever is further out."""
    fin_lo, fin_hi = torch.isfinite(kmin), torch.isfinite(kmax)
    if bool(fin_lo.all() & fin_hi.all()):
        return kmin, kmax
    chord, mid = _chord_mid(fn, op, lo, hi)
    return torch.where(fin_lo, kmin, torch.minimum(chord, mid)), torch.where(fin_hi, kmax, torch.maximum(chord, mid))


def default_slopes(fn: Smooth, op, lo, hi) -> tuple[Tensor, Tensor]:
    """CROWN's slopes (lower, upper): per line the candidate tightest at the midpoint."""
    kmin, kmax = _finite_range(fn, op, lo, hi, *fn.slope_range(op, lo, hi))
    ks = _candidate_slopes(fn, op, lo, hi, kmin, kmax)
    b_lo, b_up = intercepts(fn, op, lo, hi, ks, ks)
    m = (lo + hi) / 2
    at_lo, at_up = ks * m + b_lo, ks * m + b_up
    at_lo = torch.where(torch.isnan(at_lo), torch.full_like(at_lo, -math.inf), at_lo)
    at_up = torch.where(torch.isnan(at_up), torch.full_like(at_up, math.inf), at_up)
    i_lo, i_up = at_lo.argmax(0, keepdim=True), at_up.argmin(0, keepdim=True)
    return ks.gather(0, i_lo)[0], ks.gather(0, i_up)[0]


def curved_lines(fn: Smooth, op, lo: Tensor, hi: Tensor) -> Relax | None:
    """The default lines where f is convex or concave on every interval (else None), in closed
    form: the midpoint tangent below and the chord above a convex piece (above and below a
    concave one), the lines the candidates would pick. A convex f(x) - k x takes its minimum
    where f' = k (the midpoint, for the tangent's slope) and its maximum at an end (the chord's
    intercept); the rounding margin is ``intercepts``'."""
    sign = fn.curvature(op, lo, hi)
    if sign is None or not bool((sign != 0).all()):
        return None
    m = (lo + hi) / 2
    chord, tangent = _chord_mid(fn, op, lo, hi)
    f_lo, f_hi, f_m = fn.f(op, lo), fn.f(op, hi), fn.f(op, m)
    at_tangent = f_m - tangent * m
    ends = (f_lo - chord * lo, f_hi - chord * hi)
    e = _eps(lo)
    mag = torch.maximum(torch.maximum(f_lo.abs(), f_hi.abs()), f_m.abs())
    rad = torch.maximum(lo.abs(), hi.abs())
    m_t, m_c = e * (mag + tangent.abs() * rad), e * (mag + chord.abs() * rad)
    convex = sign > 0
    return Relax(torch.where(convex, tangent, chord), torch.where(convex, at_tangent - m_t, torch.minimum(*ends) - m_c),
                 torch.where(convex, chord, tangent), torch.where(convex, torch.maximum(*ends) + m_c, at_tangent + m_t))


def relax(fn: Smooth, op, lo: Tensor, hi: Tensor, alpha=None) -> Relax:
    """Lines sound on [lo, hi] (see module doc); ``alpha``: None or (lower, upper) in [0, 1]."""
    if alpha is None and not fn.hull:
        lines = curved_lines(fn, op, lo, hi)
        if lines is not None:
            return _undefined_nan(fn, op, lo, hi, lines)
    if alpha is None:
        k_lo, k_up = default_slopes(fn, op, lo, hi)
    else:
        kmin, kmax = _finite_range(fn, op, lo, hi, *fn.slope_range(op, lo, hi))
        a_lo, a_up = (a.clamp(0.0, 1.0) for a in alpha)
        k_lo, k_up = kmin + a_lo * (kmax - kmin), kmin + a_up * (kmax - kmin)
    b_lo, b_up = intercepts(fn, op, lo, hi, k_lo, k_up)
    k_lo, b_lo, k_up, b_up = _undefined_nan(fn, op, lo, hi, Relax(k_lo, b_lo, k_up, b_up))
    if fn.hull:
        long = (hi - lo) >= TWO_PI
        zero, one = torch.zeros_like(k_lo), torch.ones_like(k_lo)
        k_lo, k_up = torch.where(long, zero, k_lo), torch.where(long, zero, k_up)
        b_lo, b_up = torch.where(long, -one, b_lo), torch.where(long, one, b_up)
    return Relax(k_lo, b_lo, k_up, b_up)


def _undefined_nan(fn: Smooth, op, lo: Tensor, hi: Tensor, r: Relax) -> Relax:
    """``r`` with NaN lines where no finite line exists (replaced by the caller's constants)."""
    undefined = ~fn.defined(op, lo, hi)
    if not bool(undefined.any()):
        return r
    nan = torch.full((), math.nan, dtype=lo.dtype, device=lo.device)
    return Relax(*(torch.where(undefined, nan, t) for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias)))


def alpha_init(fn: Smooth, op, lo: Tensor, hi: Tensor, slopes=None) -> Tensor:
    """The alpha (B, 2 * shape[0], *shape[1:]) whose slopes are ``slopes`` (lower, upper; default
    CROWN's): lower line's, then upper's."""
    kmin, kmax = _finite_range(fn, op, lo, hi, *fn.slope_range(op, lo, hi))
    k_lo, k_up = default_slopes(fn, op, lo, hi) if slopes is None else slopes
    w = kmax - kmin
    pos = w > 0
    den = torch.where(pos, w, torch.ones_like(w))
    half = torch.full_like(w, 0.5)
    a = [torch.where(pos, (k - kmin) / den, half).clamp(0.0, 1.0) for k in (k_lo, k_up)]
    a = [torch.where(torch.isfinite(x), x, half) for x in a]
    return torch.cat(a, 1)


def interval(fn: Smooth, op, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The image of [lo, hi] moved outward for rounding (never NaN)."""
    a, b = fn.image(op, lo, hi)
    e = _eps(lo)
    a, b = a - e * a.abs(), b + e * b.abs()
    if fn.hull:
        a, b = a.clamp(min=-1.0), b.clamp(max=1.0)
    return nan_to_inf(a, b)


# ----------------------------------------------------------------------------- the functions
class _Exp(Smooth):
    def f(self, op, x):
        return torch.exp(x)

    df = f

    def crit(self, op, k, lo, hi):
        return [torch.log(k)]

    def image(self, op, lo, hi):
        return torch.exp(lo), torch.exp(hi)

    def curvature(self, op, lo, hi):
        return torch.ones_like(lo)

    def slope_range(self, op, lo, hi):
        return torch.exp(lo), torch.exp(hi)


class _Log(Smooth):
    def f(self, op, x):
        return torch.log(x)

    def df(self, op, x):
        return 1.0 / x

    def crit(self, op, k, lo, hi):
        return [1.0 / k]

    def defined(self, op, lo, hi):
        return lo > 0

    def image(self, op, lo, hi):
        inf = torch.full_like(lo, math.inf)
        neg = lo < 0                                    # log of a negative number is NaN: no bound
        return torch.where(neg, -inf, torch.log(lo)), torch.where(neg, inf, torch.log(hi))

    def slope_range(self, op, lo, hi):
        return 1.0 / hi, 1.0 / lo

    def curvature(self, op, lo, hi):
        return -(lo > 0).to(lo.dtype)


class _Reciprocal(Smooth):
    def f(self, op, x):
        return torch.reciprocal(x)

    def df(self, op, x):
        return -1.0 / (x * x)

    def crit(self, op, k, lo, hi):
        s = torch.sqrt(-1.0 / k)
        return [s, -s]

    def defined(self, op, lo, hi):
        return (lo > 0) | (hi < 0)

    def image(self, op, lo, hi):
        ok = self.defined(op, lo, hi)
        inf = torch.full_like(lo, math.inf)
        return torch.where(ok, 1.0 / hi, -inf), torch.where(ok, 1.0 / lo, inf)

    def curvature(self, op, lo, hi):
        return (lo > 0).to(lo.dtype) - (hi < 0).to(lo.dtype)

    def slope_range(self, op, lo, hi):
        near = torch.minimum(lo * lo, hi * hi)
        far = torch.maximum(lo * lo, hi * hi)
        return -1.0 / near, -1.0 / far


def _is_int(p: float) -> bool:
    return float(p).is_integer()


def check_pow_base(p: float, lo: Tensor) -> None:
    """A ``CertifyError`` when a non-integer power meets a base that may be negative."""
    if not _is_int(p) and bool((lo < 0).any()):
        raise CertifyError(f"Pow x**{p:g}: the base's lower bound is {float(lo.min()):.6g} < 0, where a "
                           "non-integer power is undefined; bound the base to x >= 0 first")


def _pow_image(p: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    if p == 0:
        return torch.ones_like(lo), torch.ones_like(hi)
    a, b = torch.pow(lo, p), torch.pow(hi, p)
    mn, mx = torch.minimum(a, b), torch.maximum(a, b)
    cross = (lo <= 0) & (hi >= 0)
    if _is_int(p) and p > 0 and int(p) % 2 == 0:
        mn = torch.where(cross, torch.zeros_like(mn), mn)
    if p < 0:       # a pole at 0
        inf = torch.full_like(lo, math.inf)
        if _is_int(p):
            mn, mx = torch.where(cross, -inf, mn), torch.where(cross, inf, mx)
        else:
            mx = torch.where(lo <= 0, inf, mx)
    return mn, mx


class _Pow(Smooth):
    def f(self, op, x):
        return torch.pow(x, op.exponent)

    def df(self, op, x):
        p = op.exponent
        return p * torch.pow(x, p - 1) if p != 0 else torch.zeros_like(x)

    def crit(self, op, k, lo, hi):
        p = op.exponent
        if p in (0.0, 1.0):
            return []
        r = torch.pow((k / p).abs(), 1.0 / (p - 1))
        return [r, -r]

    def defined(self, op, lo, hi):
        p = op.exponent
        if _is_int(p):
            return torch.ones_like(lo, dtype=torch.bool) if p >= 0 else (lo > 0) | (hi < 0)
        return lo >= 0 if p > 0 else lo > 0

    def image(self, op, lo, hi):
        check_pow_base(op.exponent, lo)
        return _pow_image(op.exponent, lo, hi)

    def slope_range(self, op, lo, hi):
        p = op.exponent
        if p == 0:
            z = torch.zeros_like(lo)
            return z, z
        a, b = _pow_image(p - 1, lo, hi)
        return (p * a, p * b) if p > 0 else (p * b, p * a)


def _shifted(c: Tensor, lo: Tensor) -> list[Tensor]:
    """c + 2 pi n for the first two n with c + 2 pi n >= lo (about)."""
    n = torch.ceil((lo - c) / TWO_PI)
    first = c + TWO_PI * n
    return [first, first + TWO_PI]


class _Sin(Smooth):
    """sin (phase 0) or cos (phase pi/2): f(x) = sin(x + phase), evaluated by torch directly."""

    hull = True

    def __init__(self, phase: float):
        self.phase = phase

    def f(self, op, x):
        return torch.sin(x) if self.phase == 0 else torch.cos(x)

    def df(self, op, x):
        return torch.cos(x) if self.phase == 0 else -torch.sin(x)

    def crit(self, op, k, lo, hi):
        # f'(x) = cos(x + phase) = k  <=>  x = +-acos(k) - phase + 2 pi n
        a = torch.acos(k.clamp(-1.0, 1.0))
        return _shifted(a - self.phase, lo) + _shifted(-a - self.phase, lo)

    def image(self, op, lo, hi):
        k = torch.zeros_like(lo)
        vmin, vmax, _ = _extremes(self, op, lo, hi, k)
        long = (hi - lo) >= TWO_PI
        one = torch.ones_like(lo)
        return torch.where(long, -one, vmin), torch.where(long, one, vmax)

    def slope_range(self, op, lo, hi):
        d = _Sin(self.phase + math.pi / 2 if self.phase == 0 else 0.0)      # sin' = cos, cos' = -sin
        a, b = d.image(op, lo, hi)
        return (a, b) if self.phase == 0 else (-b, -a)


class _SShaped(Smooth):
    """sigmoid or tanh (increasing, f' largest at 0 and decreasing in |x|), for alpha's lines."""

    def __init__(self, name: str):
        self.name = name

    def f(self, op, x):
        return torch.sigmoid(x) if self.name == "sigmoid" else torch.tanh(x)

    def df(self, op, x):
        y = self.f(op, x)
        return y * (1 - y) if self.name == "sigmoid" else 1 - y * y

    def crit(self, op, k, lo, hi):
        if self.name == "sigmoid":          # s (1 - s) = k: s = (1 +- sqrt(1 - 4k)) / 2, x = logit(s)
            r = torch.sqrt(1 - 4 * k)
            return [torch.logit((1 + r) / 2), torch.logit((1 - r) / 2)]
        t = torch.sqrt(1 - k)               # 1 - t^2 = k
        return [torch.atanh(t), torch.atanh(-t)]

    def image(self, op, lo, hi):
        return self.f(op, lo), self.f(op, hi)

    def slope_range(self, op, lo, hi):
        zero = torch.zeros_like(lo)
        return torch.minimum(self.df(op, lo), self.df(op, hi)), self.df(op, torch.maximum(torch.minimum(zero, hi), lo))


EXP, LOG, RECIPROCAL, POW, SIN, COS = _Exp(), _Log(), _Reciprocal(), _Pow(), _Sin(0.0), _Sin(math.pi / 2)
SIGMOID, TANH = _SShaped("sigmoid"), _SShaped("tanh")
