"""Exact check of an affine piece of a piecewise-linear graph (a leaf of the activation-split search).

A domain where every ReLU-like neuron is stable and every max-pool picks one input for sure
(``exact``) is a region on which the network is affine: y = M x + c for x in the box with the
split constraints s (a_j x + c_j - p_j) >= 0. The rows M, a_j come from backward passes through
the rule tables (exact here: every relaxation is the function itself), and an LP (HiGHS)
decides min_x max_r (C y + d)_r over that region; its optimum is a counterexample candidate.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

from certify.ir import ops as O
from bounds import activations as act
from bounds.bab.graph_bounds import Graph, Splits, _box
from bounds.crown import backward_lower, crown_spec
from bounds.relaxations import maxpool_relax

LP_MARGIN = 1e-7   # an LP optimum must exceed this to count as a proof (solver tolerance)


def exact(g: Graph, pre: dict) -> bool:
    """Whether every nonlinear op's relaxation is the op itself over the bounds ``pre`` (B = 1)."""
    if not g.piecewise:
        return False
    net = g.net64
    for k, consumers in g.consumers.items():
        lo, hi = pre[k]
        for c in consumers:
            node = net.node(c)
            if isinstance(node.op, O.MaxPool2d):
                if not bool(maxpool_relax(node.op, lo, hi).exact.all()):
                    return False
            else:
                op = act.elementwise_op(node)
                if bool(act.record(op).unstable(op, lo, hi).any()):
                    return False
    return True


def _affine_rows(g: Graph, pre: dict, lo, hi, name: str, neurons: torch.Tensor):
    """(coefficients (m, n_in), constants (m,)) of the neurons of node ``name`` as functions of x."""
    net, dev = g.net64, lo.device
    m = neurons.numel()
    if name == net.input_name:
        E = torch.zeros(m, net.input_size, dtype=torch.float64, device=dev)
        E[torch.arange(m, device=dev), neurons] = 1.0
        return E, torch.zeros(m, dtype=torch.float64, device=dev)
    shape = net.shape_of(name)
    E = torch.zeros(1, m, int(np.prod(shape)), dtype=torch.float64, device=dev)
    E[0, torch.arange(m, device=dev), neurons] = 1.0
    keep: dict = {}
    backward_lower(net, name, E.reshape((1, neurons.numel()) + tuple(shape)), pre, _box(net, lo, hi), keep=keep)
    A = keep["input"]
    A = torch.zeros(1, m, net.input_size, dtype=torch.float64, device=dev) if A is None else A
    return A.reshape(neurons.numel(), -1), keep["bias"].reshape(-1)


def leaf_lp(g: Graph, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor, pre: dict,
            splits: Splits):
    """Decide one exact domain (B = 1: lo, hi (1, n_in), C (R, n_out), d (R,), ``pre`` its bounds,
    ``splits`` its constraints): ("unsat", None), ("candidate", x (n_in,)) or ("unknown", None)
    (solver trouble)."""
    net = g.net64
    keep: dict = {}
    with torch.no_grad():
        crown_spec(net, pre, _box(net, lo, hi), C.reshape(1, C.shape[0], -1), d.reshape(1, -1), upper=False,
                   keep=keep)
        Ain = keep["input"]
        R = C.shape[0]
        Mo = torch.zeros(R, net.input_size, dtype=torch.float64, device=lo.device) if Ain is None else Ain.reshape(R, -1)
        co = keep["bias"].reshape(-1) + d.reshape(-1)
        A_ub, b_ub = [], []
        sel = splits.side[0] != 0
        for j, name in enumerate(g.split_nodes):
            m = sel & (splits.node[0] == j)
            if not bool(m.any()):
                continue
            a, c = _affine_rows(g, pre, lo, hi, name, splits.neuron[0][m])
            s = splits.side[0][m].double()
            p = splits.point[0][m]
            A_ub.append(-s.unsqueeze(1) * a)             # s (a x + c - p) >= 0
            b_ub.append(s * (c - p))
    return minmax_lp(A_ub, b_ub, Mo, co, lo.reshape(-1), hi.reshape(-1))


def minmax_lp(A_ub: list, b_ub: list, M: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """min over x in [lo, hi] with ``A_ub x <= b_ub`` (lists of row blocks) of max_r (M x + c)_r,
    by HiGHS: ("unsat", None) when it exceeds ``LP_MARGIN`` or nothing is feasible, else
    ("candidate", the minimizer x), or ("unknown", None) on solver trouble."""
    n = M.shape[1]
    A = torch.cat(list(A_ub) + [M]).cpu().numpy()
    A = np.hstack([A, np.zeros((A.shape[0], 1))])
    A[-M.shape[0]:, -1] = -1.0
    obj = np.zeros(n + 1)
    obj[-1] = 1.0
    bnds = [(float(a), float(b)) for a, b in zip(lo.tolist(), hi.tolist())] + [(None, None)]
    r = linprog(obj, A_ub=A, b_ub=torch.cat(list(b_ub) + [-c]).cpu().numpy(), bounds=bnds, method="highs")
    if r.status == 2:
        return "unsat", None
    if r.status != 0:
        return "unknown", None
    if r.fun > LP_MARGIN:
        return "unsat", None
    return "candidate", torch.as_tensor(r.x[:n], device=lo.device)
