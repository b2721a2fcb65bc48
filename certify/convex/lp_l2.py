"""The triangle LP over an L2 ball: the same relaxation as ``lp`` with the input constraint
||x - x0||_2 <= eps (intersected with the domain box), a second-order cone program solved by
cvxpy (Clarabel by default; SCS, or ECOS where installed).

Certified bound (weak duality, valid for any multipliers, so solver tolerances cannot make it
unsound): for row multipliers y (y_i > 0 uses row_lo_i, y_i < 0 row_hi_i), r = c - A^T y, and
any split of the input part r_x = q + p,
    min c^T z + c0 >= c0 + sum_i (y_i row bound) + sum_{j not input} min(r_j lo_j, r_j hi_j)
                      + sum_{j input} min(q_j lo_j, q_j hi_j) + p^T x0 - eps ||p||_2,
because the input lies in both its box (for the q part) and the ball (for the p part). y comes
from the cone solver's row duals; three splits are evaluated (q from the cone solver's input-box
duals, q = 0: ball only, q = r_x: box only) and the largest value is kept. The value is computed
in float64 and lowered by a bound on its rounding error. A solve without dual values gives
``-inf`` (status: the solver's).
"""
from __future__ import annotations

import warnings

import numpy as np

from certify.solvers.encode import Encoding
from certify.solvers.highs import EPS64, row_terms
from certify.errors import CertifyError

SOLVERS = ("CLARABEL", "SCS", "ECOS")


def l2_dual_bound(c: np.ndarray, c0: float, enc: Encoding, y: np.ndarray, q: np.ndarray, x0: np.ndarray,
                  eps: float) -> float:
    """The weak-duality lower bound of the module doc for multipliers ``y`` (rows) and input split ``q``."""
    n0 = len(x0)
    y, rows, r = row_terms(c, enc, y)
    q = np.asarray(q, np.float64)
    rr = r.copy()
    rr[:n0] = q
    cols = np.minimum(rr * enc.col_lo, rr * enc.col_hi)
    p = r[:n0] - q
    pn = float(np.linalg.norm(p))
    ball = float(p @ x0) - eps * pn
    total = c0 + rows.sum() + cols.sum() + ball
    mag = abs(c0) + np.abs(rows).sum() + np.abs(cols).sum() + (np.abs(enc.A.T) @ np.abs(y) + np.abs(c)) @ \
        np.maximum(np.abs(enc.col_lo), np.abs(enc.col_hi)) + float(np.abs(p) @ np.abs(x0)) + eps * pn + \
        float(np.abs(q) @ np.maximum(np.abs(enc.col_lo[:n0]), np.abs(enc.col_hi[:n0])))
    n = enc.A.shape[0] + enc.A.shape[1] + 2
    return float(total - 4 * n * EPS64 * mag - 1e-12)


def solve_rows_l2(enc: Encoding, costs: np.ndarray, consts: np.ndarray, x0: np.ndarray, eps: float,
                  solver: str = "CLARABEL", time_limit: float | None = None) -> tuple[np.ndarray, list[str]]:
    """Minimize each row ``costs[r] @ z + consts[r]`` over ``enc`` intersected with the ball
    ||z[:n0] - x0|| <= eps: certified lower bounds (rows,) and statuses ('optimal', or
    'dual_feasible' for an inaccurate solve whose duals still give the valid bound above)."""
    import cvxpy as cp
    solver = solver.upper()
    if solver not in SOLVERS:
        raise CertifyError(f"L2 LP solver must be one of {SOLVERS}, got {solver!r}")
    if solver not in cp.installed_solvers():
        raise CertifyError(f"cvxpy solver {solver} is not installed (installed: {cp.installed_solvers()})")
    n0, N = len(x0), enc.A.shape[1]
    z = cp.Variable(N)
    cost = cp.Parameter(N)
    il, ih = np.flatnonzero(np.isfinite(enc.row_lo)), np.flatnonzero(np.isfinite(enc.row_hi))
    A = enc.A.tocsr()
    cons = []
    lo_c = A[il] @ z >= enc.row_lo[il] if len(il) else None
    hi_c = A[ih] @ z <= enc.row_hi[ih] if len(ih) else None
    cl_c, ch_c = z >= enc.col_lo, z <= enc.col_hi
    ball = cp.norm(z[:n0] - x0, 2) <= eps
    cons = [c for c in (lo_c, hi_c) if c is not None] + [cl_c, ch_c, ball]
    prob = cp.Problem(cp.Minimize(cost @ z), cons)
    kw = {}
    if time_limit:
        kw = {"time_limit": float(time_limit)} if solver == "CLARABEL" else \
            ({"time_limit_secs": float(time_limit)} if solver == "SCS" else {})
    lows, stats = np.full(len(costs), -np.inf), []
    for r in range(len(costs)):
        cost.value = np.asarray(costs[r], np.float64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=solver, **kw)
        except cp.error.SolverError as e:
            stats.append(f"solver_error: {str(e).splitlines()[0][:80]}")
            continue
        if any(c.dual_value is None for c in cons[:-1]):
            stats.append(f"no_dual ({prob.status})")
            continue
        y = np.zeros(A.shape[0])
        if lo_c is not None:
            y[il] += np.maximum(np.asarray(lo_c.dual_value).ravel(), 0.0)
        if hi_c is not None:
            y[ih] -= np.maximum(np.asarray(hi_c.dual_value).ravel(), 0.0)
        q = (np.asarray(cl_c.dual_value).ravel() - np.asarray(ch_c.dual_value).ravel())[:n0]
        rx = (costs[r] - A.T @ y)[:n0]
        val = max(l2_dual_bound(costs[r], float(consts[r]), enc, y, qq, x0, eps) for qq in (q, np.zeros(n0), rx))
        lows[r] = val
        stats.append("optimal" if prob.status == "optimal" else "dual_feasible")
    return lows, stats
