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
  so every (alpha, beta) gives a sound bound; Adam maximizes it and the best iterate is kept.

Shapes: lo, hi (B, n_in); C (B, r, n_out); d (B, r); splits: list per hidden layer of int8
(B, n_k); pre: list of (l, u) per hidden layer, (B or 1, n_k).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bounds.bab.chain import Chain

Tensor = torch.Tensor


@dataclass
class DomainBounds:
    """``lower`` (B, r): bounds on C z + d; ``lam_in`` (B, r, n_in): CROWN's linear coefficients
    on x (kept from the first pass: a steadier guide for input splits than alpha's); ``lam_hidden[k]`` (B, r, n_k): coefficients on a_k (for branching scores);
    ``pre``: the (clamped) pre-activation bounds used, list of (l, u) (B, n_k)."""

    lower: Tensor
    lam_in: Tensor
    lam_hidden: list[Tensor]
    pre: list[tuple[Tensor, Tensor]]


def _relax(l: Tensor, u: Tensor):
    """Upper slope/intercept and default lower slope of relu on [l, u]; shapes (B, n)."""
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    den = torch.where(unstable, u - l, torch.ones_like(u))
    su = torch.where(active, torch.ones_like(u), torch.where(unstable, u / den, torch.zeros_like(u)))
    tu = torch.where(unstable, -l * su, torch.zeros_like(u))
    sl = torch.where(active, torch.ones_like(u), torch.where(unstable, (u > -l).to(u.dtype), torch.zeros_like(u)))
    return su, tu, sl, unstable


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
    return lower, lam, hidden


def _clamp(l: Tensor, u: Tensor, s: Tensor | None):
    if s is None:
        return l, u
    l = torch.where(s > 0, l.clamp(min=0), l)
    u = torch.where(s < 0, u.clamp(max=0), u)
    return l, u


def _forward_pre(chain: Chain, lo: Tensor, hi: Tensor, splits=None, pre=None):
    """Forward linear relaxation (symbolic intervals): z_k in [Lw x + Lb, Uw x + Ub] for x in the box,
    propagated layer by layer with the same ReLU relaxation; cost O(n_k^2 n_in) per layer, so
    cheap for low-dimensional inputs. Returns clamped (l, u) (B, n_k) per hidden layer."""
    c, r = ((hi + lo) / 2).unsqueeze(-1), ((hi - lo) / 2).unsqueeze(-1)
    w, b = chain.weights[0], chain.biases[0]
    Lw = Uw = w.unsqueeze(0)
    Lb = Ub = b.unsqueeze(0)
    out = []
    for t in range(len(chain.weights) - 1):
        l = (Lw @ c).squeeze(-1) - (Lw.abs() @ r).squeeze(-1) + Lb
        u = (Uw @ c).squeeze(-1) + (Uw.abs() @ r).squeeze(-1) + Ub
        if pre is not None:
            l, u = torch.maximum(l, pre[t][0]), torch.minimum(u, pre[t][1])
        l, u = _clamp(l, u, None if splits is None else splits[t])
        out.append((l, u))
        su, tu, sl, _ = _relax(l, u)
        Law, Lab = Lw * sl.unsqueeze(-1), Lb * sl
        Uaw, Uab = Uw * su.unsqueeze(-1), Ub * su + tu
        w, b = chain.weights[t + 1], chain.biases[t + 1]
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        Lw, Uw = wp @ Law + wn @ Uaw, wp @ Uaw + wn @ Law
        Lb, Ub = Lab @ wp.T + Uab @ wn.T + b, Uab @ wp.T + Lab @ wn.T + b
    return out


def _refine_unstable(chain: Chain, lo: Tensor, hi: Tensor, out, splits=None, chunk: int = 20000):
    """Tighten, layer by layer, the bounds of the neurons that are still unstable by CROWN
    back-substitution over the (already refined) earlier layers: only those neurons' bounds can
    change a relaxation, so the cost scales with the number of unstable (domain, neuron) pairs."""
    for t in range(1, len(out)):
        l, u = out[t]
        dom, neu = torch.nonzero((l < 0) & (u > 0), as_tuple=True)
        if dom.numel() == 0:
            continue
        l, u = l.clone(), u.clone()
        n = l.shape[1]
        for s0 in range(0, dom.numel(), chunk):
            di, ni = dom[s0:s0 + chunk], neu[s0:s0 + chunk]
            P = di.numel()
            C = torch.zeros(P, 2, n, dtype=lo.dtype)
            ar = torch.arange(P)
            C[ar, 0, ni] = 1.0
            C[ar, 1, ni] = -1.0
            pre_g = [(a[di], b[di]) for a, b in out[:t]]
            low, _, _ = _backsub(chain, t, C, torch.zeros(P, 2, dtype=lo.dtype), lo[di], hi[di], pre_g)
            l[di, ni] = torch.maximum(l[di, ni], low[:, 0])
            u[di, ni] = torch.minimum(u[di, ni], -low[:, 1])
        out[t] = _clamp(l, u, None if splits is None else splits[t])
    return out


