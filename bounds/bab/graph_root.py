"""The root bound of a box on any graph: alpha-CROWN with optimized intermediate slopes.

``root_bounds`` runs alpha-CROWN (``bounds.alpha.optimize``: slopes per bounded node and chunk
of rows, every pre-activation bound recomputed with its own slopes at each step) in ``opt_dtype``
(float32 by default, the fast one on a CPU), with early stopping, then evaluates in float64 on
the float64 network: CROWN's pre-activation bounds, and the same bounds with the optimized
slopes, intersected (both sound). Those float64 bounds are the root's ``pre`` that every domain of
the search starts from; the spec's slopes are the domains' first alpha.
"""
from __future__ import annotations

import time

import torch

from bounds.alpha import optimize
from bounds.bab.graph_bounds import Graph, _box
from bounds.crown import propagate

Tensor = torch.Tensor


def root_bounds(g: Graph, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, iterations: int = 20, lr: float = 0.5,
                patience: int | None = 4, opt_dtype: torch.dtype = torch.float32,
                deadline: float | None = None, groups: Tensor | None = None) -> tuple[dict, dict]:
    """(pre, spec alpha): float64 bounds {pre-activation node: (lo, hi) (1, *shape)} of the box
    [lo, hi] (1, n_in) and the optimized slopes of the spec's rows {activation node: (1, R, ...)}
    (``opt_dtype``). ``iterations`` 0: CROWN's bounds and slopes. ``groups`` (R,) long: the
    obligation of each row (the rows of several obligations bounded at once; default: one
    obligation). The steps stop once every obligation's best lower bound is positive in some
    row (nothing more is needed) or at ``deadline``."""
    net_o = g.net64 if opt_dtype == torch.float64 else g.net32
    box_o = _box(net_o, lo.to(opt_dtype), hi.to(opt_dtype))
    res = optimize(net_o, box_o, C.to(opt_dtype), d.to(opt_dtype), iterations=iterations, lr=lr, upper=False,
                   patience=patience, stop=lambda best: all_proved(best, groups), deadline=deadline)
    box = _box(g.net64, lo, hi)
    params = res.slopes.params

    def alpha_of(key, node, rows, window):
        p = params.get((key, node))
        return None if p is None else p.double()
    with torch.no_grad():       # CROWN's bounds (no slopes), or the optimized slopes' (never looser: IBP's intersected)
        vals = propagate(g.net64, box, "crown", alpha_of=alpha_of if params else None, rows=res.rows)
        pre = {k: v for k, v in vals.items() if k in g.consumers}
    spec = {node: p.detach() for (key, node), p in res.slopes.params.items() if key == g.net64.output}
    g.alpha_nodes = sorted(set(g.alpha_nodes) | {node for node in res.slopes.init})
    return pre, spec


def all_proved(lower: Tensor, groups: Tensor | None = None) -> bool:
    """Whether every obligation has a positive row in ``lower`` (B, R), for each of the B boxes;
    ``groups`` (R,) long: the obligation of each row (None: all rows one obligation)."""
    pos = lower > 0
    if groups is None:
        return bool(pos.any(1).all())
    hit = torch.zeros(lower.shape[0], int(groups.max()) + 1, dtype=torch.long, device=lower.device)
    hit.index_add_(1, groups.to(lower.device), pos.long())
    return bool((hit[:, torch.unique(groups.to(lower.device))] > 0).all())


def timed_root(g: Graph, lo, hi, C, d, stats: dict, **kw):
    t = time.monotonic()
    out = root_bounds(g, lo, hi, C, d, **kw)
    stats["time_root"] = stats.get("time_root", 0.0) + time.monotonic() - t
    return out
