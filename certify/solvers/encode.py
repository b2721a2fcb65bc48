"""Linear encodings of a ReLU network on a box, for one sample: the triangle ("Planet")
relaxation (LP) or the exact big-M encoding of Tjeng et al. 2019 (MILP).

Columns: [z_0, z_1, ..., z_t] (input, then the ReLU outputs of the first t layers) and, for
the MILP, one binary column per unstable ReLU after them. Pre-activations are not variables:
``pre_k = P_k z + c_k`` is substituted into the rows. Rows are ``row_lo <= A z <= row_hi``.

For a ReLU with pre-activation bounds [l, u]:
  stable active (l >= 0):   a = pre,            a in [l, u]
  stable inactive (u <= 0): a = 0
  unstable, LP:             a >= pre, a >= 0, a <= u (pre - l) / (u - l)
  unstable, MILP:           a >= pre, a >= 0, a <= pre - l (1 - delta), a <= u delta, delta in {0, 1}
Both are sound for every input in the box whose pre-activations lie in the given bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from certify.solvers.linearize import Affine, PiecewiseLinear

INF = np.inf


@dataclass
class Encoding:
    A: sp.csr_matrix          # (m, N)
    row_lo: np.ndarray        # (m,)
    row_hi: np.ndarray
    col_lo: np.ndarray        # (N,)
    col_hi: np.ndarray
    integer: np.ndarray       # (N,) bool
    offsets: list[int]        # column offset of z_0, z_1, ..., z_t
    ncont: int                # number of continuous columns (z_0 .. z_t)
    blocks: list[tuple[int, str, np.ndarray]]   # row blocks in order: (layer k, kind, neuron ids);
                              # kind 'eq' (a = pre), 'ge' (a >= pre), 'tri' (triangle), 'bigm', 'bigu'

    @property
    def shape(self):
        return self.A.shape


def encode(pl: PiecewiseLinear, lo0: np.ndarray, hi0: np.ndarray, pre: list[tuple[np.ndarray, np.ndarray]],
           upto: int | None = None, binary: bool = False) -> Encoding:
    """Encode layers 1..``upto`` (default all) for one sample: ``lo0``/``hi0`` (n0,) input box,
    ``pre[k]`` = (l, u) (n_{k+1},) bounds of layer k+1's pre-activation."""
    t = len(pl.layers) if upto is None else upto
    sizes = pl.sizes[: t + 1]
    offsets = [0] + list(np.cumsum(sizes)[:-1].astype(int).tolist())
    ncont = int(sum(sizes))
    col_lo, col_hi = [lo0.astype(np.float64)], [hi0.astype(np.float64)]
    blocks, rlo, rhi, meta = [], [], [], []
    nbin = 0
    bin_cols = []            # per layer: (unstable idx, binary column ids)
    for k in range(1, t + 1):
        layer = pl.layers[k - 1]
        l, u = pre[k - 1]
        l, u = np.asarray(l, np.float64), np.asarray(u, np.float64)
        P = layer.pre.full(offsets, ncont)
        c = layer.pre.const
        n = layer.size
        E = sp.csr_matrix((np.ones(n), (np.arange(n), offsets[k] + np.arange(n))), shape=(n, ncont))
        act, ina = l >= 0, u <= 0
        uns = ~(act | ina)
        col_lo.append(np.where(act, l, 0.0))
        col_hi.append(np.where(ina, 0.0, np.where(act, u, np.maximum(u, 0.0))))
        D = sp.csr_matrix(P - E)
        ia, iu = np.flatnonzero(act), np.flatnonzero(uns)
        if len(ia):                                            # pre - a = 0
            blocks.append(D[ia]); rlo.append(-c[ia]); rhi.append(-c[ia]); meta.append((k, "eq", ia))
        if len(iu):                                            # pre - a <= 0
            blocks.append(D[iu]); rlo.append(np.full(len(iu), -INF)); rhi.append(-c[iu]); meta.append((k, "ge", iu))
            lu, uu = l[iu], u[iu]
            Pu, Eu = P[iu], E[iu]
            if not binary:                                     # a - s pre <= -s l
                s = uu / (uu - lu)
                blocks.append(sp.csr_matrix(Eu - sp.diags(s) @ Pu)); rlo.append(np.full(len(iu), -INF))
                rhi.append(s * (c[iu] - lu)); meta.append((k, "tri", iu))
            else:
                ids = ncont + nbin + np.arange(len(iu))
                bin_cols.append((len(blocks), iu, ids, lu, uu))
                blocks.append(sp.csr_matrix(Eu - Pu)); rlo.append(np.full(len(iu), -INF)); rhi.append(c[iu] - lu)
                meta.append((k, "bigm", iu))
                bin_cols.append((len(blocks), iu, ids, None, uu))
                blocks.append(sp.csr_matrix(Eu)); rlo.append(np.full(len(iu), -INF)); rhi.append(np.zeros(len(iu)))
                meta.append((k, "bigu", iu))
                nbin += len(iu)
    N = ncont + nbin
    rows = []
    bin_by_block = {bi: (ids, lu, uu) for bi, _, ids, lu, uu in bin_cols}
    for bi, Bk in enumerate(blocks):
        Bk = sp.csr_matrix((Bk.data, Bk.indices, Bk.indptr), shape=(Bk.shape[0], N))
        if bi in bin_by_block:
            ids, lu, uu = bin_by_block[bi]
            coef = -lu if lu is not None else -uu          # a - pre - l*delta... see module doc
            Bk = Bk + sp.csr_matrix((coef, (np.arange(len(ids)), ids)), shape=(len(ids), N))
        rows.append(Bk)
    A = sp.csr_matrix(sp.vstack(rows)) if rows else sp.csr_matrix((0, N))
    integer = np.zeros(N, dtype=bool)
    integer[ncont:] = True
    clo = np.concatenate(col_lo + [np.zeros(nbin)])
    chi = np.concatenate(col_hi + [np.ones(nbin)])
    return Encoding(A, np.concatenate(rlo) if rlo else np.zeros(0), np.concatenate(rhi) if rhi else np.zeros(0),
                    clo, chi, integer, offsets, ncont, meta)


def objective_rows(expr: Affine, enc: Encoding) -> np.ndarray:
    """Dense cost rows (rows, enc's columns) of ``expr`` over the encoding's columns (zeros on
    the binary columns)."""
    M = expr.full(enc.offsets, enc.ncont).toarray()
    return np.hstack([M, np.zeros((M.shape[0], enc.A.shape[1] - enc.ncont))])
