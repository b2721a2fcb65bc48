"""PGD (Madry et al. 2018) on any objective over an ``InputSet``: the falsifier used by tests,
branch-and-bound and adversarial training.

``pgd_minimize`` minimizes ``objective(x) -> (B,)`` over each set of a batched ``InputSet``
with signed-gradient steps (L-inf / box) or normalized-gradient steps (L2, and L1 with its
projection), random starts,
and keeps the best point seen. The returned points always lie in the set (projected).

``search_forward(net)`` evaluates a network for such a search: every value is the network's
own, but ops whose gradient is zero almost everywhere or vanishes where they saturate take a
surrogate's gradient (straight-through, ``SURROGATES``): ``Sign`` and ``Floor`` that of the
identity, ``Softmax`` that of a softmax at the temperature of its inputs' spread (so a
saturated softmax, whose float gradient is exactly 0, still points somewhere). Points found
this way are points of the real network; only the search directions are the surrogate's.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from certify.ir import ops as O
from certify.ir.network import Network
from certify.spec.output import margin_values
from certify.spec.sets import InputSet


def _straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value``, with the gradient of ``surrogate``."""
    return surrogate + (value - surrogate).detach()


def _tempered_softmax(op: O.Softmax, x: torch.Tensor) -> torch.Tensor:
    ax = op.axis + 1
    spread = (x.amax(ax, keepdim=True) - x.amin(ax, keepdim=True)).detach().clamp(min=1.0)
    return torch.softmax(x / spread, dim=ax)


SURROGATES: dict[type, Callable] = {
    O.Sign: lambda op, x: x,
    O.Floor: lambda op, x: x,
    O.Softmax: _tempered_softmax,
}


def search_forward(net: Network, gates: dict | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> net(x)`` in value, with the surrogate gradients of ``SURROGATES`` (module doc);
    ``net`` itself when it has none of those ops. ``gates``: {node name: bool tensor (B, *shape)}
    where that node's surrogate passes its gradient (e.g. the neurons whose value can change
    over the searched set); elsewhere the node passes none."""
    if not any(type(n.op) in SURROGATES for n in net.nodes):
        return net
    gates = gates or {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        vals = {net.input_name: x}
        for n in net.nodes:
            ins = [vals[i] for i in n.inputs]
            y = n.op.forward(*ins)
            sur = SURROGATES.get(type(n.op))
            if sur is not None and torch.is_grad_enabled():
                s = sur(n.op, ins[0])
                g = gates.get(n.name)
                y = _straight_through(y, s if g is None else torch.where(g, s, s.detach()))
            vals[n.name] = y
        return vals[net.output]

    return forward


def pgd_minimize(objective: Callable[[torch.Tensor], torch.Tensor], input_set: InputSet, steps: int = 20,
                 restarts: int = 1, step_size: float | None = None, generator: torch.Generator | None = None,
                 start: torch.Tensor | None = None, decay: bool = False,
                 deadline: float | None = None, stop_below: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best (x, objective(x)) found per batch row: shapes (B, *shape) and (B,).

    ``step_size`` defaults to 2.5 * (set radius) / steps (per feature for boxes). The first
    restart starts at ``start`` (default: the set's centre), the others uniformly in the set.
    ``decay`` scales the step by a cosine schedule from 1 to 0.01 over the steps of each restart
    (fine convergence onto thin violating regions, e.g. VNN-COMP falsification). ``deadline``
    (time.monotonic()): no step is begun past it (the best point so far is returned).
    ``stop_below``: no step is begun once some row's best value is below it (a search for any
    one point below a threshold, e.g. a counterexample).
    """
    lo, hi = input_set.box()
    lo, hi = lo.detach(), hi.detach()
    width = (hi - lo)
    normalized = input_set.norm in ("2", "1")
    if normalized:
        eps = torch.as_tensor(input_set.eps, dtype=lo.dtype, device=lo.device).expand(lo.shape[0])
        alpha = (2.5 * eps / max(steps, 1)).reshape((-1,) + (1,) * (lo.dim() - 1))
    else:
        alpha = 2.5 * (width / 2) / max(steps, 1)
    if step_size is not None:
        alpha = torch.full_like(alpha, step_size) if torch.is_tensor(alpha) else step_size
    best_x = input_set.project(((lo + hi) / 2) if start is None else start.detach()).clone()
    with torch.no_grad():
        best_v = objective(best_x).detach()
    done = lambda: ((deadline is not None and time.monotonic() > deadline)  # noqa: E731
                    or (stop_below is not None and bool((best_v < stop_below).any())))
    for r in range(restarts):
        if done():
            break
        if r == 0:
            x = best_x.clone()
        else:
            x = input_set.project(input_set.sample(1, generator)[0])
        for it in range(steps):
            if done():
                break
            a_it = alpha * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * it / steps))) if decay else alpha
            x = x.detach().requires_grad_(True)
            v = objective(x)
            (g,) = torch.autograd.grad(v.sum(), x)
            with torch.no_grad():
                better = v.detach() < best_v
                best_v = torch.where(better, v.detach(), best_v)
                best_x[better] = x.detach()[better]
                if normalized:
                    gn = g.flatten(1).norm(dim=1).clamp(min=1e-12).reshape((-1,) + (1,) * (g.dim() - 1))
                    x = x - a_it * g / gn
                else:
                    x = x - a_it * g.sign()
                x = input_set.project(x)
        with torch.no_grad():
            v = objective(x)
            better = v < best_v
            best_v = torch.where(better, v, best_v)
            best_x[better] = x[better]
    return best_x.detach(), best_v.detach()


def pgd_margin(forward: Callable[[torch.Tensor], torch.Tensor], input_set: InputSet, C: torch.Tensor,
               d: torch.Tensor | None = None, per_row: bool = False, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize the margins ``C @ f(x) + d``.

    ``per_row=False``: minimize the smallest row (a falsifier); returns x (B, *shape), value (B,).
    ``per_row=True``: attack every row separately; returns x (B, rows, *shape), values (B, rows)
    (the best attack value of each row: an upper bound on its true minimum).
    """
    if not per_row:
        return pgd_minimize(lambda x: margin_values(forward(x), C, d).min(dim=1).values, input_set, **kw)
    xs, vs = [], []
    for r in range(C.shape[1]):
        Cr = C[:, r:r + 1]
        dr = None if d is None else d[:, r:r + 1]
        x, v = pgd_minimize(lambda x: margin_values(forward(x), Cr, dr)[:, 0], input_set, **kw)
        xs.append(x)
        vs.append(v)
    return torch.stack(xs, 1), torch.stack(vs, 1)
