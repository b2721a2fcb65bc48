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
(SCS by default, Clarabel for small problems), or matrix-free by the SDP-FO-style first-order
dual solver of ``sdp_first_order`` (Lanczos + Adam, started from multipliers that reproduce the triangle
LP's bound, for 784-input MLPs that SCS cannot load). Every row's reported bound is the better
of the solver's dual point and the LP-derived one (both valid), so the SDP bound is never below
the LP bound of the same pre-activation bounds (up to ~1e-5 slack).

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
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from certify.convex.problem import Problem, prepare
from certify.convex.result import ConvexResult
from certify.errors import CertifyError

EPS64 = np.finfo(np.float64).eps


@dataclass
class Families:
    """The constraint data of one sample: blocks of v and per-layer (W, b, bounds)."""

    offs: list[int]                 # matrix index of block k's first entry (0 is the constant)
    sizes: list[int]
    Ws: list[sp.csr_matrix]         # layer k (1..L): W (n_k, n_{k-1}) and b (n_k,)
    bs: list[np.ndarray]
    vlo: np.ndarray                 # (N,) box of v
    vhi: np.ndarray
    Fvec: np.ndarray                # (N,) objective linear part over v
    F00: float
    l2: tuple[np.ndarray, float] | None   # (x0, eps) of an L2 ball
    tri: list[tuple[np.ndarray, np.ndarray]]   # per layer (s, t): z <= s (pre - t) (triangle upper side)

    @property
    def N(self) -> int:
        return int(sum(self.sizes))

    @property
    def R(self) -> float:
        return 1.0 + float(np.sum(np.maximum(self.vlo ** 2, self.vhi ** 2)))

    def blk(self, k: int) -> np.ndarray:
        return self.offs[k] + np.arange(self.sizes[k])


def families(prob: Problem, b: int, row: int) -> Families:
    """The SDP data of sample ``b``'s margin row ``row``."""
    pl = prob.pl
    if not pl.is_chain():
        raise CertifyError("sdp handles feed-forward MLP-like chains only (every layer fed by the previous one)")
    sizes = pl.sizes
    offs = [1 + o for o in pl.offsets]
    Ws = [sp.csr_matrix(l.pre.terms[k]) for k, l in enumerate(pl.layers)]
    bs = [l.pre.const for l in pl.layers]
    vlo = [prob.lower0[b]] + [np.maximum(lo[b], 0.0) for lo, _ in prob.pre]
    vhi = [prob.upper0[b]] + [np.maximum(hi[b], 0.0) for _, hi in prob.pre]
    out = prob.objective(b)
    L = len(pl.layers)
    Fvec = np.zeros(int(sum(sizes)))
    T = out.terms.get(L)
    if T is not None:
        Fvec[pl.offsets[L]: pl.offsets[L] + sizes[L]] = np.asarray(T[row].todense()).ravel()
    l2 = None
    if prob.input_set.norm == "2":
        eps = float(torch.as_tensor(prob.input_set.eps, dtype=torch.float64).reshape(-1).expand(prob.batch)[b])
        l2 = (prob.input_set.center[b].detach().to(torch.float64).reshape(-1).numpy(), eps)
    tri = []
    for lo, hi in prob.pre:
        l, u = lo[b], hi[b]
        uns = (l < 0) & (u > 0)
        sl = np.where(uns, u / np.where(uns, u - l, 1.0), np.where(l >= 0, 1.0, 0.0))
        tri.append((sl, np.where(uns, l, 0.0)))
    return Families(offs, sizes, Ws, bs, np.concatenate(vlo), np.concatenate(vhi), Fvec, float(out.const[row]), l2,
                    tri)


# ------------------------------------------------------------------ dual side: H(lam) and its bound
@dataclass
class Multipliers:
    """lam per family: A, B, C (free), F per layer (n_k,); D (N,); E scalar."""

    A: list[np.ndarray]
    B: list[np.ndarray]
    C: list[np.ndarray]
    D: np.ndarray
    E: float = 0.0
    F: list[np.ndarray] | None = None

    @staticmethod
    def zeros(f: Families) -> "Multipliers":
        z = lambda: [np.zeros(n) for n in f.sizes[1:]]
        return Multipliers(z(), z(), z(), np.zeros(f.N), 0.0, z())

    def project(self) -> "Multipliers":
        return Multipliers([np.maximum(a, 0) for a in self.A], [np.maximum(a, 0) for a in self.B], self.C,
                           np.maximum(self.D, 0), max(self.E, 0.0),
                           None if self.F is None else [np.maximum(a, 0) for a in self.F])


def _parts(f: Families, lam: Multipliers) -> tuple[float, np.ndarray, np.ndarray]:
    """H(lam) without its ReLU-product blocks: (H[0,0], H[0, :] with entry 0 zeroed, diag) ((N+1,)
    each). The remaining blocks are H[z_k, z_{k-1}] = diag(lam.C_k / 2) W_k (and transposed)."""
    N = f.N
    row0 = np.zeros(N + 1)          # H[0, j] (j >= 1)
    h00 = f.F00
    row0[1:] += f.Fvec / 2
    diag = np.zeros(N + 1)
    for k in range(1, len(f.sizes)):
        zi, zp = f.blk(k), f.blk(k - 1)
        W, b = f.Ws[k - 1], f.bs[k - 1]
        lA, lB, lC = lam.A[k - 1], lam.B[k - 1], lam.C[k - 1]
        row0[zi] += -lA / 2 - lB / 2 + lC * b / 2
        row0[zp] += (W.T @ lB) / 2
        h00 += float(lB @ b)
        if lam.F is not None:
            lF = lam.F[k - 1]
            sl, t = f.tri[k - 1]
            row0[zp] -= (W.T @ (lF * sl)) / 2
            row0[zi] += lF / 2
            h00 -= float((lF * sl) @ (b - t))
        diag[zi] -= lC
    diag[1:] += lam.D
    row0[1:] -= lam.D * (f.vlo + f.vhi) / 2
    h00 += float(lam.D @ (f.vlo * f.vhi))
    if f.l2 is not None and lam.E != 0.0:
        x0, eps = f.l2
        xi = f.blk(0)
        diag[xi] += lam.E
        row0[xi] -= lam.E * x0
        h00 -= lam.E * (eps ** 2 - float(x0 @ x0))
    row0[0] = 0.0
    return h00, row0, diag


def hessian(f: Families, lam: Multipliers) -> sp.csr_matrix:
    """H(lam) = F - sum_i lam_i G_i, symmetric (N+1, N+1) (see module doc)."""
    N = f.N
    h00, row0, diag = _parts(f, lam)
    E0 = sp.csr_matrix((row0[1:], (np.zeros(N, int), np.arange(1, N + 1))), shape=(N + 1, N + 1))
    H = sp.diags(diag) + E0 + E0.T + sp.csr_matrix(([h00], ([0], [0])), shape=(N + 1, N + 1))
    for k in range(1, len(f.sizes)):
        zi, zp = f.blk(k), f.blk(k - 1)
        M = (sp.diags(lam.C[k - 1] / 2) @ f.Ws[k - 1]).tocoo()    # H[zi, zp] += lC_i W_ij / 2
        O = sp.csr_matrix((M.data, (zi[M.row], zp[M.col])), shape=(N + 1, N + 1))
        H = H + O + O.T
    return sp.csr_matrix(H)


def certified_value(H: sp.spmatrix, kappa: float, R: float) -> float:
    """kappa + min(0, lambda_min(H - kappa e0 e0^T)) * R with a dense float64 eigensolver, lowered
    by a bound on the eigensolver's rounding error: a valid lower bound for any H, kappa."""
    M = H.toarray() if sp.issparse(H) else np.array(H)
    M[0, 0] -= kappa
    M = (M + M.T) / 2
    lmin = float(np.linalg.eigvalsh(M)[0])
    err = 8 * M.shape[0] * EPS64 * float(np.linalg.norm(M))
    return float(kappa + min(0.0, lmin - err) * R - 8 * EPS64 * abs(kappa))


def best_kappa(H: sp.spmatrix) -> float | None:
    """kappa making H - kappa e0 e0^T PSD with a zero eigenvalue (Schur complement) when H's
    lower block is positive definite, else None."""
    M = H.toarray() if sp.issparse(H) else np.array(H)
    Hv, h = M[1:, 1:], M[0, 1:]
    try:
        Lc = np.linalg.cholesky((Hv + Hv.T) / 2)
    except np.linalg.LinAlgError:
        return None
    y = np.linalg.solve(Lc, h)
    return float(M[0, 0] - y @ y)


def bound_from(f: Families, lam: Multipliers, kappas: list[float]) -> float:
    """The best certified value over candidate kappas, for ``lam`` and for ``lam`` repaired by
    raising the box multipliers until H's lower block is positive definite (then kappa by Schur
    complement). Every candidate is a valid bound; the largest is returned."""
    H = hessian(f, lam)
    cands = list(kappas) + [0.0]
    k = best_kappa(H)
    if k is not None:
        cands.append(k - 1e-9 * (1 + abs(k)))
    best = max(certified_value(H, kap, f.R) for kap in cands)
    if k is None:
        M = H.toarray()[1:, 1:]
        lmin = float(np.linalg.eigvalsh((M + M.T) / 2)[0])
        shift = max(0.0, -lmin) + 1e-9 * (1.0 + float(np.abs(M).max()))
        H2 = hessian(f, Multipliers(lam.A, lam.B, lam.C, lam.D + shift, lam.E, lam.F))
        k2 = best_kappa(H2)
        if k2 is not None:
            best = max(best, certified_value(H2, k2 - 1e-9 * (1 + abs(k2)), f.R))
    return best


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
            from certify.convex.sdp_first_order import certify_point, tune_kappa
            k, _, _ = tune_kappa(f, lam_s, kap[0] if kap else 0.0, None)
            best = max(best, certify_point(f, lam_s, k)[0])
    return best, ("optimal" if prob.status == "optimal" else "dual_feasible") if np.isfinite(best) else prob.status


# ------------------------------------------------------------------ first-order dual (SDP-FO style)
def _grad(f: Families, u: np.ndarray) -> Multipliers:
    """-(u^T G_i u) per multiplier: the derivative of u^T H(lam) u in lam."""
    u0 = u[0]
    gA, gB, gC, gF = [], [], [], []
    for k in range(1, len(f.sizes)):
        uz, up = u[f.blk(k)], u[f.blk(k - 1)]
        W, b = f.Ws[k - 1], f.bs[k - 1]
        Wu = W @ up
        gA.append(-(u0 * uz))
        gB.append(-(u0 * (uz - Wu) - b * u0 ** 2))
        gC.append(-(uz ** 2 - uz * Wu - b * u0 * uz))
        sl, t = f.tri[k - 1]
        gF.append(-(u0 * sl * Wu + u0 ** 2 * sl * (b - t) - u0 * uz))
    uv = u[1:]
    gD = -(-uv ** 2 + (f.vlo + f.vhi) * u0 * uv - f.vlo * f.vhi * u0 ** 2)
    gE = 0.0
    if f.l2 is not None:
        x0, eps = f.l2
        ux = u[f.blk(0)]
        gE = -(-ux @ ux + 2 * u0 * (x0 @ ux) + (eps ** 2 - x0 @ x0) * u0 ** 2)
    return Multipliers(gA, gB, gC, gD, float(gE), gF)


def from_lp(prob: Problem, b: int, row: int, f: Families) -> tuple[Multipliers, float]:
    """Multipliers reproducing the triangle LP's bound (and that bound): LP row duals become the
    (B)/(F) multipliers and each reduced cost r_j the box multiplier |r_j| / (u_j - l_j), for
    which the box S-lemma term equals min over [l_j, u_j] of r_j v_j. Starting the first-order
    ascent here makes the SDP bound at least the LP's (up to the fixed-variable slack)."""
    from certify.solvers.encode import encode, objective_rows
    from certify.solvers.highs import dual_bound, make_highs, set_objective, status_name
    enc = encode(prob.pl, prob.lower0[b], prob.upper0[b], [(lo[b], hi[b]) for lo, hi in prob.pre])
    obj = prob.objective(b)
    cost, c0 = objective_rows(obj, enc)[row], float(obj.const[row])
    h = make_highs(enc)
    set_objective(h, cost, c0)
    h.run()
    lam = Multipliers.zeros(f)
    if status_name(h) != "optimal":
        lam.D[:] = 1.0
        return lam, -np.inf
    y = np.asarray(h.getSolution().row_dual, dtype=np.float64)
    val = dual_bound(cost, c0, enc, y)
    pos = 0
    for k, kind, ids in enc.blocks:
        yk = y[pos: pos + len(ids)]
        pos += len(ids)
        if kind == "eq":
            lam.B[k - 1][ids] += np.maximum(-yk, 0)
            lam.F[k - 1][ids] += np.maximum(yk, 0)
        elif kind == "ge":
            lam.B[k - 1][ids] += np.maximum(-yk, 0)
        elif kind == "tri":
            lam.F[k - 1][ids] += np.maximum(-yk, 0)
    y = np.where((y > 0) & ~np.isfinite(enc.row_lo), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(enc.row_hi), 0.0, y)
    r = cost - enc.A.T @ y
    width = f.vhi - f.vlo
    lam.D = np.abs(r) / np.maximum(width, 1e-6) + 1e-9
    return lam, val


def sdp(net_or_module, x: torch.Tensor, eps=None, norm="inf", C=None, d=None, domain=(0.0, 1.0),
        input_set=None, bounds_method: str = "crown", solver: str = "SCS", max_iters: int | None = None,
        time_limit: float | None = None, iters: int = 300, lr: float = 0.01,
        pre_bounds: dict | None = None, refine: str | None = None) -> ConvexResult:
    """Lower bounds of ``C @ net(x') + d`` by the Raghunathan et al. SDP (see module doc).

    ``solver``: 'SCS' (default), 'Clarabel' (small problems only) or 'first-order' (SDP-FO style,
    matrix-free: ``iters`` Adam steps of relative size ``lr``, stopped after ``time_limit``
    seconds per row). ``max_iters``/``time_limit`` cap the cvxpy solver per row; the bound stays
    valid when it stops early. Every row's bound is rebuilt from a dual point (status
    'optimal' or 'dual_feasible'); a solver returning no dual point gives ``-inf``.
    ``refine='all'`` first tightens every layer's pre-activation bounds by LP (LP-ALL, as in
    ``lp``), which tightens the SDP's box and triangle constraints too.
    """
    if refine not in (None, "all"):
        raise CertifyError(f"refine must be None or 'all', got {refine!r}")
    prob = prepare(net_or_module, x, eps, norm, C, d, domain, input_set, bounds_method, pre_bounds)
    B, rows = prob.C.shape[:2]
    lower = torch.full((B, rows), -np.inf, dtype=torch.float64)
    status, secs = [], []
    fo = solver.lower().replace("_", "-") in ("first-order", "fo")
    for b in range(B):
        t0 = time.perf_counter()
        if refine == "all":      # a refinement LP that fails leaves its bound as it was: still sound
            from certify.convex.lp import refine_all
            refine_all(prob, b)
        st = []
        for r in range(rows):
            f = families(prob, b, r)
            init, _ = from_lp(prob, b, r, f)
            if fo:
                from certify.convex.sdp_first_order import solve_first_order
                val, s, _ = solve_first_order(f, init, iters, lr, time_limit=time_limit)
            else:
                val, s = solve_cvxpy(f, solver, max_iters, time_limit)
            # both are valid: keep the better (the first-order solver already certifies its start,
            # the LP point, when no iterate beats it: the dense check here is for small problems)
            if s in ("optimal", "dual_feasible") or not np.isfinite(val):
                lp_val = bound_from(f, init, []) if f.N < (600 if fo else 5000) else -np.inf
                if lp_val > val:
                    val, s = lp_val, "dual_feasible"
            lower[b, r] = val
            st.append(s)
        status.append(st)
        secs.append(time.perf_counter() - t0)
    name = "first-order" if fo else f"cvxpy-{solver.upper()}"
    return ConvexResult("sdp", name, lower, torch.full((B, rows), np.inf, dtype=torch.float64), status, secs)
