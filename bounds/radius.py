"""Certified radius: the largest eps that a bound method certifies, by bisection.

For each input (batched), the robustness margin spec of its label is bounded on balls of
radius eps; eps is certified when every margin lower bound is > 0. Bisection on [lo, hi]
keeps, per input, a certified eps ``r`` and an eps ``r_up > r`` that was not certified (or
``hi`` itself when it is certified), and stops when ``r_up - r <= tol``. Inputs not
certified at ``lo`` (e.g. misclassified at lo = 0) get radius ``lo`` and their bound there.
Each step bounds only the inputs still undecided.
"""
from __future__ import annotations

import math

import torch

from certify.errors import CertifyError
from certify.spec.output import robustness_matrix
from certify.spec.sets import ball
from bounds.api import as_network, compute_bounds
from bounds.result import Bounds


def radius(net, x: torch.Tensor, label, norm="inf", method: str = "crown", lo: float = 0.0,
           hi: float | None = None, tol: float = 1e-4, domain=(0.0, 1.0), **opts) -> tuple[torch.Tensor, Bounds]:
    """(radius (B,), Bounds of the margins (B, K-1) at that radius).

    ``hi`` defaults to the domain's width (L-inf) or width * sqrt(input size) (L2): the
    whole domain. ``opts`` go to ``compute_bounds`` (e.g. iterations for alpha)."""
    x = torch.as_tensor(x)
    net = as_network(net, tuple(x.shape[1:]))
    x = x.to(net.dtype)
    width = (domain[1] - domain[0]) if domain is not None else 1.0
    if hi is None:
        hi = width if str(norm) in ("inf", "linf") else width * math.sqrt(net.input_size)
    if not (0 <= lo < hi) or tol <= 0:
        raise CertifyError(f"radius search needs 0 <= lo < hi and tol > 0, got lo={lo}, hi={hi}, tol={tol}")
    B = x.shape[0]
    K = net.output_size
    C = robustness_matrix(torch.as_tensor(label), K, dtype=x.dtype)

    def bound(sel: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, Bounds]:
        b = compute_bounds(net, ball(x[sel], eps, norm, domain), C[sel], method=method, **opts)
        b = b.detach()
        return b.verified(), b

    all_ = torch.arange(B)
    r_lo = torch.full((B,), float(lo), dtype=x.dtype)
    r_hi = torch.full((B,), float(hi), dtype=x.dtype)
    ok_lo, best = bound(all_, r_lo)
    ok_hi, b_hi = bound(all_, r_hi)
    r_lo = torch.where(ok_hi, r_hi, r_lo)
    best = Bounds(torch.where(ok_hi.unsqueeze(1), b_hi.lower, best.lower),
                  torch.where(ok_hi.unsqueeze(1), b_hi.upper, best.upper))
    active = ok_lo & ~ok_hi
    while bool(active.any()):
        sel = active.nonzero().flatten()
        mid = (r_lo[sel] + r_hi[sel]) / 2
        ok, b = bound(sel, mid)
        r_lo[sel] = torch.where(ok, mid, r_lo[sel])
        r_hi[sel] = torch.where(ok, r_hi[sel], mid)
        best.lower[sel] = torch.where(ok.unsqueeze(1), b.lower, best.lower[sel])
        best.upper[sel] = torch.where(ok.unsqueeze(1), b.upper, best.upper[sel])
        active = active & (r_hi - r_lo > tol)
    return r_lo, best
