"""Input sets, batched: an L-inf ball, an L2 ball, an L1 ball (each optionally clipped to a data
domain such as [0, 1]; no clipping unless a domain is given) and a box. Every set holds ``B``
independent sets, one per batch row.

Shapes: ``center``/``lower``/``upper`` are (B, *input_shape); ``eps`` is a float or a (B,)
tensor. ``box()`` returns the tightest per-feature interval (B, *input_shape) containing the set
(for L2 and L1 balls a superset, their box hull: engines that use the dual norm treat the ball
itself, which contains the clipped one, so they stay sound). ``BOX_NORMS``: the norms whose sets
are exactly their ``box()``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from certify.errors import CertifyError

Domain = tuple[float, float] | None
BOX_NORMS = ("inf", "box")


def _eps_view(eps, center: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=center.dtype, device=center.device)
    if e.dim() == 0:
        e = e.expand(center.shape[0])
    if bool(torch.isnan(e).any()):
        raise CertifyError("eps must be a number, got NaN")
    if e.shape != (center.shape[0],):
        raise CertifyError(f"eps must be a float or have shape ({center.shape[0]},), got {tuple(e.shape)}")
    if bool((e < 0).any()):
        raise CertifyError("eps must be non-negative")
    return e.reshape((-1,) + (1,) * (center.dim() - 1))


def _ball_box(center: torch.Tensor, eps, domain: Domain) -> tuple[torch.Tensor, torch.Tensor]:
    """center -/+ eps per feature, clipped to the domain: the box enclosing an L-inf or L2 ball."""
    # a float radius (checked when the ball was built) needs no tensor conversion: this box is
    # asked for on every bound call, and on a small network the conversion is a sizable share
    e = eps if type(eps) is float else _eps_view(eps, center)
    lo, hi = center - e, center + e
    if domain is not None:
        lo, hi = lo.clamp(min=domain[0]), hi.clamp(max=domain[1])
    return lo, torch.maximum(hi, lo)


class InputSet(ABC):
    """Base class. ``norm`` is 'inf', '2', '1' or 'box'."""

    norm: str

    @abstractmethod
    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The tightest per-feature box (lo, hi), each (B, *shape), containing the set."""

    @abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Euclidean-style projection of ``x`` (B, *shape) back into the set (used by PGD)."""

    @abstractmethod
    def contains(self, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """(B,) bool: does row b of ``x`` lie in set b (up to ``tol``)?"""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points of each set, shape (n, B, *shape) (uniform for boxes; inside for balls)."""

    @property
    def batch(self) -> int:
        return self.box()[0].shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.box()[0].shape[1:])


@dataclass
class Box(InputSet):
    """Per-feature interval [lower, upper]; shapes (B, *input_shape)."""

    lower: torch.Tensor
    upper: torch.Tensor
    norm: str = "box"

    def __post_init__(self):
        if self.lower.shape != self.upper.shape:
            raise CertifyError(f"box bounds have different shapes {tuple(self.lower.shape)} and {tuple(self.upper.shape)}")
        if bool((self.lower > self.upper).any()):
            raise CertifyError("box has a lower bound above its upper bound")

    def box(self):
        return self.lower, self.upper

    def center(self) -> torch.Tensor:
        return (self.lower + self.upper) / 2

    def project(self, x):
        return torch.maximum(torch.minimum(x, self.upper), self.lower)

    def contains(self, x, tol=1e-6):
        ok = (x >= self.lower - tol) & (x <= self.upper + tol)
        return ok.flatten(1).all(1)

    def sample(self, n, generator=None):
        u = torch.rand((n,) + tuple(self.lower.shape), generator=generator, dtype=self.lower.dtype)
        return self.lower + u * (self.upper - self.lower)


def _check_ball(center: torch.Tensor, eps, domain: Domain) -> None:
    """A ball whose centre lies farther than eps outside the domain box meets it nowhere: its
    'certificate' would be vacuous, so it is a user error (e.g. pixels in [0, 255], domain [0, 1])."""
    e = _eps_view(eps, center)
    if domain is not None and bool(((center < domain[0] - e) | (center > domain[1] + e)).any()):
        raise CertifyError(f"input lies outside the domain {tuple(domain)} by more than eps: the perturbation "
                           "set is empty (scale the data into the domain or pass another domain)")


@dataclass
class LinfBall(InputSet):
    """{x : ||x - center||_inf <= eps} intersected with the domain box (if given)."""

    center: torch.Tensor
    eps: object
    domain: Domain = None
    norm: str = "inf"

    def __post_init__(self):
        _check_ball(self.center, self.eps, self.domain)

    def box(self):
        return _ball_box(self.center, self.eps, self.domain)

    def as_box(self) -> Box:
        return Box(*self.box())

    def project(self, x):
        lo, hi = self.box()
        return torch.maximum(torch.minimum(x, hi), lo)

    def contains(self, x, tol=1e-6):
        return self.as_box().contains(x, tol)

    def sample(self, n, generator=None):
        return self.as_box().sample(n, generator)


