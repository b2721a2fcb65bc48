"""SDP certificate of Raghunathan, Steinhardt & Liang (NeurIPS 2018) for ReLU MLPs, with a bound
that is valid for any dual point (as in SDP-FO, Dathathri et al. 2020).

Variables v = [x, z_1, ..., z_L] (input and every hidden ReLU output); the margin row is
f(v) = c^T (W_out z_L + b_out) + d. Quadratic constraints g_i(v) = [1;v]^T G_i [1;v]:
  (A) z >= 0;  (B) z - (W z_prev + b) >= 0;  (C) z * (z - W z_prev - b) = 0;
  (F) s (W z_prev + b - t) - z >= 0, the triangle's upper side (s = u/(u-l), t = l for unstable
      ReLUs; z <= pre for active, z <= 0 for inactive ones): with it the SDP is at least as
      tight as the LP (its first row satisfies every LP constraint), as in Batten et al. 2021;
  (D) (v - l)(u - v) >= 0 for every entry of v, with l, u the input box and the post-ReLU
      bounds from the pre-activation bounds;  (E) eps^2 - ||x - x0||^2 >= 0 for an L2 ball.
The lifted SDP  min <F, P>  s.t. <G_i, P> (>= or =) 0, P[0,0] = 1, P PSD  is solved with cvxpy
(SCS, or Clarabel for small problems), or matrix-free by the SDP-FO-style first-order dual
solver of ``sdp_first_order`` (Lanczos + Adam, started from multipliers that reproduce the
triangle LP's bound). ``solver='auto'`` (``choose_solver``) takes SCS while the PSD matrix has
at most ``SCS_MAX_DIM`` rows (N + 1 = inputs + hidden units + 1) and the first-order solver
above: each SCS iteration eigendecomposes the whole matrix and cvxpy's constraint matrix grows
with the weights' entries, so a row of a 600-row problem already takes minutes and most of a
GB, and a 784-input MLP does not finish; the first-order solver only multiplies by the weights.
Every row's reported bound is the larger of the solver's and the triangle LP's certified bound
(``certify.convex.lp``'s own solve of the row, L2 balls as its cone program): both are sound
lower bounds, so their max is, and the SDP bound is never below the LP bound of the same
pre-activation bounds.

Certificate (weak duality, any multipliers lam (>= 0 on inequalities) and any kappa): with
H(lam) = F - sum_i lam_i G_i, every feasible v satisfies
    f(v) >= [1;v]^T H [1;v] >= kappa + min(0, lambda_min(H - kappa e0 e0^T)) * R,
    R = 1 + sum_j max(l_j^2, u_j^2)  (a bound on ||[1;v]||^2 over the box).
We compute lambda_min with a dense float64 eigensolver and lower it by a bound on its rounding
error, so the reported bound is valid whether or not the solver converged. The same dual point
is also certified in the box-scaled form of ``sdp_first_order`` (v = m + s w, R = 1 + #unfixed entries,
kappa re-tuned), which is often tighter; the larger of the two valid values is reported.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from certify.convex.lp import refine_all, sample_rows
from certify.convex.problem import prepare
from certify.convex.result import ConvexResult
from certify.convex.sdp_dual import Families, Multipliers, bound_from, families, from_lp
from certify.convex.sdp_first_order import certify_point, solve_first_order, tune_kappa
from certify.convex.result import CERTIFYING
from certify.errors import CertifyError

SCS_MAX_DIM = 400      # PSD matrix rows up to which solver='auto' takes SCS (module doc)
SOLVERS = ("auto", "SCS", "Clarabel", "first-order")


def matrix_dim(net) -> int:
    """Rows of the SDP's PSD matrix for a ReLU network: inputs + hidden ReLU units + 1."""
    from certify.solvers.linearize import linearize
    return sum(linearize(net).sizes) + 1


