"""The largest certified radius of each input, by bisection over eps; shared by the engines.

``check(sel, eps)`` says, for the inputs ``sel`` (long (n,)) at radii ``eps`` ((n,)), which are
certified (bool (n,)). Per input the search keeps a certified radius ``r`` and a radius
``r_up > r`` that was not certified (or ``hi`` itself when it is certified) and stops when
``r_up - r <= tol``; each step checks only the inputs still undecided. Every returned radius
was itself checked certified (or is ``lo``), so the answer needs no monotonicity in eps.
"""
from __future__ import annotations

from typing import Callable

import torch


def bisect_radius(check: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int, lo: float, hi: float,
                  tol: float, dtype: torch.dtype = torch.float64,
                  check_lo: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(radius (n,), certified at ``lo`` (n,) bool). Inputs not certified at ``lo`` get ``lo``;
    ``check_lo=False`` takes ``lo`` as certified without checking it (e.g. lo = 0)."""
    all_ = torch.arange(n)
    r_lo = torch.full((n,), float(lo), dtype=dtype)
    r_hi = torch.full((n,), float(hi), dtype=dtype)
    ok_lo = check(all_, r_lo) if check_lo else torch.ones(n, dtype=torch.bool)
    ok_hi = check(all_, r_hi)
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
