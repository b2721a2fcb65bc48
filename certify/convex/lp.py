"""LP certificate: the triangle relaxation of every unstable ReLU, solved with HiGHS.

The relaxation of one sample is built once as a sparse matrix and passed to ``highspy`` once;
each margin row swaps the objective and re-solves from the previous basis (warm start).
``scipy.optimize.linprog(method="highs")`` is the fallback and test reference
(``solver="scipy"``). The certified bound of a row is rebuilt from the row duals by weak
duality (``highs.dual_bound``), never read from the solver's objective; a solve that does not
end ``optimal`` gives ``-inf`` and status ``unknown``-making.

For an L2 ball the input constraint ||x - x0|| <= eps makes it a second-order cone program,
solved by cvxpy (``lp_l2``: Clarabel by default) with the bound again rebuilt from duals.

``refine="all"`` (LP-ALL, Salman et al. 2019) first tightens the pre-activation bounds of
every unstable ReLU layer by layer: two LPs (min and max) per unstable neuron over the
relaxation of the layers before it, each bound again rebuilt from duals (for an L2 ball these
refinement LPs use the ball's bounding box: looser, still sound).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import linprog

from certify.solvers.encode import Encoding, encode, objective_rows
from certify.solvers.highs import dual_bound, make_highs, set_objective, status_name
from certify.convex.problem import Problem, is_box_set, prepare
from certify.convex.result import ConvexResult
from certify.errors import CertifyError


def solve_rows(enc: Encoding, costs: np.ndarray, consts: np.ndarray, solver: str = "highs",
               time_limit: float | None = None, options: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """Minimize each row ``costs[r] @ z + consts[r]`` over ``enc``: certified lower bounds (rows,)
    (``-inf`` unless optimal) and status strings."""
    lows, stats = np.full(len(costs), -np.inf), []
    if solver == "highs":
        h = make_highs(enc, time_limit, options)
        for r in range(len(costs)):
            set_objective(h, costs[r], consts[r])
            h.run()
            st = status_name(h)
            if st == "optimal":
                lows[r] = dual_bound(costs[r], consts[r], enc, np.asarray(h.getSolution().row_dual))
            stats.append(st)
        return lows, stats
    if solver != "scipy":
        raise CertifyError(f"LP solver must be 'highs' or 'scipy', got {solver!r}")
    A = enc.A
    eq = np.isfinite(enc.row_lo) & np.isfinite(enc.row_hi) & (enc.row_lo == enc.row_hi)
    up = np.isfinite(enc.row_hi) & ~eq
    lo = np.isfinite(enc.row_lo) & ~eq
    import scipy.sparse as sp
    A_ub = sp.vstack([A[np.flatnonzero(up)], -A[np.flatnonzero(lo)]]).tocsr()
    b_ub = np.concatenate([enc.row_hi[up], -enc.row_lo[lo]])
    opts = {"time_limit": time_limit} if time_limit else {}
    opts.update(options or {})
    for r in range(len(costs)):
        res = linprog(costs[r], A_ub=A_ub if A_ub.shape[0] else None, b_ub=b_ub if A_ub.shape[0] else None,
                      A_eq=A[np.flatnonzero(eq)] if eq.any() else None, b_eq=enc.row_lo[eq] if eq.any() else None,
                      bounds=np.stack([enc.col_lo, enc.col_hi], 1), method="highs", options=opts)
        st = "optimal" if res.status == 0 else f"scipy_status_{res.status}"
        if st == "optimal":
            y = np.zeros(A.shape[0])
            mu = res.ineqlin.marginals if A_ub.shape[0] else np.zeros(0)
            y[np.flatnonzero(up)] = mu[: up.sum()]
            y[np.flatnonzero(lo)] = -mu[up.sum():]
            if eq.any():
                y[np.flatnonzero(eq)] = res.eqlin.marginals
            lows[r] = dual_bound(costs[r], consts[r], enc, y)
        stats.append(st)
    return lows, stats


def refine_all(prob: Problem, b: int, solver: str = "highs", time_limit: float | None = None) -> list[str]:
    """LP-ALL: tighten ``prob.pre`` of sample ``b`` in place, layer by layer. Returns the statuses
    of solves that did not end optimal (their bounds are left as they were)."""
    bad = []
    for k in range(2, len(prob.pl.layers) + 1):         # layer 1's bounds are exact from the box
        l, u = prob.pre[k - 1][0][b], prob.pre[k - 1][1][b]
        iu = np.flatnonzero((l < 0) & (u > 0))
        if len(iu) == 0:
            continue
        enc = encode(prob.pl, prob.lower0[b], prob.upper0[b], [(lo[b], hi[b]) for lo, hi in prob.pre], upto=k - 1)
        expr = prob.pl.layers[k - 1].pre
        M = objective_rows(expr, enc)[iu]
        c = expr.const[iu]
        lows, s1 = solve_rows(enc, np.vstack([M, -M]), np.concatenate([c, -c]), solver, time_limit)
        n = len(iu)
        newl, newu = lows[:n], -lows[n:]
        prob.pre[k - 1][0][b, iu] = np.maximum(l[iu], newl)
        prob.pre[k - 1][1][b, iu] = np.minimum(u[iu], newu)
        bad += [s for s in s1 if s != "optimal"]
    return bad


def sample_rows(prob: Problem, b: int, solver: str = "highs", time_limit: float | None = None,
                options: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """The LP's certified lower bounds (rows,) and statuses of every margin row of sample ``b``
    (over ``prob.pre`` as it is now; an L2 ball's rows as a cone program)."""
    enc = encode(prob.pl, prob.lower0[b], prob.upper0[b], [(lo[b], hi[b]) for lo, hi in prob.pre])
    obj = prob.objective(b)
    if is_box_set(prob.input_set):
        return solve_rows(enc, objective_rows(obj, enc), obj.const, solver, time_limit, options)
    from certify.convex.lp_l2 import solve_rows_l2
    cone = "CLARABEL" if solver in ("highs", "scipy") else solver.upper()
    x0 = prob.input_set.center[b].detach().to(torch.float64).reshape(-1).numpy()
    eps = float(torch.as_tensor(prob.input_set.eps, dtype=torch.float64).reshape(-1).expand(prob.batch)[b])
    return solve_rows_l2(enc, objective_rows(obj, enc), obj.const, x0, eps, cone, time_limit)


def lp(net_or_module, x: torch.Tensor, eps=None, norm="inf", C=None, d=None, domain=None,
       input_set=None, bounds_method: str = "crown", refine: str | None = None, solver: str = "highs",
       time_limit: float | None = None, options: dict | None = None, pre_bounds: dict | None = None) -> ConvexResult:
    """Lower bounds of ``C @ net(x') + d`` over the perturbation set of each sample by the triangle LP.

    Args: ``x`` (B, *input_shape); ``eps``/``norm``/``domain`` or ``input_set`` (L-inf ball, box, or
    L2 ball: then a second-order cone program, see module doc);
    ``C`` (B, rows, K) (default identity), ``d`` (B, rows); ``bounds_method`` 'crown' | 'alpha' for the
    pre-activation bounds (or ``pre_bounds`` dict node -> (lo, hi)); ``refine`` None | 'all' (LP-ALL);
    ``solver`` 'highs' | 'scipy' (L2 balls: 'highs' means Clarabel; or 'clarabel' | 'scs' | 'ecos');
    ``options`` extra HiGHS options (e.g. an iteration cap).
    Returns a ``ConvexResult`` (method 'lp' or 'lp-all'), ``.lower`` (B, rows) certified.
    """
    if refine not in (None, "all"):
        raise CertifyError(f"refine must be None or 'all', got {refine!r}")
    prob = prepare(net_or_module, x, eps, norm, C, d, domain, input_set, bounds_method, pre_bounds)
    B, rows = prob.C.shape[:2]
    l2 = not is_box_set(prob.input_set)
    if l2 and prob.input_set.norm != "2":
        raise CertifyError(f"lp takes L-inf balls, boxes and L2 balls, not an L{prob.input_set.norm} ball "
                           "(certify L1 balls with bounds --norm 1)")
    if l2:
        cone = "CLARABEL" if solver in ("highs", "scipy") else solver.upper()
    elif solver not in ("highs", "scipy"):
        raise CertifyError(f"LP solver must be 'highs' or 'scipy', got {solver!r}")
    lower = torch.full((B, rows), -np.inf, dtype=torch.float64)
    status, secs = [], []
    for b in range(B):
        t0 = time.perf_counter()
        if refine == "all":      # a refinement LP that fails leaves its bound as it was: still sound
            refine_all(prob, b, "highs" if l2 else solver, time_limit)
        lows, st = sample_rows(prob, b, solver, time_limit, options)
        lower[b] = torch.from_numpy(lows)
        status.append(st)
        secs.append(time.perf_counter() - t0)
    name = f"cvxpy-{cone}" if l2 else ("highspy" if solver == "highs" else "scipy-linprog")
    return ConvexResult("lp-all" if refine == "all" else "lp", name,
                        lower, torch.full((B, rows), np.inf, dtype=torch.float64), status, secs)
