"""Noise families for randomized smoothing: ONE table, each entry with its in-place sampler, the
norm it certifies and its certified-radius formula.

``sigma`` is each family's scale parameter (not always its standard deviation):

===========  =====================================  ====  ============================  =======================
family       distribution of each coordinate         norm  radius R(pA), pA > 1/2       pA needed for radius r
===========  =====================================  ====  ============================  =======================
gaussian     N(0, sigma^2)                           L2    sigma * Phi^-1(pA)            Phi(r / sigma)
laplace      Laplace(0, b=sigma), density e^-|x|/b/2b L1    -sigma * log(2 (1 - pA))      1 - exp(-r / sigma) / 2
uniform      U[-sigma, sigma]                        L1    2 * sigma * (pA - 1/2)        1/2 + r / (2 sigma)
===========  =====================================  ====  ============================  =======================

References: Gaussian, Cohen, Rosenfeld & Kolter 2019, Thm 1 (with pB = 1 - pA). Laplace,
Teng, Lee & Tsai 2020 ("l1 adversarial robustness certificates: a randomized smoothing
approach"), Thm 1: R = max(b/2 log(pA/pB), -b log(1 - pA + pB)); with pB = 1 - pA the second
term, -b log(2 (1 - pA)), is the larger one; it is also the entry of Yang et al. 2020
("Randomized smoothing of all shapes and sizes", Table 1) and is tight in one dimension (the
worst case is a half-line). Uniform, Yang et al. 2020 Table 1 (also Lee et al. 2019): a shift
delta leaves all but 1 - prod(1 - |delta_i| / 2 sigma) <= ||delta||_1 / (2 sigma) of the mass
unchanged, so pA stays above 1/2 while ||delta||_1 < 2 sigma (pA - 1/2).

Other norms: a certificate for the L_p ball of radius R implies one for the L_q ball of radius
``convert_radius(R, p, q, d)`` (ball inclusion: for q > p, ||v||_p <= d^(1/p - 1/q) ||v||_q).
In particular the L-inf radius reported for Gaussian noise is the L2 radius divided by sqrt(d),
which is what that inclusion gives (not a separate L-inf certificate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from scipy.stats import norm as _normal

from certify.errors import CertifyError


def _fill_gaussian(buf: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    return buf.normal_(0.0, sigma, generator=generator)


def _fill_laplace(buf: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    # |X| ~ Exponential(mean sigma), sign independent and uniform on {-1, +1}
    sign = torch.empty_like(buf).bernoulli_(0.5, generator=generator).mul_(2.0).sub_(1.0)
    return buf.exponential_(1.0 / sigma, generator=generator).mul_(sign)


def _fill_uniform(buf: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    return buf.uniform_(-sigma, sigma, generator=generator)


def _radius_gaussian(p: float, sigma: float) -> float:
    return sigma * float(_normal.ppf(p))


def _radius_laplace(p: float, sigma: float) -> float:
    return -sigma * math.log(2.0 * (1.0 - p)) if p < 1.0 else math.inf


def _radius_uniform(p: float, sigma: float) -> float:
    return 2.0 * sigma * (p - 0.5)


def _needed_gaussian(r: float, sigma: float) -> float:
    return float(_normal.cdf(r / sigma))


def _needed_laplace(r: float, sigma: float) -> float:
    return 1.0 - 0.5 * math.exp(-r / sigma)


def _needed_uniform(r: float, sigma: float) -> float:
    return 0.5 + r / (2.0 * sigma)


@dataclass(frozen=True)
class NoiseFamily:
    """A noise distribution: ``fill(buf, sigma, generator)`` overwrites ``buf`` in place with i.i.d.
    samples; ``radius(p_lower, sigma)`` is the certified radius in ``norm`` ('2' or '1') for a
    lower bound ``p_lower > 1/2`` on the top class's probability; ``needed(r, sigma)`` is its
    inverse, the lower bound whose radius is ``r`` (1/2 at r = 0; above 1 when no bound reaches r)."""

    name: str
    norm: str
    fill: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]
    radius: Callable[[float, float], float]
    scale: str
    needed: Callable[[float, float], float]


NOISES: dict[str, NoiseFamily] = {
    "gaussian": NoiseFamily("gaussian", "2", _fill_gaussian, _radius_gaussian, "standard deviation",
                            _needed_gaussian),
    "laplace": NoiseFamily("laplace", "1", _fill_laplace, _radius_laplace, "Laplace scale b (std = sqrt(2) b)",
                           _needed_laplace),
    "uniform": NoiseFamily("uniform", "1", _fill_uniform, _radius_uniform, "half-width (U[-sigma, sigma])",
                           _needed_uniform),
}


def get_noise(name: str) -> NoiseFamily:
    """The family called ``name``; a ``CertifyError`` listing the families otherwise."""
    if isinstance(name, NoiseFamily):
        return name
    try:
        return NOISES[str(name).lower()]
    except KeyError:
        raise CertifyError(f"unknown noise {name!r}; choose one of: {', '.join(NOISES)}") from None


def check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise CertifyError(f"sigma must be a positive number, got {sigma}")
    return sigma


def sample_noise(shape, generator: torch.Generator | None = None, noise: str = "gaussian", sigma: float = 0.25,
                 dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """A fresh tensor of ``shape`` filled with i.i.d. samples of ``noise`` at scale ``sigma``.

    Used by training (Gaussian augmentation, SmoothAdv) so that training and certification draw
    noise the same way. ``generator`` makes it reproducible.
    """
    fam = get_noise(noise)
    buf = torch.empty(tuple(shape), dtype=dtype or torch.get_default_dtype(), device=device)
    return fam.fill(buf, check_sigma(sigma), generator)


def certified_radius(noise: str, sigma: float, p_lower: float) -> float:
    """The radius (in the family's norm) certified by ``p_lower``; 0.0 when ``p_lower <= 1/2``."""
    fam = get_noise(noise)
    if not p_lower > 0.5:
        return 0.0
    return float(fam.radius(float(p_lower), float(sigma)))


def _inv(p: str) -> float:
    return 0.0 if p == "inf" else 1.0 / float(p)


def convert_radius(radius: float, from_norm: str, to_norm: str, dim: int) -> float:
    """Radius of the largest ``to_norm`` ball inside the ``from_norm`` ball of ``radius`` in R^dim.

    Norms are '1', '2' or 'inf'. For a larger exponent (e.g. L2 -> L-inf) the radius shrinks by
    dim^(1/p - 1/q) (L2 -> L-inf: divided by sqrt(dim)); for a smaller one it is unchanged.
    """
    a, b = _inv(str(from_norm)), _inv(str(to_norm))
    if b >= a:  # ||v||_from <= ||v||_to: the to-ball sits inside the from-ball at the same radius
        return float(radius)
    return float(radius) / float(dim) ** (a - b)
