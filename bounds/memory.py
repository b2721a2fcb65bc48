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

Branch and bound sizes its batches the same way: ``search_budget`` is ``SEARCH_SHARE`` of the
memory available when a search starts, half for one bound call's work and half for the open
domains it keeps; ``domain_bytes`` is one domain's size in a bound call with alpha/beta steps,
from the network's sizes (the rows' volume as ``spec_volume`` counts it, the multipliers, the
pre-activation bounds), and ``domains_within`` turns it into the domains one call may bound.
"""
from __future__ import annotations

import math
import os

import torch

from certify.ir.network import Network

ALPHA_BUDGET = 4 * 2 ** 30   # bytes alpha-CROWN's graphs and slopes may hold at once
GRAPH_FACTOR = 8             # tensors kept per element of a row's volume (graph, slopes, gradients, Adam)
SEARCH_SHARE = 0.5           # share of the available memory a search may hold (the rest: others, what sizes miss)
FALLBACK_MEMORY = 8 * 2 ** 30   # bytes assumed available where the system does not say
PASS_COPIES = 4              # float64 coefficient tensors alive per element of a row's volume in a bound pass
MULTIPLIER_COPIES = 6        # per alpha/beta element: value, gradient, 2 Adam moments, best, start
BOUND_COPIES = 6             # float64 copies of a domain's pre-activation bounds in a call (given, clamped, relaxed, steps')


def spec_volume(net: Network, batch: int, rows: int, upper: bool) -> int:
    """Elements of the output spec's rows over every node (dense rows: an upper bound)."""
    return batch * rows * (2 if upper else 1) * sum(math.prod(net.shape_of(n.name)) for n in net.nodes)


def domain_bytes(volume: int, multipliers: int, bounds: int, opt_dtype: torch.dtype = torch.float32) -> int:
    """Bytes one domain takes in a bound call with alpha/beta steps in ``opt_dtype``: its rows'
    coefficients (``volume`` elements over the nodes they pass) in the steps' graph
    (``GRAPH_FACTOR``) and in the float64 passes (``PASS_COPIES``), its ``multipliers`` alpha and
    beta elements (``MULTIPLIER_COPIES``) and its ``bounds`` pre-activation bound elements
    (float64, ``BOUND_COPIES``)."""
    step = torch.empty((), dtype=opt_dtype).element_size()
    return volume * (GRAPH_FACTOR * step + PASS_COPIES * 8) + multipliers * MULTIPLIER_COPIES * step \
        + bounds * BOUND_COPIES * 8


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes the machine can still give now: a CUDA device's free memory, else the kernel's
    ``MemAvailable`` (Linux), else the free physical pages, else ``FALLBACK_MEMORY``."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return FALLBACK_MEMORY


def search_budget(device: torch.device | str | None = None) -> int:
    """Bytes a branch-and-bound search may hold: ``SEARCH_SHARE`` of ``available_memory``."""
    return int(SEARCH_SHARE * available_memory(device))


def domains_within(per_domain: int, budget: int, cap: int, least: int = 2) -> int:
    """Domains one bound call may take: as many as fit in ``budget`` bytes at ``per_domain``
    bytes each, at most ``cap``, at least ``least`` (a search always makes progress)."""
    return max(least, min(cap, budget // max(per_domain, 1)))


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
