"""Certified radius: the largest eps that a bound method certifies, by bisection.

For each input (batched), the robustness margin spec of its label is bounded on balls of
radius eps; eps is certified when every margin lower bound is > 0. The bisection is
``certify.spec.radius.bisect_radius``: inputs not certified at ``lo`` (e.g. misclassified at
lo = 0) get radius ``lo`` and their bound there.
"""
from __future__ import annotations

import math

import torch

from certify.errors import CertifyError
from certify.spec.output import robustness_matrix
from certify.spec.radius import bisect_radius, domain_extent
from certify.spec.sets import ball
from bounds.api import as_network, compute_bounds
from bounds.result import Bounds


def radius(net, x: torch.Tensor, label, norm="inf", method: str = "crown", lo: float = 0.0,
           hi: float | None = None, tol: float = 1e-4, domain=None, **opts) -> tuple[torch.Tensor, Bounds]:
    """(radius (B,), Bounds of the margins (B, K-1) at that radius).

    ``hi`` (the largest radius searched) defaults to the domain's extent (``certify.spec.radius.domain_extent``:
    a ball containing the whole domain); without a domain the search starts at 1 and doubles
    its upper end while the input stays certified (``certify.spec.radius``). ``opts`` go to
    ``compute_bounds`` (e.g. iterations for alpha)."""
    x = torch.as_tensor(x)
    net = as_network(net, tuple(x.shape[1:]))
    x = x.to(net.dtype)
    limit = hi
    if hi is None:
        hi = domain_extent(domain, norm, net.input_size) if domain is not None else 1.0
        limit = hi if domain is not None else math.inf
    if not (0 <= lo < hi) or tol <= 0:
        raise CertifyError(f"radius search needs 0 <= lo < hi and tol > 0, got lo={lo}, hi={hi}, tol={tol}")
    K = net.output_size
    C = robustness_matrix(torch.as_tensor(label), K, dtype=x.dtype)

    best: list[Bounds] = []       # the bounds at each input's certified radius (at lo until one is)

    def check(sel: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        b = compute_bounds(net, ball(x[sel], eps, norm, domain), C[sel], method=method, **opts).detach()
        ok = b.verified()
        if not best:
            best.append(Bounds(b.lower.clone(), b.upper.clone()))
        else:
            best[0].lower[sel] = torch.where(ok.unsqueeze(1), b.lower, best[0].lower[sel])
            best[0].upper[sel] = torch.where(ok.unsqueeze(1), b.upper, best[0].upper[sel])
        return ok

    r, _ = bisect_radius(check, x.shape[0], lo, hi, tol, x.dtype, limit=limit)
    return r, best[0]
