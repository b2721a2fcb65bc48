"""Certified radius of a convex certificate by bisection over eps (``certify.spec.radius``, as
``bounds.radius``).

Certification is monotone in eps for these relaxations only approximately (pre-activation
bounds come from a separate engine), so the answer is the largest eps *checked* certified:
every reported radius was itself certified by a full run of the method.
"""
from __future__ import annotations

import math

import torch

from certify.convex.problem import as_network
from certify.spec.output import robustness_matrix
from certify.spec.radius import bisect_radius, domain_extent


def certified_radius(method, net, x: torch.Tensor, label: torch.Tensor, norm="inf", lo: float = 0.0,
                     hi: float = 0.5, tol: float = 1e-3, domain=None, num_classes: int | None = None,
                     limit: float | None = None, **kw) -> torch.Tensor:
    """(B,) radii: for each sample the largest eps found (to ``tol``) at which ``method`` (one of
    ``certify.convex.lp``/``sdp``/``milp``) certifies the robustness margin of ``label``; 0.0 when
    even ``lo`` fails (or ``lo`` if it is the largest certified). ``hi`` is the first upper end;
    an input certified there is tried at doubled radii up to ``limit`` (default: the domain's
    extent, ``certify.spec.radius.domain_extent``; unbounded without a domain)."""
    x = torch.as_tensor(x)
    net = as_network(net, x.shape[1:])
    K = num_classes or int(math.prod(net.output_shape))
    labels = torch.as_tensor(label).reshape(-1)

    def check(sel: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return torch.tensor([method(net, x[b: b + 1], eps=float(e), norm=norm, C=robustness_matrix(labels[b: b + 1], K),
                                    domain=domain, **kw).verdict[0] == "certified" for b, e in zip(sel.tolist(), eps)],
                            dtype=torch.bool)

    if limit is None:
        limit = domain_extent(domain, norm, net.input_size) if domain is not None else math.inf
    r, ok_lo = bisect_radius(check, x.shape[0], lo, min(hi, limit), tol, torch.float64, check_lo=lo > 0, limit=limit)
    return torch.where(ok_lo, r, torch.zeros_like(r))
