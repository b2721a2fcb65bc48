"""The dual side of the Raghunathan et al. SDP (see ``certify.convex.sdp``): the constraint data
of one margin row (``Families``), multipliers per constraint family, the dual matrix
H(lam) = F - sum_i lam_i G_i, its derivative in lam, the certified value of any dual point, and
the multipliers that reproduce the triangle LP's bound. Shared by the cvxpy path and the
first-order solver (``sdp_first_order``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from certify.convex.problem import Problem
from certify.errors import CertifyError
from certify.solvers.encode import encode, objective_rows
from certify.solvers.highs import dual_bound, make_highs, set_objective, status_name

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
        eps = float(torch.as_tensor(prob.input_set.eps, dtype=torch.float64, device="cpu").reshape(-1).expand(prob.batch)[b])
        l2 = (prob.input_set.center[b].detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy(), eps)
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


def hessian_parts(f: Families, lam: Multipliers) -> tuple[float, np.ndarray, np.ndarray]:
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
    h00, row0, diag = hessian_parts(f, lam)
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


def multiplier_gradient(f: Families, u: np.ndarray) -> Multipliers:
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
