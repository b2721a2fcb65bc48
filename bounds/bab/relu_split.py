"""Activation-split branch and bound (beta-CROWN style) with an exact LP at the leaves.

A domain is the input box plus a sign for some ReLUs (+1 active, -1 inactive). Domains with the
lowest bound are branched first, many at once: each picks the unstable neuron with the largest
score max(-lambda, 0) * (-l u / (u - l)) (BaBSR-like: the upper chord's intercept that the split
removes, where the neuron's coefficient lambda in the bound uses the chord; ``branching``), and its two children are bounded in one
batched call with alpha-CROWN + beta multipliers for the splits (``bound_domains``), warm-started
from the parent's optimized alpha/beta (any start is sound: alpha is clamped to [0, 1], beta to
>= 0). A domain is done when some margin row has a positive lower bound. A domain without unstable neurons is an
affine piece: an LP (HiGHS) over the box and the split constraints decides it; its optimum is a
counterexample candidate. Candidates (the minimizers of each child's linear bound, LP optima)
are confirmed exactly by the caller's ``try_points``.

Memory (``memory`` bytes, default ``bounds.memory.search_budget``): half for one bound call,
whose domains are as many as fit at ``domain_bytes``'s call size (at most ``batch``), half for
the open domains at its stored size; past that the open domains' warm starts are dropped
(children start from CROWN's slopes), and past it without them the search ends ``unknown``.
"""
from __future__ import annotations

import time

import torch

from bounds.bab.branching import babsr_scores, split_children
from bounds.bab.chain import Chain
from bounds.bab.chain_bounds import (PROOF_TOL, bound_domains, domain_bytes, optimized_pre_bounds,
                                     pre_activation_bounds)
from bounds.bab.graph_leaf import minmax_lp
from bounds.memory import domains_within, search_budget


def leaf_lp(chain: Chain, lo, hi, C, d, pre, splits):
    """Exact check of an affine piece: min t s.t. (C y + d)_r <= t, x in box, split signs.

    Returns ("unsat", None), ("candidate", x) or ("unknown", None) (solver trouble)."""
    n = chain.n_in
    M, c = torch.eye(n, dtype=torch.float64, device=lo.device), torch.zeros(n, dtype=torch.float64, device=lo.device)
    A_ub, b_ub = [], []
    for k, (w, b) in enumerate(zip(chain.weights, chain.biases)):
        M, c = w @ M, w @ c + b
        if k == len(chain.weights) - 1:
            break
        l, u = pre[k]
        s = splits[k]
        act = s > 0
        ina = s < 0
        if act.any():
            A_ub.append(-M[act]); b_ub.append(c[act])
        if ina.any():
            A_ub.append(M[ina]); b_ub.append(-c[ina])
        on = l >= 0
        M, c = M * on.unsqueeze(1).to(M.dtype), c * on.to(c.dtype)
    return minmax_lp(A_ub, b_ub, C @ M, C @ c + d, lo, hi)