def choose_solver(dim: int) -> str:
    """The solver ``solver='auto'`` runs on a PSD matrix of ``dim`` rows (see the module doc)."""
    return "SCS" if dim <= SCS_MAX_DIM else "first-order"


# ------------------------------------------------------------------ cvxpy primal (SCS / Clarabel)
def solve_cvxpy(f: Families, solver: str = "SCS", max_iters: int | None = None,
                time_limit: float | None = None) -> tuple[float, str]:
    """(certified bound, status) of one margin row via cvxpy; the bound is rebuilt from the
    duals of the cvxpy constraints (``-inf`` when the solver returned none)."""
    import cvxpy as cp
    N = f.N
    P = cp.Variable((N + 1, N + 1), symmetric=True)
    cons = {"psd": P >> 0, "one": P[0, 0] == 1}
    A, B, Cc, Fc = [], [], [], []
    for k in range(1, len(f.sizes)):
        zi, zp = f.blk(k), f.blk(k - 1)
        W, b = f.Ws[k - 1], f.bs[k - 1]
        z = P[0, zi]
        A.append(z >= 0)
        B.append(z - W @ P[0, zp] - b >= 0)
        sl, t = f.tri[k - 1]
        Fc.append(cp.multiply(sl, W @ P[0, zp] + b - t) - z >= 0)
        Pzz = P[zi[0]: zi[-1] + 1, zi[0]: zi[-1] + 1]
        Pzp = P[zi[0]: zi[-1] + 1, zp[0]: zp[-1] + 1]
        Cc.append(cp.diag(Pzz) - cp.sum(cp.multiply(W.toarray(), Pzp), axis=1) - cp.multiply(b, z) == 0)
    v = P[0, 1:]
    D = -cp.diag(P)[1:] + cp.multiply(f.vlo + f.vhi, v) - f.vlo * f.vhi >= 0
    cl = A + B + Cc + Fc + [D, cons["psd"], cons["one"]]
    E = None
    if f.l2 is not None:
        x0, eps = f.l2
        xi = f.blk(0)
        E = -cp.trace(P[xi[0]: xi[-1] + 1, xi[0]: xi[-1] + 1]) + 2 * x0 @ P[0, xi] + eps ** 2 - float(x0 @ x0) >= 0
        cl.append(E)
    prob = cp.Problem(cp.Minimize(f.F00 + f.Fvec @ v), cl)
    kw = {}
    if solver.upper() == "SCS":
        kw = {"max_iters": max_iters or 5000, "eps_abs": 1e-5, "eps_rel": 1e-5}
        if time_limit:
            kw["time_limit_secs"] = float(time_limit)
    elif solver.upper() == "CLARABEL":
        if max_iters:
            kw["max_iter"] = max_iters
        if time_limit:
            kw["time_limit"] = float(time_limit)
    else:
        raise CertifyError(f"sdp solver must be 'SCS' or 'Clarabel', got {solver!r}")
    try:
        with warnings.catch_warnings():      # "inaccurate" is expected when capped: the bound stays valid
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=solver.upper(), **kw)
    except cp.error.SolverError as e:
        return -np.inf, f"solver_error: {str(e).splitlines()[0][:80]}"
    if any(c.dual_value is None for c in cl[:-2]):
        return -np.inf, f"no_dual ({prob.status})"
    lam = Multipliers([np.asarray(c.dual_value).ravel() for c in A], [np.asarray(c.dual_value).ravel() for c in B],
                      [np.asarray(c.dual_value).ravel() for c in Cc], np.asarray(D.dual_value).ravel(),
                      float(np.asarray(E.dual_value).ravel()[0]) if E is not None else 0.0,
                      [np.asarray(c.dual_value).ravel() for c in Fc]).project()
    k1 = np.asarray(cons["one"].dual_value).ravel()
    kap = [float(k1[0]), -float(k1[0])] if k1.size else []
    best = -np.inf
    for sign in (1.0, -1.0):      # cvxpy's sign convention for equality duals: try both (both valid)
        lam_s = Multipliers(lam.A, lam.B, [sign * c for c in lam.C], lam.D, lam.E, lam.F)
        best = max(best, bound_from(f, lam_s, kap))
        if f.N < 2000:            # the same point, certified in the scaled form with kappa re-tuned
            k, _, _ = tune_kappa(f, lam_s, kap[0] if kap else 0.0, None)
            best = max(best, certify_point(f, lam_s, k)[0])
    return best, ("optimal" if prob.status == "optimal" else "dual_feasible") if np.isfinite(best) else prob.status


