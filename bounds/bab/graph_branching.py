"""Which neuron to split, on any graph: the gap of the relaxation the bound pays, times its weight.

For each domain, the row followed (its best) and every splittable neuron (a neuron of a
``Graph.split_nodes`` node with its split point strictly inside its interval), with c the row's
coefficient on the activation's output (from the bound's final backward pass), the bound uses
the record's lower line where c > 0 and its upper line where c < 0; the score is |c| times the
gap between that line and the function:

* ops split at a fixed point (ReLU, LeakyReLU, Sign: their kink or step) -- the gap at that point:
  for ReLU the upper chord's intercept -l u / (u - l) where c < 0, and 0 where c > 0 (the lower
  line passes through the kink): BaBSR's score (``bounds.bab.branching``);
* ops split inside their interval (the smooth ones) -- the largest gap at five points of [l, u]
  (a convex piece's tangent is exact at one point and worst at the ends); the split point is
  the one of a few candidates (the quarter points, and 0 when inside) whose children's lines
  (the record's, on each side) leave the smallest gap.

* max-pooling's inputs -- each window whose maximum is not known (no input's lower bound above
  every other's upper bound) has the gap max_j u_j - max_j l_j of its relaxation (either line),
  times |c| at its output; it goes to the widest of the window's inputs that can still be the
  maximum, split at its midpoint (every window becomes exact after finitely many splits).

A tie-break 1e-9 (u - l) favours wide intervals; -inf marks neurons that cannot be split.
"""
from __future__ import annotations

import torch

from certify.ir import ops as O
from bounds import activations as act
from bounds.bab.graph_bounds import Graph
from bounds.relaxations import pool_windows

Tensor = torch.Tensor

MIN_WIDTH = 1e-7   # relative width below which a smooth neuron's interval is not split again


def split_scores(g: Graph, pre: dict, lam: dict, alpha: dict | None, rows: Tensor):
    """Per domain (B,): the best (score, split node index, neuron, point); score -inf where no
    neuron can be split. ``lam`` {activation node: (B, R, *shape)}; ``alpha`` the lines' alpha
    variables {activation node: (B, R, ...)} or None (CROWN's lines); ``rows`` (B,) long."""
    B = rows.shape[0]
    dev = rows.device
    best = torch.full((B,), -float("inf"), dtype=torch.float64, device=dev)
    node = torch.zeros(B, dtype=torch.long, device=dev)
    neuron = torch.zeros(B, dtype=torch.long, device=dev)
    point = torch.zeros(B, dtype=torch.float64, device=dev)
    for j, sc, p in _node_table(g, pre, lam, alpha, rows):
        v, i = sc.flatten(1).max(1)
        take = v > best
        best = torch.where(take, v, best)
        node = torch.where(take, torch.full_like(node, j), node)
        neuron = torch.where(take, i, neuron)
        point = torch.where(take, p.flatten(1).gather(1, i.unsqueeze(1)).squeeze(1), point)
    return best, node, neuron, point


def neuron_scores(g: Graph, pre: dict, lam: dict, alpha: dict | None, rows: Tensor) -> Tensor:
    """The scores (n,) of every neuron of the first domain that can be split (``split_scores``'
    arguments): what the choice between input and activation splitting weighs."""
    per = [sc[0].flatten() for _, sc, _ in _node_table(g, pre, lam, alpha, rows)]
    s = torch.cat(per) if per else torch.zeros(0, dtype=torch.float64, device=rows.device)
    return s[torch.isfinite(s)].double()


def _node_table(g: Graph, pre: dict, lam: dict, alpha: dict | None, rows: Tensor):
    """(split node index, scores (B, *shape), points (B, *shape)) per split node the rows reach."""
    ar = torch.arange(rows.shape[0], device=rows.device)
    for j, name in enumerate(g.split_nodes):
        a_node, op = g.split_act[j], g.split_op[j]
        c = lam.get(a_node)
        if c is None:
            continue
        lo, hi = pre[name]
        lo, hi = lo.double(), hi.double()
        c = c[ar, rows].double()                                    # (B, *shape)
        al = None if not alpha or a_node not in alpha else act.split_alpha(op, alpha[a_node][ar, rows].double(), 1)
        if isinstance(op, O.MaxPool2d):
            sc, p = _pool_scores(op, lo, hi, c)
        else:
            sc, p = _node_scores(op, lo, hi, c, al)
        yield j, sc, p