def relu_split_bab(chain: Chain, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                   deadline: float, try_points, stats: dict, batch: int = 256, iterations: int = 20,
                   root_iterations: int = 50, recompute: bool = True, max_domains: int = 200_000,
                   warm_start: bool = True, root_pre=None, pre_iterations: int = 20, mode: str = "refine",
                   pre_alpha: dict | None = None, stop=None, state: dict | None = None,
                   opt_dtype: torch.dtype = torch.float32, memory: int | None = None):
    """Prove max_r (C z + d)_r > 0 over the box [lo, hi] (n_in,) by splitting ReLUs.

    ``warm_start``: children start alpha and beta from their parent's optimized values (kept per
    open domain in float32; any value is sound, see ``bound_domains``).
    ``root_pre``: the box's pre-activation bounds when the caller has them (e.g. shared by the
    obligations of one region); otherwise alpha-CROWN tightens CROWN's layer by layer
    (``optimized_pre_bounds``, ``pre_iterations`` Adam steps per layer; 0: plain CROWN). Every
    domain is bounded over them (clamped by its splits). ``pre_alpha``: the slopes that produced
    them (``keep_alpha``), reused when a domain's later layers are refined after a split.
    ``stop``: a callable polled with the deadline; when it returns True the search ends as at a
    timeout (e.g. a MILP running beside it has decided the obligation).
    ``state``: a dict that keeps the open domains when the search stops at its deadline; called
    again with the same dict (and the same bounds), the search goes on from there instead of
    starting over. ``opt_dtype``: the dtype of the alpha/beta steps (``bound_domains``).
    ``memory``: bytes the search may hold (module docstring); ``batch`` is the most domains per
    bound call. ``stats["split_batch"]``: the domains per call it ran with.

    Returns ("unsat", None), ("sat", ce), ("timeout", None) or ("unknown", None)."""
    lo1, hi1 = lo.reshape(1, -1).double(), hi.reshape(1, -1).double()
    C, d = C.double(), d.double()
    t = time.monotonic()
    r_rows = C.shape[0]
    memory = search_budget(lo.device) if memory is None else memory
    batch = domains_within(domain_bytes(chain, r_rows, opt_dtype)[0], memory // 2, batch)
    stats["split_batch"] = batch

    def _store(res, rows):
        """alpha, beta of the domains ``rows`` of ``res`` as float32 lists (beta zero-filled)."""
        if not warm_start or res.alpha is None:
            return None
        al = [a[rows].float() for a in res.alpha]
        be = [(b[rows].float() if b is not None else torch.zeros(int(rows.sum()) if rows.dtype == torch.bool
                                                                   else rows.numel(), r_rows, n, dtype=torch.float32,
                                                                   device=rows.device))
              for b, n in zip(res.beta or [None] * len(al), chain.hidden_sizes)]
        return al, be

    last_call = 0.0   # seconds the last batch took: a batch that cannot end by the deadline is not begun
    if state:   # go on from where the last call stopped
        D_split, D_lower, D_score, D_pre, D_ab, root_pre, pre_alpha, last_call = (
            state.pop(k) for k in ("split", "lower", "score", "pre", "ab", "root_pre", "pre_alpha", "last_call"))
    else:
        if root_pre is None:
            root_pre, pre_alpha = optimized_pre_bounds(chain, lo1, hi1, iterations=pre_iterations, keep_alpha=True)
        splits = [torch.zeros(1, n, dtype=torch.int8, device=lo1.device) for n in chain.hidden_sizes]
        res = bound_domains(chain, lo1, hi1, C.unsqueeze(0), d.unsqueeze(0), splits=splits, pre=root_pre,
                            recompute=False, iterations=root_iterations, opt_dtype=opt_dtype)
        stats["bound_calls"] += 1
        stats["domains"] += 1
        stats["time_bound"] += time.monotonic() - t
        best, row = res.lower.max(1)
        stats.setdefault("root_lower", float(best[0]))
        if bool(best[0] > PROOF_TOL):
            return "unsat", None
        # open domains
        D_split = splits
        D_lower = best
        D_score = babsr_scores(res.lam_hidden, res.pre, splits, row)
        D_pre = [(l.clone(), u.clone()) for l, u in res.pre] if recompute else None
        D_ab = _store(res, torch.ones(1, dtype=torch.bool, device=lo1.device))
    warm_start = D_ab is not None   # (dropped for lack of memory, or never asked for)
    kept_bytes = domain_bytes(chain, r_rows, opt_dtype, warm_start)[1]
    while D_lower.shape[0]:
        if time.monotonic() + last_call > deadline or (stop is not None and stop()):
            stats["open_domains"] = int(D_lower.shape[0])
            stats["worst_open_lower"] = float(D_lower.min())
            if state is not None:
                state.update(split=D_split, lower=D_lower, score=D_score, pre=D_pre, ab=D_ab, root_pre=root_pre,
                             pre_alpha=pre_alpha, last_call=last_call)
            return "timeout", None
        if D_lower.shape[0] > max_domains:
            return "unknown", None
        if D_lower.shape[0] * kept_bytes > memory // 2:   # the open domains fill their half
            if not warm_start:
                stats["open_domains"] = int(D_lower.shape[0])
                stats["worst_open_lower"] = float(D_lower.min())
                return "unknown", None
            D_ab, warm_start = None, False
            kept_bytes = domain_bytes(chain, r_rows, opt_dtype, False)[1]
        k = min(batch // 2, D_lower.shape[0])
        pick = torch.topk(-D_lower, k).indices
        keep = torch.ones(D_lower.shape[0], dtype=torch.bool, device=D_lower.device)
        keep[pick] = False
        P_split = [s[pick] for s in D_split]
        P_score, P_lower = D_score[pick], D_lower[pick]
        P_pre = [(l[pick], u[pick]) for l, u in D_pre] if recompute else None
        D_split = [s[keep] for s in D_split]
        D_lower, D_score = D_lower[keep], D_score[keep]
        P_ab = None
        if D_ab is not None:
            P_ab = ([a[pick] for a in D_ab[0]], [b[pick] for b in D_ab[1]])
            D_ab = ([a[keep] for a in D_ab[0]], [b[keep] for b in D_ab[1]])
        if recompute:
            D_pre = [(l[keep], u[keep]) for l, u in D_pre]
        top, neuron = P_score.max(1)
        leaf = torch.isinf(top)
        for i in torch.nonzero(leaf).flatten().tolist():   # affine pieces: decide exactly
            if recompute:
                pre_i = [(l[i], u[i]) for l, u in P_pre]
            else:   # the root's bounds clamped by this domain's splits
                pre_i = [(l[0], u[0]) for l, u in pre_activation_bounds(chain, lo1, hi1, [s[i:i + 1] for s in P_split],
                                                                        root_pre, recompute=False)]
            t = time.monotonic()
            verdict, x = leaf_lp(chain, lo1[0], hi1[0], C, d, pre_i, [s[i] for s in P_split])
            stats["lp_calls"] = stats.get("lp_calls", 0) + 1
            stats["time_lp"] = stats.get("time_lp", 0.0) + time.monotonic() - t
            if verdict == "candidate":
                ce = try_points(x.reshape(1, -1))
                if ce is not None:
                    return "sat", ce
                return "unknown", None
            if verdict == "unknown":
                return "unknown", None
        br = ~leaf
        if not bool(br.any()):
            continue
        P_split = [s[br] for s in P_split]
        neuron, P_lower = neuron[br], P_lower[br]
        if P_ab is not None:
            P_ab = ([a[br] for a in P_ab[0]], [b[br] for b in P_ab[1]])
        if recompute:
            P_pre = [(l[br], u[br]) for l, u in P_pre]
        m = neuron.shape[0]
        ch_split, refine_from = split_children(chain, P_split, neuron)   # m active, then m inactive
        ch_pre = [(torch.cat([l, l]), torch.cat([u, u])) for l, u in P_pre] if recompute else root_pre
        n2 = 2 * m
        t = time.monotonic()
        res = bound_domains(chain, lo1.expand(n2, -1), hi1.expand(n2, -1), C.expand(n2, -1, -1),
                            d.expand(n2, -1), splits=ch_split, pre=ch_pre, recompute=recompute,
                            iterations=iterations, mode=mode, refine_from=refine_from,
                            pre_alpha=pre_alpha, deadline=deadline, opt_dtype=opt_dtype, memory=memory // 2,
                            alpha_init=None if P_ab is None else [torch.cat([a, a]) for a in P_ab[0]],
                            beta_init=None if P_ab is None else [torch.cat([b, b]) for b in P_ab[1]])
        stats["bound_calls"] += 1
        stats["domains"] += n2
        last_call = time.monotonic() - t
        stats["time_bound"] += last_call
        best, row = res.lower.max(1)
        # a child lies inside its parent, so the parent's bound holds for it too (the bounds of
        # the open domains never go down as they are split)
        best = torch.maximum(best, torch.cat([P_lower, P_lower]))
        open_ = ~(best > PROOF_TOL)
        if not bool(open_.any()):
            continue
        # candidates: minimizers of each open child's linear bound over the box
        lam = res.lam_in[torch.arange(n2, device=row.device), row][open_]
        xs = torch.where(lam > 0, lo1.expand_as(lam), hi1.expand_as(lam))
        order = torch.argsort(best[open_])[:16]
        t = time.monotonic()
        ce = try_points(xs[order])
        stats["time_falsify"] += time.monotonic() - t
        if ce is not None:
            return "sat", ce
        sc = babsr_scores(res.lam_hidden, res.pre, ch_split, row)[open_]
        D_split = [torch.cat([s, c[open_]]) for s, c in zip(D_split, ch_split)]
        D_lower = torch.cat([D_lower, best[open_]])
        D_score = torch.cat([D_score, sc])
        new_ab = _store(res, open_)
        if D_ab is not None and new_ab is not None:
            D_ab = ([torch.cat([a, b]) for a, b in zip(D_ab[0], new_ab[0])],
                    [torch.cat([a, b]) for a, b in zip(D_ab[1], new_ab[1])])
        elif new_ab is None:
            D_ab = None
        if recompute:
            D_pre = [(torch.cat([l0, l1[open_]]), torch.cat([u0, u1[open_]])) for (l0, u0), (l1, u1) in zip(D_pre, res.pre)]
    return "unsat", None