@dataclass
class _NormBall(InputSet):
    """What the L2 and L1 balls share: {x : ||x - center|| <= eps} (the norm over all features of a
    sample) intersected with the domain box (if given); a subclass says how long a vector is, how
    to project onto the ball and how to sample the unit ball uniformly."""

    center: torch.Tensor
    eps: object
    domain: Domain = None

    def __post_init__(self):
        _check_ball(self.center, self.eps, self.domain)

    def box(self):
        return _ball_box(self.center, self.eps, self.domain)

    def project(self, x):
        # Alternating projections onto ball and domain converge to a point of the intersection;
        # a few rounds suffice for PGD, and ``contains`` checks the result.
        e = _eps_view(self.eps, self.center)
        for _ in range(10 if self.domain is not None else 1):
            x = self.center + self._onto_ball(x - self.center, e)
            if self.domain is not None:
                x = x.clamp(self.domain[0], self.domain[1])
        return x

    def contains(self, x, tol=1e-6):
        e = _eps_view(self.eps, self.center).flatten()
        ok = self._length((x - self.center).flatten(1)) <= e + tol
        if self.domain is not None:
            ok &= ((x >= self.domain[0] - tol) & (x <= self.domain[1] + tol)).flatten(1).all(1)
        return ok

    def sample(self, n, generator=None):
        """Uniform in the ball, then projected into the domain when one is given."""
        shape = (n,) + tuple(self.center.shape)
        u = self._unit_sample(shape, generator, self.center.dtype)
        e = _eps_view(self.eps, self.center).unsqueeze(0)
        pts = self.center.unsqueeze(0) + u * e
        if self.domain is not None:
            pts = torch.stack([self.project(p) for p in pts])
        return pts


@dataclass
class L2Ball(_NormBall):
    """{x : ||x - center||_2 <= eps} (norm over all features of a sample), intersected with the
    domain box (if given)."""

    norm: str = "2"

    @staticmethod
    def _length(flat: torch.Tensor) -> torch.Tensor:
        return flat.norm(dim=1)

    @staticmethod
    def _onto_ball(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        n = d.flatten(1).norm(dim=1).reshape(e.shape).clamp(min=1e-12)
        return d * torch.clamp(e / n, max=1.0)

    @staticmethod
    def _unit_sample(shape, generator, dtype) -> torch.Tensor:
        """Gaussian directions, radii r^(1/d)."""
        g = torch.randn(shape, generator=generator, dtype=dtype)
        g = g / g.flatten(2).norm(dim=2).reshape(shape[:2] + (1,) * (len(shape) - 2)).clamp(min=1e-12)
        d = math.prod(shape[2:])
        r = torch.rand(shape[:2], generator=generator, dtype=g.dtype) ** (1.0 / d)
        return g * r.reshape(shape[:2] + (1,) * (len(shape) - 2))


def _project_l1(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``d`` (B, *shape) onto the L1 ball of radius e (B, 1...)
    (Duchi et al. 2008: soft-thresholding at the level found by sorting)."""
    flat = d.flatten(1)
    r = e.reshape(-1, 1)
    a = flat.abs()
    inside = a.sum(1, keepdim=True) <= r
    u = a.sort(1, descending=True).values
    cs = u.cumsum(1) - r
    k = torch.arange(1, flat.shape[1] + 1, dtype=d.dtype, device=d.device).unsqueeze(0)
    rho = ((u - cs / k) > 0).sum(1, keepdim=True).clamp(min=1)
    theta = (cs.gather(1, rho - 1) / rho.to(d.dtype)).clamp(min=0)
    out = flat.sign() * (a - theta).clamp(min=0)
    return torch.where(inside, flat, out).reshape(d.shape)


@dataclass
class L1Ball(_NormBall):
    """{x : ||x - center||_1 <= eps} (sum over all features of a sample), intersected with the
    domain box (if given). Its ``box()`` is the box hull center -/+ eps (clipped)."""

    norm: str = "1"

    @staticmethod
    def _length(flat: torch.Tensor) -> torch.Tensor:
        return flat.abs().sum(1)

    @staticmethod
    def _onto_ball(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return _project_l1(d, e)

    @staticmethod
    def _unit_sample(shape, generator, dtype) -> torch.Tensor:
        """Signed exponentials over the sum of d + 1 exponentials: uniform in the unit L1 ball."""
        d = math.prod(shape[2:])
        ex = -torch.log1p(-torch.rand(shape[:2] + (d + 1,), generator=generator, dtype=dtype))
        sign = torch.randint(0, 2, shape[:2] + (d,), generator=generator).to(ex.dtype) * 2 - 1
        return (sign * ex[..., :d] / ex.sum(-1, keepdim=True)).reshape(shape)


def parse_norm(norm: str | int | float) -> str:
    """'inf', '2' or '1' for the spellings of the three ball norms (inf, 'linf', 2, 'l2', 1, ...)."""
    n = str(norm).lower()
    for name, spellings in (("inf", ("inf", "linf", "l-inf", "float('inf')")), ("2", ("2", "2.0", "l2")),
                            ("1", ("1", "1.0", "l1"))):
        if n in spellings:
            return name
    raise CertifyError(f"unsupported norm {norm!r}: use 'inf', 2 or 1")


def ball(center: torch.Tensor, eps, norm: str | int | float = "inf", domain: Domain = None) -> InputSet:
    """The L-inf (``norm='inf'``), L2 (``norm=2``) or L1 (``norm=1``) ball around a batch
    ``center``, clipped to ``domain`` (lo, hi) when one is given (default: not clipped)."""
    cls = {"inf": LinfBall, "2": L2Ball, "1": L1Ball}[parse_norm(norm)]
    return cls(center, eps, domain)
