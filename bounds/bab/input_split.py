"""Input-split branch and bound (low-dimensional inputs, e.g. ACAS Xu's 5).

Open boxes (bounded, not yet proved) are expanded in batches. Branching is *smart*: for each
open box the ``candidates`` dimensions with the largest |CROWN coefficient| x width are each
split in two, all those children are bounded in one batched call (CROWN, plus a few alpha
steps), and the dimension whose weaker child has the best bound is kept; its children that are
proved are dropped and the others become open boxes. A box is proved when some row of its
margins has a positive lower bound. Centres of open boxes are tried as counterexamples. Open
boxes are kept on a stack (depth first), so memory stays bounded.
"""
from __future__ import annotations

import time

import torch

from bounds.bab.chain import Chain
from bounds.bab.relax import bound_domains


def input_split_bab(chain: Chain, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                    deadline: float, try_points, stats: dict, batch: int = 128,
                    iterations: int = 3, min_width: float = 1e-9, mode: str = "hybrid",
                    candidates: int = 5):
    """Prove max_r (C z + d)_r > 0 on the box [lo, hi] (n_in,), C (r, n_out), d (r,).

    ``try_points(xs (N, n_in)) -> counterexample or None`` is called on box centres.
    Returns ("unsat", None), ("sat", ce), ("timeout", None) or ("unknown", None).
    """
    Cb, db = C.double().unsqueeze(0), d.double().unsqueeze(0)
    n_in = lo.numel()
    k_cand = max(1, min(candidates, n_in))

    def bound(l, h):
        n = l.shape[0]
        t = time.monotonic()
        res = bound_domains(chain, l, h, Cb.expand(n, -1, -1), db.expand(n, -1), iterations=iterations, mode=mode)
        stats["bound_calls"] += 1
        stats["domains"] += n
        stats["time_bound"] += time.monotonic() - t
        return res

    l0, h0 = lo.reshape(1, -1).double(), hi.reshape(1, -1).double()
    res = bound(l0, h0)
    if bool(res.lower.max(1).values[0] > 0):
        return "unsat", None
    # stack of open boxes with their split scores
    stack = [(l0, h0, _scores(res, l0, h0, min_width))]
    while stack:
        if time.monotonic() > deadline:
            return "timeout", None
        l, h, sc = (torch.cat(t) for t in zip(*stack))
        if l.shape[0] > batch:
            stack = [(l[:-batch], h[:-batch], sc[:-batch])]
            l, h, sc = l[-batch:], h[-batch:], sc[-batch:]
        else:
            stack = []
        N = l.shape[0]
        top = sc.topk(k_cand, dim=1)
        if bool((top.values[:, 0] < 0).any()):
            return "unknown", None     # a box too thin to split and still open
        dims = top.indices                                   # (N, k)
        valid = top.values >= 0
        idx = torch.arange(N).unsqueeze(1).expand(N, k_cand)
        mid = ((l + h) / 2)[idx, dims]                       # (N, k)
        Lc = l.unsqueeze(1).expand(N, k_cand, n_in).clone()
        Hc = h.unsqueeze(1).expand(N, k_cand, n_in).clone()
        H_left, L_right = Hc.clone(), Lc.clone()
        i0, i1 = idx.reshape(-1), torch.arange(k_cand).repeat(N)
        H_left[i0, i1, dims.reshape(-1)] = mid.reshape(-1)
        L_right[i0, i1, dims.reshape(-1)] = mid.reshape(-1)
        cl = torch.cat([Lc.reshape(-1, n_in), L_right.reshape(-1, n_in)])
        ch = torch.cat([H_left.reshape(-1, n_in), Hc.reshape(-1, n_in)])
        res = bound(cl, ch)
        best = res.lower.max(1).values.reshape(2, N, k_cand)
        worse = torch.minimum(best[0], best[1]).masked_fill(~valid, -float("inf"))
        pick = worse.argmax(1)                               # (N,)
        sel = torch.cat([torch.arange(N) * k_cand + pick, N * k_cand + torch.arange(N) * k_cand + pick])
        cl, ch = cl[sel], ch[sel]
        open_ = ~(res.lower.max(1).values[sel] > 0)
        if not bool(open_.any()):
            continue
        cl, ch = cl[open_], ch[open_]
        t = time.monotonic()
        ce = try_points((cl + ch) / 2)
        stats["time_falsify"] += time.monotonic() - t
        if ce is not None:
            return "sat", ce
        sub = _Sub(res, sel[open_])
        stack.append((cl, ch, _scores(sub, cl, ch, min_width)))
    return "unsat", None


class _Sub:
    def __init__(self, res, rows):
        self.lower, self.lam_in = res.lower[rows], res.lam_in[rows]


def _scores(res, l, h, min_width):
    """|coefficient of the best row| x width per dimension; -1 where the box is too thin."""
    row = res.lower.max(1).indices
    width = h - l
    sc = res.lam_in[torch.arange(l.shape[0]), row].abs() * width + 1e-12 * width
    return torch.where(width > min_width, sc, torch.full_like(sc, -1.0))
