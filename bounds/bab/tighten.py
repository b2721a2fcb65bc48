"""Intermediate bounds tightened by branch and bound (the role of alpha-beta-CROWN's MIP refinement).

alpha-CROWN bounds a hidden neuron by one linear relaxation of the layers below it; on deep
networks that leaves many neurons unstable whose true range has one sign, and loose bounds on
the rest, which loosens every relaxation above them. alpha-beta-CROWN tightens them
with a MIP per neuron (Gurobi); here each bound is its own ReLU-splitting problem on the chain
cut after that layer, and all of a layer's problems share one batched search:

* neuron i of hidden layer t has two obligations, z_i > 0 (lower bound) and -z_i > 0 (upper).
  A domain is (obligation, ReLU splits of the layers below t); children are bounded with
  alpha-beta-CROWN (``bound_domains``), and a domain whose bound is positive is closed.
* An obligation's bound is the minimum over its open domains (every closed domain is above 0),
  so it is sound at any time: the search can stop whenever its time is up. An obligation with no
  open domain left proves the neuron stable.
* Each round works on the obligations whose bound is closest to 0 relative to the neuron's
  range (the likeliest to become stable), a few lowest domains each. An obligation stops
  (``frozen``) when its worst domain has no neuron left to split, when it has used
  ``max_domains`` domains, or when its bound is within ``converged`` x range of a value the
  network attains (the bound minimizers' true values: little is left to gain).

``tighten_bounds`` runs the layers in order over a time budget shared by their numbers of
unstable neurons; after each layer the later ones are bounded again by alpha-CROWN over the
tightened ones. Every step intersects with the bounds it was given: never looser, always sound.
"""
from __future__ import annotations

import time

import torch

from bounds.bab.branching import babsr_scores, split_children
from bounds.bab.chain import Chain
from bounds.bab.chain_bounds import PROOF_TOL, bound_domains, optimized_pre_bounds
from bounds.bab.threads import merge_stats, run_in_threads

Tensor = torch.Tensor


def _bounds_per_obligation(n_ob: int, ob: Tensor, low: Tensor) -> Tensor:
    """min over each obligation's open domains (+inf for an obligation without one)."""
    out = torch.full((n_ob,), float("inf"), dtype=torch.float64, device=low.device)
    return out.scatter_reduce(0, ob, low, "amin") if ob.numel() else out