def _gap(op, r, x, c):
    """The gap at x between the line the bound uses (lower where c > 0) and the function."""
    f = op.forward(x)
    return torch.where(c > 0, f - (r.lower_slope * x + r.lower_bias), (r.upper_slope * x + r.upper_bias) - f)


def _max_gap(op, r, pts, c):
    gap = torch.zeros_like(c)
    for x in pts:
        gap = torch.maximum(gap, _gap(op, r, x, c))
    return torch.nan_to_num(gap, nan=0.0, posinf=1e300).clamp(min=0)


def _node_scores(op, lo: Tensor, hi: Tensor, c: Tensor, alpha) -> tuple[Tensor, Tensor]:
    rec = act.record(op)
    fin = torch.isfinite(lo) & torch.isfinite(hi)
    z = torch.zeros_like(lo)
    l, u = torch.where(fin, lo, z), torch.where(fin, hi, z)
    r = act.relax(op, l, u, alpha)
    if rec.split_point is not None:
        p = act.split_at(op, l, u)
        ok = fin & (l < p) & (p < u) & rec.unstable(op, l, u)
        sc = c.abs() * _max_gap(op, r, [p], c)
    else:
        p = _best_point(op, l, u, c)
        ok = fin & ((u - l) > MIN_WIDTH * (1 + l.abs() + u.abs()))
        sc = c.abs() * _max_gap(op, r, [l, (3 * l + u) / 4, (l + u) / 2, (l + 3 * u) / 4, u], c)
    sc = sc + 1e-9 * (u - l)
    return torch.where(ok, sc, torch.full_like(sc, -float("inf"))), p


def _best_point(op, l: Tensor, u: Tensor, c: Tensor) -> Tensor:
    """Among the quarter points of [l, u] (and 0 when inside), the split point whose children's
    lines (the record's, on each side) leave the smallest gap."""
    w = u - l
    cands = [l + w * t for t in (0.25, 0.5, 0.75)]
    zero = torch.zeros_like(l)
    cands.append(torch.where((l < 0) & (u > 0), zero, l + w / 2))
    best_p, best_g = cands[1], None
    for p in cands:
        g = None
        for a, b in ((l, p), (p, u)):
            gi = _max_gap(op, act.relax(op, a, b), [a, (a + b) / 2, b], c)
            g = gi if g is None else torch.maximum(g, gi)
        if best_g is None:
            best_p, best_g = p, g
        else:
            take = g < best_g
            best_p, best_g = torch.where(take, p, best_p), torch.where(take, g, best_g)
    return best_p


def _pool_scores(op, lo: Tensor, hi: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    B = lo.shape[0]
    n = lo[0].numel()
    fin = torch.isfinite(lo) & torch.isfinite(hi)
    ninf = -float("inf")
    lw, hw = pool_windows(lo, op, ninf), pool_windows(hi, op, ninf)              # (B, C, K, L)
    lmax, k = lw.max(2)
    others = hw.scatter(2, k.unsqueeze(2), ninf).max(2).values
    gap = torch.where(lmax >= others, torch.zeros_like(lmax), hw.max(2).values - lmax)
    wsc = c.reshape(B, c.shape[1], -1).abs() * torch.nan_to_num(gap, nan=0.0, posinf=1e300)   # (B, C, L)
    grid = torch.arange(n, dtype=lo.dtype, device=lo.device).reshape((1,) + tuple(lo.shape[1:]))
    iw = pool_windows(grid, op, -1.0).long().expand_as(lw)                        # input index per entry
    width = torch.where((hw > lmax.unsqueeze(2)) & (iw >= 0), hw - lw, torch.full_like(hw, ninf))
    pick = width.argmax(2, keepdim=True)                                          # the widest open input
    who = iw.gather(2, pick).squeeze(2).clamp(min=0)
    sc = torch.full((B, n), ninf, dtype=lo.dtype, device=lo.device)
    sc = sc.scatter_reduce(1, who.reshape(B, -1), torch.where(gap > 0, wsc, torch.full_like(wsc, ninf)).reshape(B, -1),
                           "amax", include_self=True)
    l, u = lo.reshape(B, -1), hi.reshape(B, -1)
    ok = fin.reshape(B, -1) & ((u - l) > MIN_WIDTH * (1 + l.abs() + u.abs()))
    sc = torch.where(ok & (sc > ninf), sc + 1e-9 * (u - l), torch.full_like(sc, ninf))
    return sc.reshape(lo.shape), torch.where(fin, (lo + hi) / 2, torch.zeros_like(lo))
