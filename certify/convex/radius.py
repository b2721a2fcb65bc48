"""Certified radius of a convex certificate by bisection over eps (as ``bounds.radius``).

Certification is monotone in eps for these relaxations only approximately (pre-activation
bounds come from a separate engine), so the answer is the largest eps *checked* certified:
every reported radius was itself certified by a full run of the method.
"""
from __future__ import annotations

import math

import torch

from certify.convex.problem import as_network
from certify.spec.output import robustness_matrix


def certified_radius(method, net, x: torch.Tensor, label: torch.Tensor, norm="inf", lo: float = 0.0,
                     hi: float = 0.5, tol: float = 1e-3, domain=(0.0, 1.0), num_classes: int | None = None,
                     **kw) -> torch.Tensor:
    """(B,) radii: for each sample the largest eps found (to ``tol``) at which ``method`` (one of
    ``certify.convex.lp``/``sdp``/``milp``) certifies the robustness margin of ``label``; 0.0 when
    even ``lo`` fails (or ``lo`` if it is the largest certified)."""
    x = torch.as_tensor(x)
    net = as_network(net, x.shape[1:])
    K = num_classes or int(math.prod(net.output_shape))
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for b in range(x.shape[0]):
        xb = x[b: b + 1]
        C = robustness_matrix(torch.as_tensor(label).reshape(-1)[b: b + 1], K)

        def ok(e: float) -> bool:
            return method(net, xb, eps=e, norm=norm, C=C, domain=domain, **kw).verdict[0] == "certified"

        if lo > 0 and not ok(lo):
            continue
        good, bad = lo, hi
        if ok(hi):
            out[b] = hi
            continue
        while bad - good > tol:
            mid = (good + bad) / 2
            if ok(mid):
                good = mid
            else:
                bad = mid
        out[b] = good
    return out
