"""Exact verification by mixed-integer programming (Tjeng, Xiao & Tedrake 2019).

Big-M encoding of every unstable ReLU from CROWN / alpha-CROWN pre-activation bounds (stable
ReLUs fixed: no binary), solved by HiGHS (``highspy``) with a time limit per margin row.

* ``mode="decision"``: stop a row as soon as the branch-and-bound dual bound is positive
  (proved; status ``dual_feasible``) or an incumbent is negative (a candidate counterexample);
  rows are visited in order and a checked counterexample ends the sample.
* ``mode="full"``: the exact minimum of every row (status ``optimal``).

The reported lower bound is the solver's dual bound lowered by ``ZERO_TOL * (1 + |bound|)``
(its feasibility tolerances are 1e-6 / 1e-7). A candidate counterexample is clipped into the
input box and re-run through the network in float64: margin < -1e-6 -> ``falsified``;
within 1e-6 of zero, or positive although the solver called it negative -> ``unknown``.
Anything that ends at the time limit is ``unknown``, unless the branch-and-bound dual bound is
already positive (the bound a decision-mode stop relies on): then the row is proved (``dual_feasible``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from certify.solvers.encode import encode, objective_rows
from certify.solvers.highs import dual_bound, make_highs, run_until_sign_known, set_objective, status_name
from certify.convex.problem import is_box_set, prepare
from certify.convex.result import ZERO_TOL, ConvexResult
from certify.errors import CertifyError

NOT_POLYHEDRAL = {
    "2": "an L2 ball is a second-order-cone constraint, which HiGHS's mixed-integer solver does not take (certify "
         "L2 balls with lp --norm 2, a cone program, or bounds --norm 2)",
    "1": "certify L1 balls with bounds --norm 1",
}


def _solve_row(enc, cost, c0, decision: bool, time_limit, options):
    """(status, dual bound, incumbent columns or None) of one row, on a fresh HiGHS instance
    (an interrupted MIP leaves state behind that would end the next row's solve at once)."""
    h = make_highs(enc, time_limit, options)
    set_objective(h, cost, c0)
    if decision:
        run_until_sign_known(h, ZERO_TOL)
    else:
        h.run()
    st = status_name(h)
    info = h.getInfo()
    if not enc.integer.any():
        # No unstable ReLU: the model is a plain LP (HiGHS leaves mip_dual_bound unset), exact,
        # and its certified bound is rebuilt from the row duals as for ``lp``.
        dual = dual_bound(cost, c0, enc, np.asarray(h.getSolution().row_dual)) if st == "optimal" else -np.inf
    else:
        dual = float(info.mip_dual_bound)
    sol = None
    if info.primal_solution_status == 2:                   # feasible incumbent
        sol = np.asarray(h.getSolution().col_value, dtype=np.float64)
    return st, dual, sol


def milp(net_or_module, x: torch.Tensor, eps=None, norm="inf", C=None, d=None, domain=None,
         input_set=None, bounds_method: str = "crown", mode: str = "decision", time_limit: float = 60.0,
         options: dict | None = None, pre_bounds: dict | None = None) -> ConvexResult:
    """Exact lower bounds (``full``) or a decision (``decision``) for ``C @ net(x') + d > 0``.

    Arguments as ``certify.convex.lp``; ``time_limit`` in seconds per margin row. Returns a
    ``ConvexResult`` (method 'milp') with ``.lower`` (B, rows), ``.upper`` (B, rows: the margin
    of the best checked point, ``inf`` if none) and ``.counterexample`` per sample.
    """
    if mode not in ("decision", "full"):
        raise CertifyError(f"milp mode must be 'decision' or 'full', got {mode!r}")
    prob = prepare(net_or_module, x, eps, norm, C, d, domain, input_set, bounds_method, pre_bounds)
    if not is_box_set(prob.input_set):
        raise CertifyError(f"milp takes L-inf balls and boxes only, not an L{prob.input_set.norm} ball: "
                           + NOT_POLYHEDRAL.get(prob.input_set.norm, ""))
    B, rows = prob.C.shape[:2]
    lower = torch.full((B, rows), -np.inf, dtype=torch.float64)
    upper = torch.full((B, rows), np.inf, dtype=torch.float64)
    status, secs, cex = [], [], []
    n0 = prob.lower0.shape[1]
    for b in range(B):
        t0 = time.perf_counter()
        enc = encode(prob.pl, prob.lower0[b], prob.upper0[b], [(lo[b], hi[b]) for lo, hi in prob.pre], binary=True)
        obj = prob.objective(b)
        costs = objective_rows(obj, enc)
        st_b, found = ["not_run"] * rows, None
        for r in range(rows):
            st, dual, sol = _solve_row(enc, costs[r], obj.const[r], mode == "decision", time_limit, options)
            if np.isfinite(dual):
                lower[b, r] = dual - ZERO_TOL * (1 + abs(dual))
            if st == "interrupted_by_user":
                st = "dual_feasible" if dual > ZERO_TOL else "stopped"
            elif st == "time_limit_reached" and dual > ZERO_TOL:
                st = "dual_feasible"      # the same branch-and-bound dual bound a decision stop relies on
            if sol is not None:
                xc = torch.from_numpy(np.clip(sol[:n0], prob.lower0[b], prob.upper0[b]))
                m = float(prob.margins(b, xc.reshape((1,) + tuple(prob.net.input_shape)))[0, r])
                upper[b, r] = m
                if m < -ZERO_TOL:
                    found = xc.reshape(prob.net.input_shape)   # the checked float64 point itself
                    st = "counterexample" if st == "stopped" else st
                elif st == "stopped" or (st == "optimal" and dual <= ZERO_TOL):
                    st = "near_zero" if abs(m) <= ZERO_TOL else "bad_counterexample"
            elif st == "stopped":
                st = "no_solution"
            if st == "optimal" and dual <= ZERO_TOL and found is None and sol is None:
                st = "no_solution"
            st_b[r] = st
            if found is not None and mode == "decision":
                break
        status.append(st_b)
        cex.append(found)
        secs.append(time.perf_counter() - t0)
    return ConvexResult("milp", "highspy-mip", lower, upper, status, secs, cex)