def sdp(net_or_module, x: torch.Tensor, eps=None, norm="inf", C=None, d=None, domain=None,
        input_set=None, bounds_method: str = "crown", solver: str = "auto", max_iters: int | None = None,
        time_limit: float | None = None, iters: int = 300, lr: float = 0.01,
        pre_bounds: dict | None = None, refine: str | None = None, progress=None) -> ConvexResult:
    """Lower bounds of ``C @ net(x') + d`` by the Raghunathan et al. SDP (see module doc).

    ``solver``: 'auto' (default: ``choose_solver`` by the matrix size), 'SCS', 'Clarabel' (small
    problems only) or 'first-order' (SDP-FO style, matrix-free: ``iters`` Adam steps of relative
    size ``lr``, stopped after ``time_limit`` seconds per row). ``progress(b, row, rows, bound)``
    is called after each margin row. ``max_iters``/``time_limit`` cap the cvxpy solver per row; the bound stays
    valid when it stops early. Every row's bound is rebuilt from a dual point (status
    'optimal' or 'dual_feasible'); a solver returning no dual point gives ``-inf``.
    ``refine='all'`` first tightens every layer's pre-activation bounds by LP (LP-ALL, as in
    ``lp``), which tightens the SDP's box and triangle constraints too.
    """
    if refine not in (None, "all"):
        raise CertifyError(f"refine must be None or 'all', got {refine!r}")
    prob = prepare(net_or_module, x, eps, norm, C, d, domain, input_set, bounds_method, pre_bounds)
    if prob.input_set.norm not in ("inf", "box", "2"):
        raise CertifyError(f"sdp takes L-inf balls, boxes and L2 balls, not an L{prob.input_set.norm} ball "
                           "(certify L1 balls with bounds --norm 1)")
    B, rows = prob.C.shape[:2]
    lower = torch.full((B, rows), -np.inf, dtype=torch.float64)
    status, secs = [], []
    if str(solver).lower() == "auto":
        solver = choose_solver(sum(prob.pl.sizes) + 1)
    fo = solver.lower().replace("_", "-") in ("first-order", "fo")
    for b in range(B):
        t0 = time.perf_counter()
        if refine == "all":      # a refinement LP that fails leaves its bound as it was: still sound
            refine_all(prob, b)
        lp_rows, lp_status = sample_rows(prob, b)       # the lp certificate's own bounds of these rows
        st = []
        for r in range(rows):
            f = families(prob, b, r)
            init, _ = from_lp(prob, b, r, f)
            lp_val = lp_rows[r] if lp_status[r] == "optimal" else -np.inf
            if fo:
                val, s, _ = solve_first_order(f, init, iters, lr, time_limit=time_limit)
            else:
                val, s = solve_cvxpy(f, solver, max_iters, time_limit)
            # the LP's certified bound where it is larger (both sound), or where the solver's value
            # is no certificate (e.g. a Lanczos estimate) and the LP's is as large
            if lp_val > val or (lp_val == val and s not in CERTIFYING):
                val, s = lp_val, "dual_feasible"
            lower[b, r] = val
            st.append(s)
            if progress is not None:
                progress(b, r, rows, float(val))
        status.append(st)
        secs.append(time.perf_counter() - t0)
    name = "first-order" if fo else f"cvxpy-{solver.upper()}"
    return ConvexResult("sdp", name, lower, torch.full((B, rows), np.inf, dtype=torch.float64), status, secs)