def tighten_layer(chain: Chain, lo: Tensor, hi: Tensor, pre, t: int, deadline: float,
                  pre_alpha: dict | None = None, batch: int = 512, iterations: int = 10,
                  max_domains: int = 2000, converged: float = 0.01,
                  stats: dict | None = None, part: tuple[int, int] = (0, 1),
                  opt_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Bounds (l, u) (n_t,) of hidden layer t >= 1's pre-activation over the box ``lo``, ``hi``
    (n_in,), at least as tight as ``pre[t]`` (pre: (l, u) per hidden layer, (1, n_k) or (n_k,);
    layers < t are the ones split). Sound whenever the deadline stops it. ``part`` (k, K): only
    every K-th of the unstable neurons from the k-th is tightened (the others keep ``pre[t]``).
    ``opt_dtype``: the dtype of the alpha/beta steps (``bound_domains``)."""
    sub = Chain(chain.weights[:t + 1], chain.biases[:t + 1])
    lo1, hi1 = lo.reshape(1, -1).double(), hi.reshape(1, -1).double()
    l, u = (v.reshape(-1).double().clone() for v in pre[t])
    idx = torch.nonzero((l < 0) & (u > 0)).flatten()[part[0]::part[1]]
    m = idx.numel()
    if m == 0 or time.monotonic() >= deadline:
        return l, u
    n_ob, sizes = 2 * m, sub.hidden_sizes
    C = torch.zeros(n_ob, 1, l.numel(), dtype=torch.float64, device=lo.device)
    C[torch.arange(m, device=lo.device), 0, idx] = 1.0                 # obligation k < m: z_idx[k] > 0
    C[m + torch.arange(m, device=lo.device), 0, idx] = -1.0            # obligation m + k: -z_idx[k] > 0
    scale = (u - l)[idx].repeat(2)
    root = [(a.reshape(1, -1).double(), b.reshape(1, -1).double()) for a, b in pre[:t]]
    stats = {} if stats is None else stats

    def bound(ob, splits, dpre, refine_from):
        B = ob.numel()
        res = bound_domains(sub, lo1.expand(B, -1), hi1.expand(B, -1), C[ob],
                            torch.zeros(B, 1, dtype=torch.float64, device=lo.device),
                            splits=splits, pre=root if dpre is None else dpre, recompute=dpre is not None and t > 1,
                            mode="refine", refine_from=refine_from, pre_alpha=pre_alpha, iterations=iterations,
                            deadline=deadline, opt_dtype=opt_dtype)
        low = res.lower[:, 0]
        # the minimizer of each domain's linear bound, through the network
        x = torch.where(res.lam_in[:, 0] > 0, lo1, hi1)
        seen = (sub.forward(x) * C[ob, 0]).sum(1)
        scores = babsr_scores(res.lam_hidden, res.pre, splits, torch.zeros(B, dtype=torch.long, device=lo.device))
        stats["tighten_domains"] = stats.get("tighten_domains", 0) + B
        # the bounded domains (obligation, bound, branching scores, splits, clamped bounds), and
        # the value each one's bound minimizer attains
        return dict(ob=ob, low=low, score=scores, split=splits, pre=res.pre), seen

    def take(D, rows):   # the domains ``rows`` (a mask or indices, in that order) of D
        return dict(ob=D["ob"][rows], low=D["low"][rows], score=D["score"][rows],
                    split=[s[rows] for s in D["split"]], pre=[(a[rows], b[rows]) for a, b in D["pre"]])

    def join(D, E):
        return dict(ob=torch.cat([D["ob"], E["ob"]]), low=torch.cat([D["low"], E["low"]]),
                    score=torch.cat([D["score"], E["score"]]),
                    split=[torch.cat([a, b]) for a, b in zip(D["split"], E["split"])],
                    pre=[(torch.cat([a0, a1]), torch.cat([b0, b1])) for (a0, b0), (a1, b1) in zip(D["pre"], E["pre"])])

    ob = torch.arange(n_ob, device=lo.device)
    D, attained = bound(ob, [torch.zeros(n_ob, n, dtype=torch.int8, device=lo.device) for n in sizes], None, None)
    D = take(D, D["low"] <= PROOF_TOL)               # attained: the least value seen per obligation
    used = torch.ones(n_ob, dtype=torch.long, device=lo.device)
    frozen = torch.zeros(n_ob, dtype=torch.bool, device=lo.device)

    while D["ob"].numel() and time.monotonic() < deadline:
        cur = _bounds_per_obligation(n_ob, D["ob"], D["low"])
        frozen |= used >= max_domains
        frozen |= cur >= attained - converged * scale
        active = ~frozen & torch.isfinite(cur)
        if not bool(active.any()):
            break
        per = max(1, (batch // 2) // int(active.sum()))
        rank = torch.where(active, cur / scale, torch.full_like(cur, -float("inf")))
        chosen = torch.zeros(n_ob, dtype=torch.bool, device=lo.device)
        chosen[torch.argsort(rank, descending=True)[:max(1, (batch // 2) // per)]] = True
        chosen &= active
        # each chosen obligation's ``per`` lowest domains
        cand = torch.nonzero(chosen[D["ob"]]).flatten()
        cand = cand[torch.argsort(D["low"][cand])]
        cand = cand[torch.sort(D["ob"][cand], stable=True).indices]
        obs = D["ob"][cand]
        pick = cand[(torch.arange(obs.numel(), device=lo.device) - torch.searchsorted(obs, obs)) < per]
        top, neuron = D["score"][pick].max(1)
        leaf = torch.isinf(top)            # nothing left to split: that obligation's bound is final
        frozen[D["ob"][pick[leaf]]] = True
        pick, neuron = pick[~leaf], neuron[~leaf]
        if pick.numel() == 0:
            continue
        rest = torch.ones(D["ob"].numel(), dtype=torch.bool, device=lo.device)
        rest[pick] = False
        P, D = take(D, pick), take(D, rest)
        ch_split, refine_from = split_children(sub, P["split"], neuron)
        ch_ob = torch.cat([P["ob"], P["ob"]])
        children, seen = bound(ch_ob, ch_split, [(torch.cat([a, a]), torch.cat([b, b])) for a, b in P["pre"]],
                               refine_from)
        children["low"] = torch.maximum(children["low"], P["low"].repeat(2))   # a child lies inside its parent
        attained = attained.scatter_reduce(0, ch_ob, seen, "amin")
        used.index_add_(0, ch_ob, torch.ones_like(ch_ob))
        D = join(D, take(children, children["low"] <= PROOF_TOL))
    cur = _bounds_per_obligation(n_ob, D["ob"], D["low"]).clamp(max=0.0)   # no open domain: >= 0
    l[idx] = torch.maximum(l[idx], cur[:m])
    u[idx] = torch.minimum(u[idx], -cur[m:])
    return l, u


def _layer_in_threads(chain: Chain, lo: Tensor, hi: Tensor, pre, t: int, deadline: float, slopes,
                      stats: dict | None, workers: int, **kw) -> tuple[Tensor, Tensor]:
    """``tighten_layer`` with its neurons dealt to ``workers`` threads (neuron k to thread k mod
    workers); each thread's bounds are sound, and so is their intersection."""
    if workers <= 1:
        return tighten_layer(chain, lo, hi, pre, t, deadline, slopes, stats=stats, **kw)
    part_stats = [{} for _ in range(workers)]
    outs = run_in_threads(lambda k: tighten_layer(chain, lo, hi, pre, t, deadline, slopes, stats=part_stats[k],
                                                  part=(k, workers), **kw), workers)
    if stats is not None:
        merge_stats(stats, part_stats)
    return (torch.stack([o[0] for o in outs]).max(0).values, torch.stack([o[1] for o in outs]).min(0).values)


def tighten_bounds(chain: Chain, lo: Tensor, hi: Tensor, pre, pre_alpha: dict | None, deadline: float,
                   stats: dict | None = None, workers: int = 1, **kw):
    """Every hidden layer t >= 1 tightened by ``tighten_layer`` in turn (layer 0's interval
    bounds are exact), the time left shared by the layers' numbers of unstable neurons, and the
    later layers re-bounded by alpha-CROWN over each result. ``pre``: (l, u) (1, n_k) per hidden
    layer. ``workers``: threads that share each layer's neurons (``_layer_in_threads``).
    Returns ``(pre, slopes)`` as ``optimized_pre_bounds(keep_alpha=True)``: sound, and never
    looser than ``pre``."""
    lo1, hi1 = lo.reshape(1, -1).double(), hi.reshape(1, -1).double()
    pre = [(a.reshape(1, -1).double(), b.reshape(1, -1).double()) for a, b in pre]
    slopes = pre_alpha
    for t in range(1, len(pre)):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        count = [int(((a < 0) & (b > 0)).sum()) for a, b in pre[t:]]
        if count[0] == 0:
            continue
        share = left * count[0] / sum(count)
        l, u = _layer_in_threads(chain, lo, hi, pre, t, time.monotonic() + share, slopes, stats, workers, **kw)
        pre[t] = (l.reshape(1, -1), u.reshape(1, -1))
        if t + 1 < len(pre) and time.monotonic() < deadline:   # (past it the later layers keep theirs)
            pre, slopes = optimized_pre_bounds(chain, lo1, hi1, pre=pre, keep_alpha=True)
    return pre, slopes
