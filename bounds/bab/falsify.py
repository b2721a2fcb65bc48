"""Falsification for branch-and-bound: PGD on the violation value and exact re-checks.

The violation value of a conjunction ``A y <= b`` at y is ``max_r (A y - b)_r``: <= 0 iff y
violates the property. For a disjunction it is the minimum over the conjunctions. Candidates
from PGD, box centres, box corners or LP optima become a ``sat`` only through ``confirm``,
which re-evaluates the IR network in float64 and checks the VNN-LIB condition exactly (tol 0).
PGD follows ``certify.attack.search_forward``'s gradients (straight-through surrogates for
Sign, Floor and saturated Softmax, whose own gradients are 0); its points are still judged by
the real network.

Memory: inputs are evaluated in batches whose activations stay within ``MEMORY_BUDGET`` bytes
(every node's output per input with the gradient kept, the largest few without).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from certify.attack import pgd_minimize, search_forward
from certify.ir import Network
from certify.ir import ops as O
from certify.spec.sets import Box
from bounds.ibp import ibp_forward

MEMORY_BUDGET = 2 ** 30     # bytes of activations of one batch of inputs


def violation_value(y: torch.Tensor, disjuncts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """(N,) min over conjunctions (A, b) of max_r (A y - b)_r, for outputs y (N, n_out)."""
    vals = [(y @ A.T.to(y.dtype) - b.to(y.dtype)).max(dim=1).values if A.shape[0] else
            torch.full((y.shape[0],), -float("inf"), dtype=y.dtype, device=y.device) for A, b in disjuncts]
    return torch.stack(vals, 1).min(1).values


class Falsifier:
    """Holds the network in float32 (search) and float64 (confirmation) and the property."""

    def __init__(self, network: Network, prop, seed: int = 0):
        self.net = network.detach().to(torch.float32)
        self.net64 = network.detach().to(torch.float64)
        self.search = search_forward(self.net)
        self.prop = prop
        self.device = network.device
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.shape = network.input_shape
        sizes = [math.prod(network.shape_of(n.name)) for n in network.nodes] + [network.input_size]
        self._sum, self._max = sum(sizes), max(sizes)

    def batch_size(self, dtype: torch.dtype, grad: bool) -> int:
        """Inputs per batch within ``MEMORY_BUDGET``: with ``grad`` every node's output is kept
        (3 tensors each: value, surrogate, gradient), without it about 3 of the largest."""
        per = torch.empty((), dtype=dtype).element_size() * 3 * (self._sum if grad else self._max)
        return max(1, MEMORY_BUDGET // per)

    def _gates(self, lo: torch.Tensor, hi: torch.Tensor) -> dict:
        """Per box (N, n_in), the neurons of each Sign / Floor node whose value can change in the
        box (by interval bounds): only those pass a surrogate gradient (``search_forward``)."""
        steps = {n.name: n for n in self.net.nodes if isinstance(n.op, (O.Sign, O.Floor))}
        if not steps:
            return {}
        shape = (lo.shape[0],) + tuple(self.shape)
        box = (lo.reshape(shape).float(), hi.reshape(shape).float())
        out = {}
        for name, n in steps.items():
            with torch.no_grad():
                l, h = ibp_forward(self.net, box, stop=name)[n.inputs[0]]
            out[name] = (torch.floor(l) != torch.floor(h)) if isinstance(n.op, O.Floor) else (l <= 0) & (h >= 0)
        return out

    def _disjuncts(self, disjuncts, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``disjuncts`` as (A, b) tensors of ``dtype`` on the network's device."""
        put = lambda v: torch.as_tensor(v, dtype=dtype, device=self.device)  # noqa: E731
        return [(put(A), put(b)) for A, b in disjuncts]

    def _flat_forward(self, net, x: torch.Tensor) -> torch.Tensor:
        n = self.batch_size(x.dtype, False)
        return torch.cat([net(c.reshape((c.shape[0],) + tuple(self.shape))).reshape(c.shape[0], -1)
                          for c in x.split(n)]) if x.shape[0] else x.new_zeros((0, self.net.output_size))

    def confirm(self, x) -> tuple[np.ndarray, np.ndarray] | None:
        """(x, y) in float64 if x lies in a region and its exact output violates it, else None."""
        x = torch.as_tensor(np.asarray(x.cpu() if torch.is_tensor(x) else x, dtype=np.float64),
                            device=self.device).reshape(1, -1)
        with torch.no_grad():
            y = self._flat_forward(self.net64, x)[0].cpu().numpy()
        xn = x[0].cpu().numpy()
        if self.prop.violated_by(xn, y, tol=0.0):
            return xn.copy(), y.copy()
        return None

    def check_points(self, xs: torch.Tensor, disjuncts=None) -> tuple[np.ndarray, np.ndarray] | None:
        """Try a batch of candidate inputs (N, n_in); the best few are confirmed in float64."""
        if xs.shape[0] == 0:
            return None
        with torch.no_grad():
            y = self._flat_forward(self.net64, xs.to(torch.float64))
        if disjuncts is None:
            v = torch.stack([violation_value(y, self._disjuncts(r.disjuncts, y.dtype))
                             for r in self.prop.regions], 1).min(1).values
        else:
            v = violation_value(y, disjuncts)
        order = torch.argsort(v)[:8]
        for i in order.tolist():
            if v[i] <= 1e-9:
                ce = self.confirm(xs[i])
                if ce is not None:
                    return ce
        return None

    def sample(self, lo: torch.Tensor, hi: torch.Tensor, disjuncts, n: int = 50000, face: float = 0.3,
               keep: int = 64, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Random inputs in the box [lo, hi] (n_in,): each coordinate uniform, or, with probability
        ``face``, pinned to one of its two bounds (half each). Screened in float32, the ``keep``
        best are re-checked in float64 (``check_points``); the points are drawn in float64, so
        they lie in the box exactly. ``deadline``: no batch of samples is begun past it.

        Why the faces: violations of low-dimensional properties often lie on the box's boundary,
        where uniform sampling seldom lands and PGD stalls."""
        lo, hi = lo.reshape(-1).double(), hi.reshape(-1).double()
        dis32 = self._disjuncts(disjuncts, torch.float32)
        m = max(1, min(n, self.batch_size(torch.float32, False), MEMORY_BUDGET // (24 * lo.numel())))
        best_x, best_v = lo.new_zeros((0, lo.numel())), lo.new_zeros(0, dtype=torch.float32)
        for a in range(0, n, m):            # batches within the memory budget, the best ``keep`` kept
            if deadline is not None and a and time.monotonic() > deadline:
                break
            shape = (min(m, n - a), lo.numel())
            x = lo + torch.rand(shape, generator=self.gen, dtype=torch.float64, device=lo.device) * (hi - lo)
            pin = torch.rand(shape, generator=self.gen, device=lo.device) < face
            upper = torch.rand(shape, generator=self.gen, device=lo.device) < 0.5
            x = torch.where(pin, torch.where(upper, hi, lo), x)
            with torch.no_grad():
                v = violation_value(self._flat_forward(self.net, x.to(torch.float32)), dis32)
            best_x, best_v = torch.cat([best_x, x]), torch.cat([best_v, v])
            order = torch.argsort(best_v)[:keep]
            best_x, best_v = best_x[order], best_v[order]
        return self.check_points(best_x, self._disjuncts(disjuncts, torch.float64))

    def pgd(self, lo: torch.Tensor, hi: torch.Tensor, disjuncts, steps: int = 50,
            restarts: int = 5, parallel: int = 1,
            starts: torch.Tensor | None = None,
            deadline: float | None = None) -> tuple[tuple[np.ndarray, np.ndarray] | None, torch.Tensor]:
        """PGD in each box (lo, hi) (N, n_in) on the violation value; returns (counterexample or
        None, best values (N,)). ``parallel`` > 1 runs that many extra attacks per box side by side
        from uniform random starts (one batch: cheap for small networks).
        ``starts`` (S, n_in): instead, one attack from each of these points in the single box
        (N = 1), e.g. the bound minimizers of branch-and-bound's worst domains. ``deadline``: no
        PGD step is begun past it. The attacks end at the first violation found (the other
        boxes' values are then those reached so far)."""
        dis = self._disjuncts(disjuncts, torch.float32)
        N0 = lo.shape[0]
        if starts is not None:
            starts = torch.minimum(torch.maximum(starts.double(), lo.double()), hi.double()).unsqueeze(1)
            parallel = starts.shape[0] - 1
            lo, hi = lo.repeat(parallel + 1, 1), hi.repeat(parallel + 1, 1)
        elif parallel > 1:
            u = torch.rand((parallel,) + tuple(lo.shape), generator=self.gen, dtype=torch.float64, device=lo.device)
            starts = torch.cat([((lo + hi) / 2).unsqueeze(0).double(), lo.double() + u * (hi - lo).double()])
            lo, hi = lo.repeat(parallel + 1, 1), hi.repeat(parallel + 1, 1)
        N, K = lo.shape[0], len(dis)
        # one targeted attack per conjunction (the min over conjunctions alone gets stuck on one)
        lo_k, hi_k = lo.repeat_interleave(K, 0), hi.repeat_interleave(K, 0)
        lo32, hi32 = lo_k.to(torch.float32), hi_k.to(torch.float32)
        box = Box(lo32.reshape((-1,) + tuple(self.shape)), hi32.reshape((-1,) + tuple(self.shape)))
        which = torch.arange(K, device=lo.device).repeat(N)

        gates = self._gates(lo[:N0], hi[:N0])      # (N0 boxes) -> rows of the N * K attacks
        rep = torch.arange(N0).repeat(N // N0).repeat_interleave(K)

        def objective(x, which, rows):
            search = self.search if not gates else search_forward(self.net, {k: g[rows] for k, g in gates.items()})
            y = search(x).reshape(x.shape[0], -1)
            per = torch.stack([violation_value(y, [dk]) for dk in dis], 1)
            return per.gather(1, which.unsqueeze(1)).squeeze(1)

        start = None
        if starts is not None:
            start = starts.reshape(N, -1).repeat_interleave(K, 0).to(torch.float32).reshape(box.lower.shape)
        dis64 = self._disjuncts(disjuncts, torch.float64)
        n = self.batch_size(torch.float32, True)
        v = torch.full((N * K,), math.inf, device=lo_k.device)
        ce = None
        for a in range(0, N * K, n):        # batches of attacks within the memory budget
            if deadline is not None and a and time.monotonic() > deadline:
                break
            b = min(N * K, a + n)
            x, v[a:b] = pgd_minimize(lambda x, w=which[a:b], r=rep[a:b]: objective(x, w, r),
                                     Box(box.lower[a:b], box.upper[a:b]),
                                     steps=steps, restarts=restarts, generator=self.gen,
                                     start=None if start is None else start[a:b], decay=parallel > 1,
                                     deadline=deadline, stop_below=0.0)
            xs = x.reshape(x.shape[0], -1).to(torch.float64)
            xs = torch.minimum(torch.maximum(xs, lo_k[a:b].to(torch.float64)), hi_k[a:b].to(torch.float64))
            ce = self.check_points(xs, dis64)
            if ce is not None:
                break
        return ce, v.reshape(N, K).min(1).values.reshape(-1, N0).min(0).values
