"""First-order dual solver of the Raghunathan et al. SDP in the spirit of SDP-FO (Dathathri et
al. 2020): matrix-free, for MLPs whose PSD matrix is too large for SCS (e.g. 784 inputs).

Scaled variables. Every entry of v = [x, z_1, ..., z_L] lies in its box [l_j, u_j]; write
v = m + s * w with m = (l + u) / 2, s = (u - l) / 2, so w in [-1, 1]^N (w_j = 0 where s_j = 0).
With T = [[1, 0], [m, diag(s)]] the quadratic form of ``sdp_dual.hessian`` H(lam) becomes
Hs(lam) = T^T H(lam) T over [1; w], and ||[1; w]||^2 <= R = 1 + #{j : s_j > 0}.

Dual objective (any lam with lam >= 0 on inequality families, any kappa):
    g(lam, kappa) = kappa + R * min(0, lambda_min(Hs(lam) - kappa e0 e0^T))
is a lower bound of the margin (see ``sdp`` module doc: f(v) >= [1;w]^T Hs [1;w] for every
feasible v). ``kappa`` plays the role of SDP-FO's kappa and ``R * max(0, -lambda_min)`` is its
N * max(0, -lambda_min) correction. g is concave; its supergradient at (lam, kappa) with unit
minimal eigenvector u is  dg/dlam_i = R * (-(T u)^T G_i (T u))  and  dg/dkappa = 1 - R u_0^2
(when lambda_min < 0; otherwise 0 and 1).

Iterations: lambda_min by Lanczos (``scipy.sparse.linalg.eigsh`` on a ``LinearOperator``: the
matrix is never formed; one product costs two products with each weight matrix), warm-started
from the previous eigenvector; Adam ascent on (lam, kappa) with the projection lam >= 0; the
start is the LP-reproducing multipliers of ``sdp_dual.from_lp`` (so the solver starts at the LP
bound), kappa from a 1-D search. The iterate with the best estimated value is kept.

Certified value. The reported bound is recomputed for the kept iterate, with kappa re-tuned by
bisection on dg/dkappa, by a dense float64 eigensolver (``DENSE_MAX`` rows or fewer: 5000 is
200 MB and a few seconds) lowered by bounds on the rounding errors of building H(lam), of the
congruence T^T H T (both gamma_k times the entrywise magnitude of the summands, ``magnitude``)
and of the eigensolver (8 n eps ||M||_F): rigorous whatever the iterations did. Past
``DENSE_MAX`` the value comes from a tight Lanczos run lowered by its residual norm
||M u - theta u|| (an eigenvalue lies within it of theta); Lanczos can in principle miss the smallest eigenvalue, so such a bound gets the
non-certifying status ``lanczos_estimate`` (the sample is ``unknown``), never ``dual_feasible``.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from certify.convex.sdp_dual import EPS64, Families, Multipliers, hessian, hessian_parts, multiplier_gradient

DENSE_MAX = 5000


class Scaled:
    """The scaled dual matrix Hs(lam) - kappa e0 e0^T as a matrix-free operator (see module doc)."""

    def __init__(self, f: Families, lam: Multipliers, kappa: float):
        self.f, self.lam, self.kappa = f, lam, kappa
        self.h00, self.row0, self.diag = hessian_parts(f, lam)
        self.lC = [c / 2 for c in lam.C]
        self.WT = [W.T.tocsr() for W in f.Ws]       # transposed once, not in every product
        self.m = (f.vlo + f.vhi) / 2
        self.s = np.maximum(f.vhi - f.vlo, 0.0) / 2
        self.n = f.N + 1

    def up(self, u: np.ndarray) -> np.ndarray:
        """T u for u (N+1, k)."""
        out = np.empty_like(u)
        out[0] = u[0]
        out[1:] = self.m[:, None] * u[0][None] + self.s[:, None] * u[1:]
        return out

    def h(self, y: np.ndarray) -> np.ndarray:
        """H y for y (N+1, k) (unscaled H(lam))."""
        f = self.f
        out = self.diag[:, None] * y
        out[0] += self.h00 * y[0] + self.row0[1:] @ y[1:]
        out[1:] += self.row0[1:, None] * y[0][None]
        for k in range(1, len(f.sizes)):
            zi, zp = slice(f.offs[k], f.offs[k] + f.sizes[k]), slice(f.offs[k - 1], f.offs[k - 1] + f.sizes[k - 1])
            W, c = f.Ws[k - 1], self.lC[k - 1][:, None]
            out[zi] += c * (W @ y[zp])
            out[zp] += self.WT[k - 1] @ (c * y[zi])
        return out

    def matvec(self, u: np.ndarray) -> np.ndarray:
        u2 = u.reshape(self.n, -1)
        y = self.h(self.up(u2))
        out = np.empty_like(y)
        out[0] = y[0] + self.m @ y[1:] - self.kappa * u2[0]
        out[1:] = self.s[:, None] * y[1:]
        return out.reshape(u.shape)

    def operator(self) -> LinearOperator:
        return LinearOperator((self.n, self.n), matvec=self.matvec, matmat=self.matvec, dtype=np.float64)

    def dense(self) -> tuple[np.ndarray, float]:
        """The matrix (dense, symmetrized) and a bound on the spectral norm of its rounding error
        against the exact T^T H T - kappa e0 e0^T, H the exact quadratic form of (f, lam): every
        entry of H and of the product is a sum of at most k float64 terms, so its error is at most
        gamma_k times the sum of their magnitudes (``magnitude``), pushed through |T|."""
        H = hessian(self.f, self.lam)
        T = sp.csr_matrix(sp.bmat([[sp.csr_matrix(([1.0], ([0], [0])), shape=(1, 1)), None],
                                   [sp.csr_matrix(self.m[:, None]), sp.diags(self.s)]]))
        M = (T.T @ H @ T).toarray()
        M[0, 0] -= self.kappa
        Hm = magnitude(self.f, self.lam)
        k = int(np.diff(Hm.indptr).max()) + max(int(np.diff(sp.csc_matrix(W).indptr).max()) for W in self.f.Ws) + 12
        A = (abs(T).T @ Hm @ abs(T)).toarray()
        A[0, 0] += abs(self.kappa)
        err = 2 * k * EPS64 * float(np.linalg.norm(A))
        return (M + M.T) / 2, err


def magnitude(f: Families, lam: Multipliers) -> sp.csr_matrix:
    """Entrywise sums of the magnitudes of the terms that ``sdp_dual.hessian_parts``/``hessian`` add up to H(lam)."""
    N = f.N
    row0, diag, h00 = np.zeros(N + 1), np.zeros(N + 1), abs(f.F00)
    row0[1:] += np.abs(f.Fvec) / 2
    offd = []
    for k in range(1, len(f.sizes)):
        zi, zp = f.blk(k), f.blk(k - 1)
        W, b = abs(f.Ws[k - 1]), np.abs(f.bs[k - 1])
        lA, lB, lC = np.abs(lam.A[k - 1]), np.abs(lam.B[k - 1]), np.abs(lam.C[k - 1])
        row0[zi] += lA / 2 + lB / 2 + lC * b / 2
        row0[zp] += (W.T @ lB) / 2
        h00 += float(lB @ b)
        if lam.F is not None:
            lF = np.abs(lam.F[k - 1])
            sl, t = f.tri[k - 1]
            row0[zp] += (W.T @ (lF * np.abs(sl))) / 2
            row0[zi] += lF / 2
            h00 += float((lF * np.abs(sl)) @ (b + np.abs(t)))
        diag[zi] += lC
        Mk = (sp.diags(lC / 2) @ W).tocoo()
        offd.append(sp.csr_matrix((Mk.data, (zi[Mk.row], zp[Mk.col])), shape=(N + 1, N + 1)))
    D = np.abs(lam.D)
    diag[1:] += D
    row0[1:] += D * (np.abs(f.vlo) + np.abs(f.vhi)) / 2
    h00 += float(D @ np.abs(f.vlo * f.vhi))
    if f.l2 is not None:
        x0, eps = f.l2
        xi = f.blk(0)
        diag[xi] += abs(lam.E)
        row0[xi] += abs(lam.E) * np.abs(x0)
        h00 += abs(lam.E) * (eps ** 2 + float(x0 @ x0))
    E0 = sp.csr_matrix((row0[1:], (np.zeros(N, int), np.arange(1, N + 1))), shape=(N + 1, N + 1))
    H = sp.diags(diag) + E0 + E0.T + sp.csr_matrix(([h00], ([0], [0])), shape=(N + 1, N + 1))
    for O in offd:
        H = H + O + O.T
    return sp.csr_matrix(H)


def lanczos(op: Scaled, v0: np.ndarray | None, steps: int = 60, seed: int = 0) -> tuple[float, np.ndarray, float]:
    """(theta, unit vector u, residual ||M u - theta u||): the smallest Ritz pair after ``steps``
    Lanczos steps with full reorthogonalization, started at ``v0`` (the previous eigenvector:
    warm start) plus a little noise. theta >= lambda_min; used to steer the ascent only."""
    n = op.n
    if n <= 64:                     # tiny: the operator applied to the identity, dense solver
        M = op.matvec(np.eye(n))
        w, V = np.linalg.eigh((M + M.T) / 2)
        return float(w[0]), V[:, 0], 0.0
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n) * 1e-3
    if v0 is not None and np.any(v0):
        q += v0 / np.linalg.norm(v0)
    k = min(steps, n)
    Q = np.zeros((n, k))
    alpha, beta = np.zeros(k), np.zeros(k)
    q /= np.linalg.norm(q)
    m = k
    for j in range(k):
        Q[:, j] = q
        w = op.matvec(q)
        alpha[j] = q @ w
        w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)      # full reorthogonalization (twice)
        w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        beta[j] = np.linalg.norm(w)
        if beta[j] < 1e-12 * (1 + abs(alpha[j])):
            m = j + 1
            break
        q = w / beta[j]
    Tm = np.diag(alpha[:m]) + np.diag(beta[: m - 1], 1) + np.diag(beta[: m - 1], -1)
    w, S = np.linalg.eigh(Tm)
    u = Q[:, :m] @ S[:, 0]
    u /= np.linalg.norm(u)
    Mu = op.matvec(u)
    theta = float(u @ Mu)
    return theta, u, float(np.linalg.norm(Mu - theta * u))


def lmin_lanczos(op: Scaled, tol: float = 1e-10) -> tuple[float, float]:
    """(theta, residual) of the smallest eigenvalue by ARPACK's implicitly restarted Lanczos
    (``eigsh``) to tolerance ``tol``, falling back to 300 plain Lanczos steps if it does not converge."""
    if op.n <= 64:
        th, _, res = lanczos(op, None)
        return th, res
    try:
        w, V = eigsh(op.operator(), k=1, which="SA", tol=tol, ncv=min(op.n - 1, 40), maxiter=20 * op.n)
        u = V[:, 0] / np.linalg.norm(V[:, 0])
        Mu = op.matvec(u)
        theta = float(u @ Mu)
        return theta, float(np.linalg.norm(Mu - theta * u))
    except ArpackNoConvergence:
        th, _, res = lanczos(op, None, steps=300)
        return th, res


def certify_point(f: Families, lam: Multipliers, kappa: float) -> tuple[float, str]:
    """(valid bound, status) of one dual point: dense eigensolver when N + 1 <= DENSE_MAX (status
    'dual_feasible'), else tight Lanczos minus its residual ('lanczos_estimate')."""
    op = Scaled(f, lam, kappa)
    R = 1.0 + float(np.count_nonzero(op.s > 0))
    if op.n <= DENSE_MAX:
        M, err = op.dense()
        lmin = float(np.linalg.eigvalsh(M)[0])
        err += 8 * op.n * EPS64 * float(np.linalg.norm(M))
        return float(kappa + min(0.0, lmin - err) * R - 8 * EPS64 * (abs(kappa) + 1.0)), "dual_feasible"
    theta, res = lmin_lanczos(op)
    return float(kappa + min(0.0, theta - res) * R), "lanczos_estimate"


def tune_kappa(f: Families, lam: Multipliers, kappa: float, v0, steps: int = 60, bisect: int = 12,
               step: float | None = None, deadline: float | None = None) -> tuple[float, float, np.ndarray]:
    """Maximize the concave g(lam, .) over kappa by bisection on its slope 1 - R u_0^2 (Lanczos
    with ``steps`` steps), bracketing from ``kappa`` with first step ``step`` (default 1 + |kappa|),
    stopping early at ``deadline`` (time.perf_counter(); any kappa gives a valid bound).
    Returns (kappa, estimated g, eigenvector)."""
    def late() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    R = None

    def slope(k):
        nonlocal R
        op = Scaled(f, lam, k)
        R = 1.0 + float(np.count_nonzero(op.s > 0))
        th, u, _ = lanczos(op, v0, steps)
        val = k + R * min(0.0, th)
        return (1.0 if th >= 0 else 1.0 - R * u[0] ** 2), val, u

    s0, v_best, u_best = slope(kappa)
    k_best = kappa
    step = step or 1.0 + abs(kappa)
    lo = hi = kappa
    if s0 > 0:                              # bracket the maximum
        for _ in range(40):
            if late():
                return k_best, v_best, u_best
            hi = hi + step
            step *= 2
            s, v, u = slope(hi)
            if v > v_best:
                k_best, v_best, u_best = hi, v, u
            if s <= 0:
                break
    else:
        for _ in range(40):
            if late():
                return k_best, v_best, u_best
            lo = lo - step
            step *= 2
            s, v, u = slope(lo)
            if v > v_best:
                k_best, v_best, u_best = lo, v, u
            if s >= 0:
                break
    for _ in range(bisect):
        if late():
            break
        mid = (lo + hi) / 2
        s, v, u = slope(mid)
        if v > v_best:
            k_best, v_best, u_best = mid, v, u
        if s > 0:
            lo = mid
        else:
            hi = mid
    return k_best, v_best, u_best


def solve_first_order(f: Families, init: Multipliers, iters: int = 300, lr: float = 0.01,
                      time_limit: float | None = None, lanczos_steps: int = 40) -> tuple[float, str, dict]:
    """Adam ascent on g(lam, kappa) from ``init`` (see module doc), within ``time_limit`` seconds
    (the kappa searches included; the certified value is computed after it). Returns (certified
    bound, status, info) with info: 'start' (estimated g at the start, kappa tuned), 'best' (best
    estimated g), 'iters' (steps done)."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit if time_limit else None
    sizes = [len(a) for a in init.A]
    cut = np.cumsum([0] + sizes)
    nl = cut[-1]

    def flat(m: Multipliers) -> np.ndarray:
        return np.concatenate(m.A + m.B + m.C + (m.F or [np.zeros(n) for n in sizes]) + [m.D, [m.E]])

    def unflat(t: np.ndarray) -> Multipliers:
        part = lambda j: [t[j * nl + cut[i]: j * nl + cut[i + 1]] for i in range(len(sizes))]
        return Multipliers(part(0), part(1), part(2), t[4 * nl: 4 * nl + f.N], float(t[-1]), part(3))

    free = np.zeros(4 * nl + f.N + 1, dtype=bool)
    free[2 * nl: 3 * nl] = True                            # C multipliers (equalities) are free
    theta = flat(init)
    theta = np.where(free, theta, np.maximum(theta, 0.0))
    kappa, val, u = tune_kappa(f, unflat(theta), 0.0, None, deadline=deadline)
    start = val
    best = (val, theta.copy(), kappa)
    # Adam: per-coordinate step lr * (|param| + scale), scale = typical multiplier size
    scale = np.full_like(theta, max(1e-3, float(np.median(np.abs(theta[theta != 0]))) if np.any(theta) else 1.0))
    m1, m2 = np.zeros(len(theta) + 1), np.zeros(len(theta) + 1)
    b1, b2, it, trace = 0.9, 0.999, 0, []
    kscale = 1.0 + abs(kappa)
    for it in range(1, iters + 1):
        op = Scaled(f, unflat(theta), kappa)
        R = 1.0 + float(np.count_nonzero(op.s > 0))
        th, u, _ = lanczos(op, u, lanczos_steps)
        val = kappa + R * min(0.0, th)
        trace.append(val)
        if val > best[0]:
            best = (val, theta.copy(), kappa)
        if th >= 0:
            g = np.zeros(len(theta) + 1)
            g[-1] = 1.0
        else:
            gm = multiplier_gradient(f, op.up(u[:, None])[:, 0])
            g = np.concatenate([R * flat(gm), [1.0 - R * u[0] ** 2]])
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        stepv = (m1 / (1 - b1 ** it)) / (np.sqrt(m2 / (1 - b2 ** it)) + 1e-12)
        decay = lr * min(1.0, it / 30) / np.sqrt(1 + it / 100)     # warm-up, then slow decay
        theta = theta + decay * (np.abs(theta) + scale) * stepv[:-1]
        theta = np.where(free, theta, np.maximum(theta, 0.0))
        kappa = kappa + decay * (abs(kappa) + kscale) * stepv[-1]
        if time_limit and time.perf_counter() - t0 > time_limit:
            break
    lam = unflat(best[1])
    k2, v2, _ = tune_kappa(f, lam, best[2], None, steps=100, step=0.02 * (1.0 + abs(best[2])), deadline=deadline)
    bound, status = certify_point(f, lam, k2)
    return bound, status, {"start": start, "best": max(best[0], v2), "iters": it, "trace": trace,
                           "seconds": time.perf_counter() - t0}