def pre_activation_bounds(chain: Chain, lo: Tensor, hi: Tensor, splits=None, pre=None,
                          recompute: bool = True, mode: str = "backward") -> list[tuple[Tensor, Tensor]]:
    """Clamped bounds (l, u) (B, n_k) of every hidden pre-activation over the domains.

    ``mode``: "backward" (CROWN back-substitution per layer, tighter) or "forward" (symbolic
    intervals, much cheaper when the input has few dimensions)."""
    B = lo.shape[0]
    if mode in ("forward", "hybrid") and (pre is None or recompute):
        out = _forward_pre(chain, lo, hi, splits, pre)
        return _refine_unstable(chain, lo, hi, out, splits) if mode == "hybrid" else out
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
            n = chain.weights[t].shape[0]
            eye = torch.eye(n, dtype=lo.dtype)
            C = torch.cat([eye, -eye]).unsqueeze(0).expand(B, 2 * n, n)
            low, _, _ = _backsub(chain, t, C, torch.zeros(B, 2 * n, dtype=lo.dtype), lo, hi, out)
            l, u = low[:, :n], -low[:, n:]
        if pre is not None:
            pl, pu = pre[t]
            if recompute:
                l, u = torch.maximum(l, pl), torch.minimum(u, pu)
            else:
                l, u = pl.expand(B, -1), pu.expand(B, -1)
        out.append(_clamp(l, u, s))
    return out


def bound_domains(chain: Chain, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, splits=None, pre=None,
                  recompute: bool = True, iterations: int = 0, lr: float = 0.1, use_beta: bool = True,
                  stop_when_positive: bool = True, mode: str = "backward") -> DomainBounds:
    """Sound lower bounds (B, r) of C z_L + d over each domain; see the module docstring.

    ``iterations`` > 0 optimizes alpha (per row) and, with splits and ``use_beta``, beta.
    """
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    C, d = C.to(torch.float64), d.to(torch.float64)
    L = len(chain.weights)
    with torch.no_grad():
        pre_b = pre_activation_bounds(chain, lo, hi, splits, pre, recompute, mode)
        empty = torch.zeros(lo.shape[0], dtype=torch.bool)
        for l, u in pre_b:
            empty |= (l > u).any(1)
        lower, lam, hidden = _backsub(chain, L - 1, C, d, lo, hi, pre_b, keep=True)
    best = lower
    unstable_any = any(bool(((l < 0) & (u > 0)).any()) for l, u in pre_b)
    has_splits = splits is not None and any(bool((s != 0).any()) for s in splits)
    if iterations > 0 and (unstable_any or (use_beta and has_splits)) and not (stop_when_positive and bool((best.max(1).values > 0).all())):
        r = C.shape[1]
        alpha = []
        for l, u in pre_b:
            _, _, sl, _ = _relax(l, u)
            alpha.append(sl.unsqueeze(1).expand(-1, r, -1).clone().requires_grad_(True))
        params = list(alpha)
        beta = None
        if use_beta and has_splits:
            beta = [torch.zeros(lo.shape[0], r, s.shape[1], dtype=torch.float64, requires_grad=True)
                    if bool((s != 0).any()) else None for s in splits]
            params += [b for b in beta if b is not None]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(iterations):
            low, lam_i, hid_i = _backsub(chain, L - 1, C, d, lo, hi, pre_b, alpha, beta, splits, keep=True)
            with torch.no_grad():
                better = low > best
                best = torch.where(better, low.detach(), best)
                bm = better.unsqueeze(-1)
                hidden = [torch.where(bm, h, h0) for h, h0 in zip(hid_i, hidden)]
            if stop_when_positive and bool((best.max(1).values > 0).all()):
                break
            opt.zero_grad()
            (-low.sum()).backward()
            opt.step()
            with torch.no_grad():
                for a in alpha:
                    a.clamp_(0, 1)
                if beta is not None:
                    for b in beta:
                        if b is not None:
                            b.clamp_(min=0)
    best = best.detach()
    best = torch.where(empty.unsqueeze(1), torch.full_like(best, float("inf")), best)
    return DomainBounds(best, lam.detach(), hidden, pre_b)
