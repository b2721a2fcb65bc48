"""Batched CROWN / alpha-CROWN / beta-CROWN lower bounds on an affine/ReLU ``Chain`` (float64).

For a batch of B domains (an input box each, optional ReLU splits) and margins ``C z_L + d``
with r rows per domain, ``bound_domains`` returns a sound lower bound of every row over the
domain: the set of x in [lo, hi] whose pre-activations have the split signs.

* Pre-activation bounds: layer 0 exactly by interval arithmetic, later layers by CROWN
  back-substitution (or taken from ``pre``, e.g. the root's bounds), always intersected with
  ``pre`` when given, then *clamped* by the splits (+1: l <- max(l, 0); -1: u <- min(u, 0)).
  A domain whose clamped bounds cross (l > u) is empty: its bound is +inf.
* ReLU relaxation (``_relax``): stable neurons exact; unstable ones upper chord and lower
  slope alpha in [0, 1] (CROWN's default: 1 if u > -l else 0).
* beta (Wang et al. 2021): for each split neuron a multiplier beta >= 0 adds the valid term
  -beta * s * z (s = +1 active: z >= 0; s = -1 inactive: z <= 0), which is <= 0 on the domain,
  so every (alpha, beta) gives a sound bound; Adam maximizes it (its steps in float32, by default)
  and the best iterate's multipliers are evaluated once more in float64: that is the bound.

Shapes: lo, hi (B, n_in); C (B, r, n_out); d (B, r); splits: list per hidden layer of int8
(B, n_k); pre: list of (l, u) per hidden layer, (B or 1, n_k).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from certify.ir import ReLU
from bounds import memory
from bounds.activations import ACTIVATIONS
from bounds.bab.chain import Chain

_RELU = ACTIVATIONS[ReLU]

# A bound proves a row only when it exceeds this (float64 rounding of the whole backward pass).
PROOF_TOL = 1e-9

Tensor = torch.Tensor


@dataclass
class DomainBounds:
    """``lower`` (B, r): bounds on C z + d; ``lam_in`` (B, r, n_in): CROWN's linear coefficients
    on x (kept from the first pass: a steadier guide for input splits than alpha's); ``lam_hidden[k]`` (B, r, n_k): coefficients on a_k (for branching scores);
    ``pre``: the (clamped) pre-activation bounds used, list of (l, u) (B, n_k); ``alpha`` / ``beta``:
    the optimized multipliers, lists per hidden layer of (B, r, n_k) (beta None where a layer has no
    split), for warm-starting child domains; None when no optimization ran. ``lam_lower`` (B, r): the
    lower bound of the very pass that produced ``lam_in``, so ``lam_lower + lam_in (x - c) + |lam_in| rad``
    (c, rad: the box's centre and radius) is a sound linear lower bound of each row at every x in
    the box (used to clip input boxes). ``instability`` (B, n_in): how much of the unstable
    neurons' ranges each input causes (``_forward_pre``), when asked for."""

    lower: Tensor
    lam_in: Tensor
    lam_hidden: list[Tensor]
    pre: list[tuple[Tensor, Tensor]]
    alpha: list[Tensor] | None = None
    beta: list[Tensor | None] | None = None
    lam_lower: Tensor | None = None
    instability: Tensor | None = None


def _relax(l: Tensor, u: Tensor):
    """Upper slope/intercept, default lower slope and unstable mask of relu on [l, u] (the ReLU
    record's, bounds/activations.py); shapes (B, n)."""
    r = _RELU.relax(None, l, u)
    return r.upper_slope, r.upper_bias, r.lower_slope, _RELU.unstable(None, l, u)


def _backsub(chain: Chain, t: int, C: Tensor, d: Tensor, lo: Tensor, hi: Tensor, pre, alpha=None,
             beta=None, splits=None, keep=False):
    """Lower bound of C z_t + d (B, r) with relaxed ReLUs below layer t; also the coefficients."""
    lam, const = C, d
    hidden = [None] * t
    for k in range(t, -1, -1):
        const = const + lam @ chain.biases[k]
        lam = lam @ chain.weights[k]
        if k == 0:
            break
        j = k - 1
        l, u = pre[j]
        su, tu, sl, unstable = _relax(l, u)
        su, tu = su.unsqueeze(1), tu.unsqueeze(1)
        if alpha is not None and alpha[j] is not None:
            sl = torch.where(unstable.unsqueeze(1), alpha[j].clamp(0, 1), sl.unsqueeze(1))
        else:
            sl = sl.unsqueeze(1)
        if keep:
            hidden[j] = lam.detach()
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        const = const + (neg * tu).sum(-1)
        lam = pos * sl + neg * su
        if beta is not None and beta[j] is not None:
            lam = lam - beta[j].clamp(min=0) * splits[j].unsqueeze(1).to(lam.dtype)
    center, rad = (hi + lo) / 2, (hi - lo) / 2
    lower = const + (lam @ center.unsqueeze(-1)).squeeze(-1) - (lam.abs() @ rad.unsqueeze(-1)).squeeze(-1)
    lower = _outward(lower, (lam.abs() @ (center.abs() + rad).unsqueeze(-1)).squeeze(-1), const)
    return lower, lam, hidden


def _clamp(l: Tensor, u: Tensor, s: Tensor | None):
    if s is None:
        return l, u
    l = torch.where(s > 0, l.clamp(min=0), l)
    u = torch.where(s < 0, u.clamp(max=0), u)
    return l, u


def _forward_pre(chain: Chain, lo: Tensor, hi: Tensor, splits=None, pre=None, inst=None):
    """Forward linear relaxation (symbolic intervals): z_k in [Lw x + Lb, Uw x + Ub] for x in the box,
    propagated layer by layer with the same ReLU relaxation; cost O(n_k^2 n_in) per layer, so
    cheap for low-dimensional inputs. Returns clamped (l, u) (B, n_k) per hidden layer.

    Layout: the lower and upper forms of all B domains are one matrix (2 n_k, B (n_in + 1)) (the
    last of the n_in + 1 columns is the constant), so a layer is one GEMM with [[W+, W-], [W-, W+]].
    ``inst``: a list to which the (B, n_in) *instability* of each input dimension is appended:
    over the neurons left unstable, the share of each one's symbolic range that the dimension's
    width causes, summed (which input to split to make neurons stable)."""
    B, n_in = lo.shape
    c, r = (hi + lo) / 2, (hi - lo) / 2                      # (B, n_in)
    w, b = chain.weights[0], chain.biases[0]
    n = w.shape[0]
    # F (2, n, B, n_in + 1): [lower; upper] forms, equal at layer 0
    F = torch.empty(2, n, B, n_in + 1, dtype=lo.dtype, device=lo.device)
    F[:, :, :, :n_in] = w.unsqueeze(1)
    F[:, :, :, n_in] = b.unsqueeze(1)
    out = []
    for t in range(len(chain.weights) - 1):
        Fw, Fb = F[..., :n_in], F[..., n_in]                 # (2, n, B, n_in), (2, n, B)
        mid = (Fw * c).sum(-1) + Fb
        per_dim = Fw.abs() * r                               # (2, n, B, n_in)
        dev = per_dim.sum(-1)
        l, u = (mid[0] - dev[0]).T, (mid[1] + dev[1]).T      # (B, n)
        if pre is not None:
            l, u = torch.maximum(l, pre[t][0]), torch.minimum(u, pre[t][1])
            if splits is None:   # no split: a crossing is rounding (see bound_domains)
                l, u = torch.minimum(l, u), torch.maximum(l, u)
        l, u = _clamp(l, u, None if splits is None else splits[t])
        out.append((l, u))
        su, tu, sl, unstable = _relax(l, u)
        if inst is not None:
            share = (per_dim[0] + per_dim[1]) / (dev[0] + dev[1]).clamp(min=1e-300).unsqueeze(-1)
            score = (share * unstable.T.unsqueeze(-1)).sum(0)                  # (B, n_in)
            inst_sum = score if t == 0 else inst_sum + score
        G = torch.stack([F[0] * sl.T.unsqueeze(-1), F[1] * su.T.unsqueeze(-1)])
        G[1, :, :, n_in] += tu.T
        w, b = chain.weights[t + 1], chain.biases[t + 1]
        m = w.shape[0]
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        W2 = torch.cat([torch.cat([wp, wn], 1), torch.cat([wn, wp], 1)])          # (2m, 2n)
        F = (W2 @ G.reshape(2 * n, B * (n_in + 1))).reshape(2, m, B, n_in + 1)
        F[:, :, :, n_in] += b.unsqueeze(1)
        n = m
    if inst is not None:
        inst.append(inst_sum if out else torch.zeros_like(lo))
    return out


FIRST_MAX_DIFF = 0.25   # ``_refine_first``: above this share of differing neurons, the plain pass is cheaper


def _slope(lam: Tensor, su: Tensor, sl: Tensor, uns: Tensor, kept: Tensor | None) -> Tensor:
    """Back-substitution through one relaxed ReLU layer, per coefficient: the slope a row with
    coefficients ``lam`` takes (its kept alpha, or ``sl``, where lam >= 0 on an unstable neuron;
    the upper chord ``su`` where lam < 0; the row also picks up ``min(lam, 0) * tu``). All
    arguments broadcast to lam's shape."""
    a = sl if kept is None else torch.where(uns, kept, sl)
    return torch.where(lam >= 0, a, su)


def _outward(val: Tensor, err: Tensor, const: Tensor) -> Tensor:
    """A back-substituted bound ``val`` lowered by the rounding of its last dot products
    (``err``: |coefficients| . (|centre| + radius); ``const``: its constant), so an attained
    minimum is never reported above itself."""
    return val - 4 * torch.finfo(val.dtype).eps * (err + const.abs())


def _refine_first(chain: Chain, c_all: Tensor, r_all: Tensor, shared: bool, l0: Tensor, u0: Tensor,
                  dom: Tensor, neu: Tensor, kept=None, deadline: float | None = None,
                  pairs: int = 4096, relaxed=None) -> Tensor | None:
    """``_refine_unstable``'s CROWN bounds of hidden layer 1's neurons ``neu`` in domains ``dom``
    (P,) (sorted by domain, as ``torch.nonzero`` gives them) over layer 0's bounds ``l0``, ``u0``
    (B, n0): the same bounds (to rounding) at a fraction of the cost, or None where it would not
    be cheaper.

    A row's input coefficients are (lam * slope_b) @ W0: lam is a row of W1 (fixed), and slope_b
    the layer-0 relaxation of domain b, which differs from the loosest bounds over all domains
    (``base``: the root's, when the domains come from splitting it) only at the few neurons that
    domain has split. So each row is its ``base`` row, computed once per neuron, plus a correction
    over those k neurons: O(k n_in) per row instead of O(n0 n_in); the rows' values at the box
    centre and their rounding scale are linear in them and need no row at all, so only
    |row| . radius reads the (domain, neuron, n_in) rows, built ``pairs`` (about) at a time.
    ``relaxed``: ``_relax(l0, u0)`` when the caller has it.
    Returns (lower, -upper) (P, 2), as ``_refine_plain``."""
    w0, b0, w1, b1 = chain.weights[0], chain.biases[0], chain.weights[1], chain.biases[1]
    lb, ub = l0.min(0, keepdim=True).values, u0.max(0, keepdim=True).values   # (1, n0)
    rel_b, rel_d = _relax(lb, ub), (_relax(l0, u0) if relaxed is None else relaxed)
    diff = torch.zeros_like(l0, dtype=torch.bool)
    for vb, vd in zip(rel_b, rel_d):
        diff |= vd != vb
    k = int(diff.sum(1).max()) if diff.numel() else 0
    if k > FIRST_MAX_DIFF * l0.shape[1]:
        return None
    rows = None if kept is None else kept[0]               # (n1, 2): a neuron's two alpha rows
    alpha0 = None if kept is None else kept[1][0]          # (2 m, n0)
    # the base rows of every neuron needed: (U, 2, n_in) and constants (U, 2)
    uniq, inv = torch.unique(neu, return_inverse=True)
    U = uniq.numel()
    lam = torch.stack([w1[uniq], -w1[uniq]], 1)            # (U, 2, n0)
    su, tu, sl, uns = (v.unsqueeze(0) for v in rel_b)
    lam_s = lam * _slope(lam, su, sl, uns, None if kept is None else alpha0[rows[uniq]])
    base_lam = lam_s @ w0
    base_const = torch.stack([b1[uniq], -b1[uniq]], 1) + (lam.clamp(max=0) * tu).sum(-1) + lam_s @ b0
    # the base rows' values at the box centre(s) and their rounding scale, (1 or B, 2 U)
    box = slice(0, 1) if shared else slice(None)
    base_dot = (base_lam.reshape(2 * U, -1) @ c_all[box].T).T
    base_err = (base_lam.reshape(2 * U, -1).abs() @ (c_all[box].abs() + r_all[box]).T).T
    # per domain, the (padded) indices of its k differing neurons
    J = torch.argsort(diff.to(torch.int8), dim=1, descending=True, stable=True)[:, :max(k, 1)]   # (B, k)
    valid = torch.gather(diff, 1, J)
    low = torch.full((dom.numel(), 2), -float("inf"), dtype=l0.dtype, device=l0.device)
    # the domains with pairs, in groups of G: a group's rows are laid out (G, U, 2, n_in), one slot
    # per needed neuron (a slot without a pair is computed and discarded: typically most needed
    # neurons are unstable in most domains), so the base rows are added by broadcasting
    doms, dloc = torch.unique(dom, return_inverse=True)
    starts = torch.searchsorted(dloc, torch.arange(doms.numel() + 1, device=dloc.device))
    G = max(1, pairs // U)
    base_rows = base_lam.reshape(1, 2 * U, -1)
    signs = torch.tensor([1.0, -1.0], dtype=w1.dtype, device=w1.device).view(1, 2, 1)   # a neuron's lower and -upper rows
    for g0 in range(0, doms.numel(), G):
        if deadline is not None and g0 and time.monotonic() > deadline:
            break
        g1 = min(g0 + G, doms.numel())
        p0, p1 = int(starts[g0]), int(starts[g1])
        di, ni, ui, gi = dom[p0:p1], neu[p0:p1], inv[p0:p1], dloc[p0:p1] - g0
        Jp = J[di]                                                        # (P, k)
        lam_k = torch.gather(w1[ni], 1, Jp).unsqueeze(1) * signs
        take = (lambda v: torch.gather(v[di], 1, Jp).unsqueeze(1))
        a_k = None if kept is None else alpha0[rows[ni].unsqueeze(-1), Jp.unsqueeze(1)]      # (P, 2, k)
        (su_d, tu_d, sl_d, uns_d), (su_b, tu_b, sl_b, uns_b) = ((take(v) for v in rel_d),
                                                                (v[0][Jp].unsqueeze(1) for v in rel_b))
        m = valid[di].unsqueeze(1).to(lam_k.dtype)
        coef = lam_k * (_slope(lam_k, su_d, sl_d, uns_d, a_k) - _slope(lam_k, su_b, sl_b, uns_b, a_k)) * m   # (P, 2, k)
        const = (base_const[ui] + (lam_k.clamp(max=0) * (tu_d - tu_b) * m).sum(-1)
                 + (coef * b0[Jp].unsqueeze(1)).sum(-1))
        D = g1 - g0
        Q = torch.zeros(D, U, 2, coef.shape[-1], dtype=coef.dtype, device=coef.device)
        Q[gi, ui] = coef
        Q = Q.reshape(D, 2 * U, -1)
        W = w0[J[doms[g0:g1]]]                                            # (D, k, n_in)
        in_box = slice(0, 1) if shared else doms[g0:g1]
        c, r = c_all[in_box].unsqueeze(-1), r_all[in_box].unsqueeze(-1)   # (1 or D, n_in, 1)
        # the linear parts need no row: the base rows' values plus the corrections' (and an upper
        # bound of |row| . (|c| + r), the scale of the rounding, from |base row| and |correction|)
        dot = base_dot[in_box] + torch.bmm(Q, W @ c).squeeze(-1)                    # (D, 2 U)
        err = base_err[in_box] + torch.bmm(Q.abs(), W.abs() @ (c.abs() + r)).squeeze(-1)
        dev = (torch.baddbmm(base_rows, Q, W).abs_() @ r).squeeze(-1)   # |row| . r over (D, 2 U, n_in) rows
        pick = (lambda v: v.reshape(D, U, 2)[gi, ui])
        low[p0:p1] = _outward(const + pick(dot) - pick(dev), pick(err), const)
    return low


def _refine_plain(chain: Chain, t: int, relax, c_all: Tensor, r_all: Tensor, shared: bool, dom: Tensor,
                  neu: Tensor, kept=None, deadline: float | None = None, chunk: int = 8192) -> Tensor:
    """``_refine_unstable``'s CROWN bounds of hidden layer t's neurons ``neu`` in domains ``dom``
    (P,), by back-substitution through the relaxations ``relax`` (``_relax`` of layers < t, per
    domain), ``chunk`` pairs at a time. Returns (lower, -upper) (P, 2): -inf for the pairs left
    when ``deadline`` passed (the caller keeps their bounds)."""
    wt, bt = chain.weights[t], chain.biases[t]
    low = torch.full((dom.numel(), 2), -float("inf"), dtype=c_all.dtype, device=c_all.device)
    for s0 in range(0, dom.numel(), chunk):
        if deadline is not None and s0 and time.monotonic() > deadline:
            break
        di, ni = dom[s0:s0 + chunk], neu[s0:s0 + chunk]
        lam = torch.stack([wt[ni], -wt[ni]], 1)                       # (P, 2, n_{t-1})
        const = torch.stack([bt[ni], -bt[ni]], 1)                     # (P, 2)
        rows = None if kept is None else kept[0][ni]                 # (P, 2)
        for k in range(t - 1, -1, -1):
            su, tu, sl, uns = (v[di].unsqueeze(1) for v in relax[k])  # (P, 1, n_k)
            const = const + (lam.clamp(max=0) @ tu.transpose(1, 2)).squeeze(-1)
            lam = lam * _slope(lam, su, sl, uns, None if kept is None else kept[1][k][rows])
            const = const + lam @ chain.biases[k]
            lam = lam @ chain.weights[k]
        in_box = slice(0, 1) if shared else di
        c, r = c_all[in_box].unsqueeze(-1), r_all[in_box].unsqueeze(-1)   # (1 or P, n_in, 1)
        dot = (lam @ c).squeeze(-1)
        two = lam.abs_() @ torch.cat([r, c.abs() + r], -1)                # (P, 2, 2)
        low[s0:s0 + chunk] = _outward(const + dot - two[..., 0], two[..., 1], const)
    return low


def _refine_unstable(chain: Chain, lo: Tensor, hi: Tensor, out, splits=None, chunk: int = 8192,
                     refine_from: Tensor | None = None, pre_alpha: dict | None = None,
                     deadline: float | None = None, first_fast: bool = True):
    """Tighten, layer by layer, the bounds of the neurons that are still unstable by CROWN
    back-substitution over the (already refined) earlier layers: only those neurons' bounds can
    change a relaxation, so the cost scales with the number of unstable (domain, neuron) pairs.

    Each pair gets two rows (its lower bound, and minus its upper bound) that start as the rows
    of the layer's weight matrix; the relaxations of the earlier layers are computed once per
    domain and gathered per pair. ``refine_from`` (B,): domain b only refines layers
    t > refine_from[b] (a child whose parent's bounds were refined needs only the layers after
    its new split). A box shared by all domains (``lo`` expanded from one row) is not gathered.
    ``pre_alpha``: lower slopes per neuron bound from ``optimized_pre_bounds(keep_alpha=True)`` on
    a box containing every domain (any slope in [0, 1] is sound; CROWN's default otherwise).
    ``deadline``: past it, the neurons not yet refined keep the bounds they came with (sound: each
    enclosure holds whatever the other neurons' are). Layer 1's pairs go through ``_refine_first``
    (a correction of the root's rows per domain) unless ``first_fast`` is False (tests compare the
    two)."""
    shared = lo.shape[0] == 1 or (lo.stride(0) == 0 and hi.stride(0) == 0)
    c_all, r_all = (hi + lo) / 2, (hi - lo) / 2
    relax = []
    for t in range(1, len(out)):
        l0, u0 = out[t - 1]
        relax.append(_relax(l0, u0))
        if deadline is not None and time.monotonic() > deadline:
            break
        l, u = out[t]
        todo = (l < 0) & (u > 0)
        if refine_from is not None:
            todo &= (refine_from < t).unsqueeze(1)
        dom, neu = torch.nonzero(todo, as_tuple=True)
        if dom.numel() == 0:
            continue
        kept = None if pre_alpha is None else pre_alpha.get(t)
        low = _refine_first(chain, c_all, r_all, shared, *out[0], dom, neu, kept, deadline, relaxed=relax[0]) \
            if t == 1 and first_fast else None
        if low is None:
            low = _refine_plain(chain, t, relax, c_all, r_all, shared, dom, neu, kept, deadline, chunk)
        l, u = l.clone(), u.clone()
        l[dom, neu] = torch.maximum(l[dom, neu], low[:, 0])
        u[dom, neu] = torch.minimum(u[dom, neu], -low[:, 1])
        out[t] = _clamp(l, u, None if splits is None else splits[t])
    return out


def _crown_layer(chain: Chain, t: int, lo: Tensor, hi: Tensor, out) -> tuple[Tensor, Tensor]:
    """CROWN bounds (l, u) (B, n_t) of layer t's pre-activation over the bounds ``out`` of the
    layers before it (no gradient needed)."""
    B, n = lo.shape[0], chain.weights[t].shape[0]
    eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
    low, _, _ = _backsub(chain, t, torch.cat([eye, -eye]).unsqueeze(0).expand(B, 2 * n, n),
                         torch.zeros(B, 2 * n, dtype=lo.dtype, device=lo.device), lo, hi, out)
    return low[:, :n], -low[:, n:]


PAIR_COPIES = 12   # float64 vectors of a layer's width per (domain, neuron) pair in ``_refine_plain``: rows, slopes, relaxations


def refine_chunk(chain: Chain, memory: int | None, most: int = 8192) -> int:
    """(domain, neuron) pairs ``_refine_plain`` back-substitutes at once within ``memory`` bytes
    (None: ``most``): ``PAIR_COPIES`` float64 vectors of the widest layer per pair."""
    if memory is None:
        return most
    return max(1, min(most, memory // (PAIR_COPIES * 8 * max([chain.n_in] + chain.hidden_sizes))))


def pre_activation_bounds(chain: Chain, lo: Tensor, hi: Tensor, splits=None, pre=None,
                          recompute: bool = True, mode: str = "backward",
                          refine_from: Tensor | None = None, pre_alpha: dict | None = None,
                          deadline: float | None = None, inst=None,
                          memory: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """Clamped bounds (l, u) (B, n_k) of every hidden pre-activation over the domains.

    ``mode``: "backward" (CROWN back-substitution per layer, tighter), "forward" (symbolic
    intervals, much cheaper when the input has few dimensions), "hybrid" (forward, then CROWN
    for the neurons still unstable) or "refine" (``pre`` clamped by the splits, then CROWN for
    the neurons still unstable: the splits of earlier layers tighten later ones; ``refine_from``
    (B,), ``pre_alpha``: see ``_refine_unstable``). ``inst`` (modes "forward", "hybrid"): see
    ``_forward_pre``."""
    B = lo.shape[0]
    if mode == "refine" and pre is not None and recompute:
        out = [_clamp(l.expand(B, -1), u.expand(B, -1), None if splits is None else splits[t])
               for t, (l, u) in enumerate(pre)]
        return _refine_unstable(chain, lo, hi, out, splits, refine_from=refine_from, pre_alpha=pre_alpha,
                                deadline=deadline, chunk=refine_chunk(chain, memory))
    if mode in ("forward", "hybrid") and (pre is None or recompute):
        out = _forward_pre(chain, lo, hi, splits, pre, inst)
        return _refine_unstable(chain, lo, hi, out, splits, chunk=refine_chunk(chain, memory)) if mode == "hybrid" \
            else out
    out = []
    for t in range(len(chain.weights) - 1):
        s = None if splits is None else splits[t]
        if t == 0 and (pre is None or recompute):
            w, b = chain.weights[0], chain.biases[0]
            c, r = (hi + lo) / 2, (hi - lo) / 2
            mid = c @ w.T + b
            dev = r @ w.abs().T
            l, u = mid - dev, mid + dev
        elif pre is None or recompute:
            l, u = _crown_layer(chain, t, lo, hi, out)
        if pre is not None:
            pl, pu = pre[t]
            if recompute:
                l, u = torch.maximum(l, pl), torch.minimum(u, pu)
            else:
                l, u = pl.expand(B, -1), pu.expand(B, -1)
        out.append(_clamp(l, u, s))
    return out


def _ascent_step(opt, low: Tensor, alpha: list[Tensor], beta=None) -> None:
    """One Adam step raising the bounds ``low``, then alpha back into [0, 1] and beta to >= 0."""
    opt.zero_grad()
    (-low.sum()).backward()
    opt.step()
    with torch.no_grad():
        for a in alpha:
            a.clamp_(0, 1)
        for b in beta or []:
            if b is not None:
                b.clamp_(min=0)


def optimized_pre_bounds(chain: Chain, lo: Tensor, hi: Tensor, pre=None, iterations: int = 20,
                         lr: float = 0.1, keep_alpha: bool = False):
    """Pre-activation bounds (l, u) (B, n_k) tightened layer by layer with alpha-CROWN.

    For each hidden layer t >= 1, the neurons that are unstable in any domain get their own
    lower-slope variables alpha in [0, 1] for every earlier layer (one set per bound: lower and
    upper), Adam maximizes the back-substituted bounds, and the best iterate is intersected with
    the CROWN bounds before layer t + 1 is bounded over them. Every alpha gives a sound bound, so
    the result is sound; it is never looser than ``pre_activation_bounds`` (``pre`` when given).

    ``keep_alpha``: also return, per layer t >= 1, ``(rows, alphas)`` for one box (B = 1): ``rows``
    (n_t, 2) long, the rows of neuron i's lower and upper bound in ``alphas[j]`` (2 m, n_j), the
    best slopes found for layer j < t; sub-domains of the box refine their bounds with them
    (``_refine_unstable``)."""
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    if pre is None:
        pre = pre_activation_bounds(chain, lo, hi)
    B = lo.shape[0]
    out, kept = [pre[0]], {}
    for t in range(1, len(pre)):
        with torch.no_grad():   # CROWN over the refined earlier layers, intersected with ``pre``
            l, u = _crown_layer(chain, t, lo, hi, out)
            l, u = torch.maximum(l, pre[t][0]), torch.minimum(u, pre[t][1])
        n = l.shape[1]
        idx = torch.nonzero(((l < 0) & (u > 0)).any(0)).flatten()
        m = idx.numel()
        if m and iterations > 0:
            C = torch.zeros(B, 2 * m, n, dtype=lo.dtype, device=lo.device)
            C[:, torch.arange(m, device=lo.device), idx] = 1.0
            C[:, m + torch.arange(m, device=lo.device), idx] = -1.0
            d = torch.zeros(B, 2 * m, dtype=lo.dtype, device=lo.device)
            alpha = [_relax(*out[j])[2].unsqueeze(1).expand(-1, 2 * m, -1).clone().requires_grad_(True)
                     for j in range(t)]
            opt = torch.optim.Adam(alpha, lr=lr)
            best = torch.full((B, 2 * m), -float("inf"), dtype=lo.dtype, device=lo.device)
            best_alpha = [a.detach().clone() for a in alpha] if keep_alpha else []
            for _ in range(iterations):
                low, _, _ = _backsub(chain, t, C, d, lo, hi, out, alpha)
                with torch.no_grad():
                    better = low > best
                    for ba, a in zip(best_alpha, alpha):
                        ba[better] = a[better]
                    best = torch.maximum(best, low)
                _ascent_step(opt, low, alpha)
            if keep_alpha:
                rows = torch.zeros((n, 2), dtype=torch.long, device=lo.device)     # neurons not optimized: any row is sound
                rows[idx] = torch.stack([torch.arange(m, device=lo.device), m + torch.arange(m, device=lo.device)], 1)
                kept[t] = (rows, [a[0].clamp(0, 1) for a in best_alpha])
            l, u = l.clone(), u.clone()
            l[:, idx] = torch.maximum(l[:, idx], best[:, :m])
            u[:, idx] = torch.minimum(u[:, idx], -best[:, m:])
        out.append((torch.minimum(l, u), torch.maximum(l, u)))   # a crossing is rounding (a box is never empty)
    return (out, kept) if keep_alpha else out


def bound_domains(chain: Chain, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, splits=None, pre=None,
                  recompute: bool = True, iterations: int = 0, lr: float = 0.1, use_beta: bool = True,
                  stop_when_positive: bool = True, mode: str = "backward", alpha_init=None,
                  beta_init=None, refine_from: Tensor | None = None, pre_alpha: dict | None = None,
                  deadline: float | None = None, instability: bool = False,
                  opt_dtype: torch.dtype = torch.float32, memory: int | None = None) -> DomainBounds:
    """Sound lower bounds (B, r) of C z_L + d over each domain; see the module docstring.

    ``deadline`` (time.monotonic()): the per-domain refinement (mode "refine") and the alpha/beta
    iterations stop there; what is left keeps its sound bound (the refinement's unreached neurons
    their split-clamped bounds, the iterations their best iterate). The first backward pass always
    runs.

    ``iterations`` > 0 optimizes alpha (per row) and, with splits and ``use_beta``, beta, starting
    from ``alpha_init`` / ``beta_init`` when given (lists per hidden layer of (B, r, n_k), e.g. the
    parent domain's; any values are sound: alpha is clamped to [0, 1] and beta to >= 0). The steps
    run in ``opt_dtype``; the best step's multipliers (by their ``opt_dtype`` value) are re-evaluated
    in float64, and that bound (when above the first pass's) is the one returned. ``alpha`` /
    ``beta`` returned are the last step's (in ``opt_dtype``): as warm starts for children they
    continue the ascent where the best step's would restart it.
    ``instability`` (modes "forward", "hybrid"): also return the inputs' instability
    (``_forward_pre``). ``memory``: bytes the pre-activation refinement's rows may take
    (``pre_activation_bounds``).
    """
    inst = [] if instability else None
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    C, d = C.to(torch.float64), d.to(torch.float64)
    L = len(chain.weights)
    with torch.no_grad():
        pre_b = pre_activation_bounds(chain, lo, hi, splits, pre, recompute, mode, refine_from, pre_alpha, deadline,
                                      inst, memory)
        empty = torch.zeros(lo.shape[0], dtype=torch.bool, device=lo.device)
        if splits is None:
            # a box is never empty: bounds crossing after intersecting two sound enclosures can
            # only be rounding, so the crossed pair is used as the interval (never "empty")
            pre_b = [(torch.minimum(l, u), torch.maximum(l, u)) for l, u in pre_b]
        for l, u in pre_b:
            empty |= (l > u).any(1)
        lower, lam, hidden = _backsub(chain, L - 1, C, d, lo, hi, pre_b, keep=True)
    lam_lower = torch.where(empty.unsqueeze(1), torch.full_like(lower, float("inf")), lower)
    best = lower
    unstable_any = any(bool(((l < 0) & (u > 0)).any()) for l, u in pre_b)
    has_splits = splits is not None and any(bool((s != 0).any()) for s in splits)
    if iterations > 0 and (unstable_any or (use_beta and has_splits)) and not (stop_when_positive and bool((best.max(1).values > 0).all())):
        # the steps run in ``opt_dtype`` (float32 is faster on a CPU); their values only
        # choose the multipliers, and the bound reported is the best multipliers' bound
        # re-evaluated in float64 (sound for any alpha in [0, 1] and beta >= 0)
        dt = opt_dtype
        ch = chain.cast(dt)
        lo_o, hi_o, C_o, d_o = lo.to(dt), hi.to(dt), C.to(dt), d.to(dt)
        pre_o = [(l.to(dt), u.to(dt)) for l, u in pre_b]
        r = C.shape[1]
        alpha = []
        for k, (l, u) in enumerate(pre_b):
            if alpha_init is not None:
                a0 = alpha_init[k].to(dt).clamp(0, 1).expand(-1, r, -1)
            else:
                a0 = _relax(l, u)[2].to(dt).unsqueeze(1).expand(-1, r, -1)
            alpha.append(a0.clone().requires_grad_(True))
        params = list(alpha)
        beta = None
        if use_beta and has_splits:
            beta = []
            for k, s in enumerate(splits):
                if not bool((s != 0).any()):
                    beta.append(None)
                elif beta_init is not None and beta_init[k] is not None:
                    beta.append(beta_init[k].to(dt).clamp(min=0).expand(-1, r, -1).clone().requires_grad_(True))
                else:
                    beta.append(torch.zeros(lo.shape[0], r, s.shape[1], dtype=dt, requires_grad=True, device=lo.device))
            params += [b for b in beta if b is not None]
        opt = torch.optim.Adam(params, lr=lr)
        seen = torch.full_like(best, -float("inf"), dtype=dt)     # best step value per row
        best_alpha = [a.detach().clone() for a in alpha]
        best_beta = None if beta is None else [None if b is None else b.detach().clone() for b in beta]
        for _ in range(iterations):
            low, _, _ = _backsub(ch, L - 1, C_o, d_o, lo_o, hi_o, pre_o, alpha, beta, splits)
            with torch.no_grad():
                better = low > seen
                seen = torch.where(better, low.detach(), seen)
                bm = better.unsqueeze(-1)
                best_alpha = [torch.where(bm, a.detach(), ba) for a, ba in zip(alpha, best_alpha)]
                if beta is not None:
                    best_beta = [None if b is None else torch.where(bm, b.detach(), bb) for b, bb in zip(beta, best_beta)]
            if stop_when_positive and bool((seen.max(1).values > 0).all()):
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            _ascent_step(opt, low, alpha, beta)
        with torch.no_grad():   # the best step's multipliers, their bound in float64
            low, _, hid = _backsub(chain, L - 1, C, d, lo, hi, pre_b, [a.to(torch.float64) for a in best_alpha],
                                   None if beta is None else [None if b is None else b.to(torch.float64)
                                                              for b in best_beta],
                                   splits, keep=True)
        better = low > best
        best = torch.where(better, low, best)
        hidden = [torch.where(better.unsqueeze(-1), h, h0) for h, h0 in zip(hid, hidden)]
    else:
        alpha, beta = alpha_init, beta_init
    best = best.detach()
    best = torch.where(empty.unsqueeze(1), torch.full_like(best, float("inf")), best)
    det = (lambda xs: None if xs is None else [None if x is None else x.detach() for x in xs])
    return DomainBounds(best, lam.detach(), hidden, pre_b, det(alpha), det(beta), lam_lower,
                        inst[0] if instability else None)


def domain_bytes(chain: Chain, rows: int, opt_dtype: torch.dtype = torch.float32,
                 warm_start: bool = True) -> tuple[int, int]:
    """(bytes one domain takes in a ``bound_domains`` call with alpha/beta steps, bytes an open
    domain is kept in), from the chain's widths and the ``rows`` of its margins: in a call, the
    rows' coefficients at every layer (input, each hidden pre-activation and activation, output),
    alpha and beta per row and hidden neuron, the pre-activation bounds
    (``bounds.memory.domain_bytes``); kept: bounds (float64), scores (float64), splits (int8)
    and, with ``warm_start``, alpha and beta in float32."""
    S = sum(chain.hidden_sizes)
    call = memory.domain_bytes(rows * (chain.n_in + 2 * S + chain.n_out), 2 * rows * S, 2 * S, opt_dtype)
    kept = (16 + 8 + 1) * S + (2 * 4 * rows * S if warm_start else 0)
    return call, kept
