"""The largest certified radius of each input, by bisection over eps; shared by the engines.

``check(sel, eps)`` says, for the inputs ``sel`` (long (n,)) at radii ``eps`` ((n,)), which are
certified (bool (n,)). Per input the search keeps a certified radius ``r`` and a radius
``r_up > r`` that was not certified (or ``hi`` itself when it is certified) and stops when
``r_up - r <= tol``; each step checks only the inputs still undecided. Every returned radius
was itself checked certified (or is ``lo``), so the answer needs no monotonicity in eps.
With ``limit`` > ``hi``, an input certified at ``hi`` is checked at doubled radii (capped at
``limit``) until one fails, so ``hi`` need only be a first guess; ``limit`` may be ``inf``
(then at most ``MAX_DOUBLINGS`` doublings).
"""
from __future__ import annotations

from typing import Callable

import math

import torch

from certify.spec.sets import parse_norm

MAX_DOUBLINGS = 60


def bisect_radius(check: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int, lo: float, hi: float,
                  tol: float, dtype: torch.dtype = torch.float64,
                  check_lo: bool = True, limit: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(radius (n,), certified at ``lo`` (n,) bool). Inputs not certified at ``lo`` get ``lo``;
    ``check_lo=False`` takes ``lo`` as certified without checking it (e.g. lo = 0); ``limit``:
    the largest radius searched (default ``hi``: no growth, see module doc)."""
    limit = float(hi) if limit is None else float(limit)
    hi = min(float(hi), limit)
    all_ = torch.arange(n)
    r_lo = torch.full((n,), float(lo), dtype=dtype)
    r_hi = torch.full((n,), hi, dtype=dtype)
    ok_lo = check(all_, r_lo) if check_lo else torch.ones(n, dtype=torch.bool)
    ok_hi = check(all_, r_hi)
    grow = ok_hi.clone()          # certified at its r_hi: try twice as far, up to the limit
    for _ in range(MAX_DOUBLINGS):
        grow &= r_hi < limit
        if not bool(grow.any()):
            break
        sel = grow.nonzero().flatten()
        r_lo[sel] = r_hi[sel]
        r_hi[sel] = torch.clamp(2 * r_hi[sel], max=limit) if math.isfinite(limit) else 2 * r_hi[sel]
        ok = check(sel, r_hi[sel])
        ok_hi[sel] = ok
        grow[sel] = ok
    r_lo = torch.where(ok_hi, r_hi, r_lo)
    active = ok_lo & ~ok_hi
    while bool(active.any()):
        sel = active.nonzero().flatten()
        mid = (r_lo[sel] + r_hi[sel]) / 2
        ok = check(sel, mid)
        r_lo[sel] = torch.where(ok, mid, r_lo[sel])
        r_hi[sel] = torch.where(ok, r_hi[sel], mid)
        active = active & (r_hi - r_lo > tol)
    return r_lo, ok_lo


def domain_extent(domain, norm, n_inputs: int) -> float:
    """The radius of the ``norm`` ball around any point of the box ``domain`` ** n_inputs that
    contains the whole box: width (L-inf), width * sqrt(n) (L2), width * n (L1)."""
    width = domain[1] - domain[0]
    return {"inf": width, "2": width * math.sqrt(n_inputs), "1": width * n_inputs}[parse_norm(norm)]
