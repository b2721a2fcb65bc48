"""Memory plans: which of alpha-CROWN's intermediate bounds it can afford to optimize.

alpha-CROWN keeps, for every pre-activation node S whose bound it recomputes with slopes, the
autograd graph of S's backward passes and S's own slopes (with their gradients and Adam
moments) until its step: about ``GRAPH_FACTOR`` tensors of the size of S's rows at every node
they pass (their "volume", measured in the first CROWN pass, ``propagate(record_volume=...)``).
CROWN itself runs in chunks (``bounds/crown.py``'s ``ROW_BUDGET``) and needs no plan; alpha's
volume is not chunked away, because the graph of every chunk lives until the step.

``alpha_rows`` keeps the optimized nodes within ``ALPHA_BUDGET`` bytes: the output's spec pass
first (without it there is nothing to optimize), then the intermediate nodes from the cheapest
on, as many as fit. A node left out keeps its CROWN bound, fixed (it gets no rows, so no slopes
and no graph), which only loosens the result, never makes it unsound.
"""
from __future__ import annotations

import math

import torch

from certify.ir.network import Network

ALPHA_BUDGET = 4 * 2 ** 30   # bytes alpha-CROWN's graphs and slopes may hold at once
GRAPH_FACTOR = 8             # tensors kept per element of a row's volume (graph, slopes, gradients, Adam)


def spec_volume(net: Network, batch: int, rows: int, upper: bool) -> int:
    """Elements of the output spec's rows over every node (dense rows: an upper bound)."""
    return batch * rows * (2 if upper else 1) * sum(math.prod(net.shape_of(n.name)) for n in net.nodes)


def alpha_rows(net: Network, rows: dict, volume: dict, batch: int, spec_rows: int, upper: bool,
               dtype: torch.dtype, budget: int | None = None) -> dict | None:
    """The rows (``propagate``'s ``rows``) for alpha-CROWN's iterations within ``budget`` bytes
    (default ``ALPHA_BUDGET``): ``rows`` with the nodes left out emptied (B, 0), or None when
    not even the spec pass fits (no optimization: the CROWN bound stands). ``volume``: per node,
    the volume of its rows in the first CROWN pass."""
    budget = ALPHA_BUDGET if budget is None else budget
    per = GRAPH_FACTOR * torch.empty((), dtype=dtype).element_size()
    left = budget - per * spec_volume(net, batch, spec_rows, upper)
    if left < 0:
        return None
    out = dict(rows)
    for name in sorted(volume, key=volume.get):
        cost = per * volume[name]
        if cost <= left:
            left -= cost
        elif name in out:
            idx, valid = out[name]
            out[name] = (idx[:, :0], valid[:, :0])
    return out
