"""Exact answers on small networks, to check the engines against: the MILP minimum of a
conjunction's worst row over a box, the exact range of a hidden neuron, the minimum of a margin
by one LP per activation pattern, and dense grids over 2-D boxes."""
from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.optimize import Bounds as LinBounds
from scipy.optimize import LinearConstraint, linprog, milp

from bounds.bab.chain import to_chain
from certify.ir import Linear, ReLU, sequential


def exact_min(net, lo, hi, A, b):
    """min over x in [lo, hi] of max_r (A f(x) - b)_r by MILP (variables x, z, a, delta, t)."""
    ch = to_chain(net)
    n_in = ch.n_in
    nvar = n_in
    cons_A, cons_l, cons_u = [], [], []
    bounds_l, bounds_u, integrality = list(lo), list(hi), [0] * n_in
    prev = list(range(n_in))
    l, u = np.asarray(lo, float), np.asarray(hi, float)
    for k, (w, bb) in enumerate(zip(ch.weights, ch.biases)):
        w, bb = w.numpy(), bb.numpy()
        zl = np.minimum(w, 0) @ u + np.maximum(w, 0) @ l + bb
        zu = np.maximum(w, 0) @ u + np.minimum(w, 0) @ l + bb
        last = k == len(ch.weights) - 1
        zi = list(range(nvar, nvar + w.shape[0]))
        nvar += w.shape[0]
        bounds_l += zl.tolist(); bounds_u += zu.tolist(); integrality += [0] * w.shape[0]
        for i in range(w.shape[0]):   # z_i - w_i a_prev = b_i
            row = {zi[i]: 1.0}
            for j, p in enumerate(prev):
                row[p] = row.get(p, 0.0) - w[i, j]
            cons_A.append(row); cons_l.append(bb[i]); cons_u.append(bb[i])
        if last:
            out = zi
            break
        ai = list(range(nvar, nvar + w.shape[0])); nvar += w.shape[0]
        di = list(range(nvar, nvar + w.shape[0])); nvar += w.shape[0]
        bounds_l += [0.0] * w.shape[0] + [0.0] * w.shape[0]
        bounds_u += np.maximum(zu, 0).tolist() + [1.0] * w.shape[0]
        integrality += [0] * w.shape[0] + [1] * w.shape[0]
        for i in range(w.shape[0]):
            cons_A.append({ai[i]: 1.0, zi[i]: -1.0}); cons_l.append(0.0); cons_u.append(np.inf)       # a >= z
            cons_A.append({ai[i]: 1.0, zi[i]: -1.0, di[i]: -zl[i]}); cons_l.append(-np.inf); cons_u.append(-zl[i])  # a <= z - l(1-d)
            cons_A.append({ai[i]: 1.0, di[i]: -max(zu[i], 0.0)}); cons_l.append(-np.inf); cons_u.append(0.0)   # a <= u d
        prev = ai
        l, u = np.maximum(zl, 0), np.maximum(zu, 0)
    t = nvar; nvar += 1
    bounds_l.append(-np.inf); bounds_u.append(np.inf); integrality.append(0)
    for r in range(A.shape[0]):   # (A y - b)_r <= t
        row = {t: -1.0}
        for j, o in enumerate(out):
            row[o] = row.get(o, 0.0) + A[r, j]
        cons_A.append(row); cons_l.append(-np.inf); cons_u.append(b[r])
    M = np.zeros((len(cons_A), nvar))
    for i, row in enumerate(cons_A):
        for j, v in row.items():
            M[i, j] += v
    c = np.zeros(nvar); c[t] = 1.0
    res = milp(c, constraints=LinearConstraint(M, cons_l, cons_u), integrality=np.array(integrality),
               bounds=LinBounds(bounds_l, bounds_u), options={"mip_rel_gap": 1e-9})
    assert res.status == 0, res.message
    return res.fun


def cut(chain, t):
    """The network whose output is hidden layer t's pre-activation."""
    ops = []
    for k in range(t + 1):
        ops.append(Linear(chain.weights[k].float(), chain.biases[k].float()))
        if k < t:
            ops.append(ReLU())
    return sequential((chain.n_in,), ops, name=f"cut{t}")


def exact_range(chain, t, i, lo, hi):
    """(min, max) over the box [lo, hi] of hidden layer t's pre-activation i, by ``exact_min``."""
    sub = cut(chain, t)
    e = np.zeros((1, chain.weights[t].shape[0]))
    e[0, i] = 1.0
    return exact_min(sub, lo, hi, e, np.zeros(1)), -exact_min(sub, lo, hi, -e, np.zeros(1))


def brute_force_min(net, c, lo, hi):
    """min over the box of c @ net(x) for a 2-hidden-layer net: one LP per activation pattern."""
    W = [n.op.weight.double().numpy() for n in net.nodes if isinstance(n.op, Linear)]
    b = [n.op.bias.double().numpy() for n in net.nodes if isinstance(n.op, Linear)]
    n1, n2 = len(b[0]), len(b[1])
    best = np.inf
    for pat in itertools.product([0, 1], repeat=n1 + n2):
        D1, D2 = np.diag(pat[:n1]), np.diag(pat[n1:])
        A1, c1 = W[0], b[0]                                   # pre1 = A1 x + c1
        A2, c2 = W[1] @ D1 @ A1, W[1] @ D1 @ c1 + b[1]        # pre2 = A2 x + c2
        obj, off = c @ W[2] @ D2 @ A2, c @ (W[2] @ D2 @ c2 + b[2])
        s1 = 1 - 2 * np.array(pat[:n1])                       # active: -pre <= 0, inactive: pre <= 0
        s2 = 1 - 2 * np.array(pat[n1:])
        A_ub = np.vstack([s1[:, None] * A1, s2[:, None] * A2])
        b_ub = np.concatenate([-s1 * c1, -s2 * c2])
        r = linprog(obj, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lo, hi)), method="highs")
        if r.status == 0:
            best = min(best, r.fun + off)
    return best


def grid_points(lo, hi, n: int) -> torch.Tensor:
    """The n x n grid lo + (hi - lo) * t, t in linspace(0, 1, n)^2, of a 2-D box: (n * n, 2) float64."""
    a = torch.linspace(0, 1, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(a, a, indexing="ij")
    lo, hi = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
    return lo + (hi - lo) * torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


def grid_outputs(net, lo, hi, n: int) -> torch.Tensor:
    """``net`` on ``grid_points(lo, hi, n)``: (n * n, outputs)."""
    with torch.no_grad():
        return net(grid_points(lo, hi, n))


def grid_min(net, lo, hi, C, d, n: int = 301) -> torch.Tensor:
    """Minimum of each row of C @ net(x) + d over the n x n grid of the 2-D box [lo, hi]."""
    return (grid_outputs(net, lo, hi, n) @ C.T + d).min(0).values
