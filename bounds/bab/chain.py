"""An IR network as an affine/ReLU chain in float64: the form branch-and-bound bounds work on.

``to_chain(net)`` turns a chain-shaped network (each node fed by the one before it) whose ops are
affine (Linear, Conv2d, ConstAdd, ConstMul, BatchNorm, Normalize, AvgPool2d, Flatten, Reshape,
Identity, and the data-movement ops of ``ops.LinearMap``) or ReLU into ``Chain(weights, biases)``:

    z_1 = W_1 x + b_1,  a_k = relu(z_k),  z_{k+1} = W_{k+1} a_k + b_{k+1},  output = z_L

on flattened (row-major) vectors. A run of consecutive affine ops is made into one dense matrix
by pushing the identity basis through the ops (exact up to float64 rounding), so every affine op
the IR has is covered by its own reference ``forward``. Returns ``None`` for anything else
(residual adds, max-pooling, sigmoid, ...) or when a matrix would exceed ``max_entries``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bounds.crown import ROW_BUDGET
from certify.ir import (AvgPool2d, BatchNorm, ConstAdd, ConstMul, Conv2d, Flatten, Identity, Linear,
                        LinearMap, Network, Normalize, ReLU, Reshape)

AFFINE_OPS = (Linear, Conv2d, ConstAdd, ConstMul, BatchNorm, Normalize, AvgPool2d, Flatten, Reshape,
              Identity, LinearMap)


@dataclass
class Chain:
    """``weights[k]`` (n_{k+1}, n_k) and ``biases[k]`` (n_{k+1},), float64; ReLU between layers."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    _casts: dict = field(default_factory=dict, repr=False, compare=False)

    def cast(self, dtype: torch.dtype) -> "Chain":
        """The same chain in ``dtype`` (made once, then kept; e.g. float32 for the steps of an
        optimization whose result is re-evaluated in float64)."""
        if dtype == self.weights[0].dtype:
            return self
        if dtype not in self._casts:
            self._casts[dtype] = Chain([w.to(dtype) for w in self.weights], [b.to(dtype) for b in self.biases])
        return self._casts[dtype]

    @property
    def hidden_sizes(self) -> list[int]:
        return [w.shape[0] for w in self.weights[:-1]]

    @property
    def n_in(self) -> int:
        return self.weights[0].shape[1]

    @property
    def n_out(self) -> int:
        return self.weights[-1].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_in) -> (B, n_out)."""
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w.T + b
            if k < len(self.weights) - 1:
                x = x.clamp(min=0)
        return x


def _densify(ops, in_shape, max_entries: int, device: torch.device,
             widest: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The matrix (n_out, n) and bias (n_out,) of the affine ``ops`` on inputs of ``in_shape``:
    the images of 0 and of the identity basis, pushed through in chunks of basis vectors whose
    values stay within ``ROW_BUDGET`` elements at the ``widest`` op output."""
    n = math.prod(in_shape)
    step = max(1, ROW_BUDGET // max(widest, 1))

    def image(x):
        x = x.reshape((x.shape[0],) + tuple(in_shape))
        with torch.no_grad():
            for op in ops:
                x = op.forward(x)
        return x.reshape(x.shape[0], -1)

    b = image(torch.zeros(1, n, dtype=torch.float64, device=device))[0]
    if b.numel() * n > max_entries:
        return None
    w = torch.empty(b.numel(), n, dtype=torch.float64, device=device)
    for a in range(0, n, step):
        k = min(step, n - a)
        basis = torch.zeros(k, n, dtype=torch.float64, device=device)
        basis[torch.arange(k, device=device), a + torch.arange(k, device=device)] = 1.0
        w[:, a:a + k] = (image(basis) - b).T
    return w, b


def chain_obstacle(net: Network) -> str | None:
    """Why ``net`` is not an affine/ReLU chain: the first node that is not (naming its op), or None."""
    prev = net.input_name
    for node in net.nodes:
        if node.inputs != (prev,):
            return f"node {node.name!r} ({node.op.kind}) does not read the node before it"
        if not isinstance(node.op, AFFINE_OPS + (ReLU,)):
            return f"node {node.name!r} is {node.op.kind}, neither affine nor ReLU"
        prev = node.name
    return None


def to_chain(net: Network, max_entries: int = 40_000_000) -> Chain | None:
    """The affine/ReLU chain computing ``net`` (see module docstring), or ``None``."""
    net64 = net.to(torch.float64)
    prev = net64.input_name
    for node in net64.nodes:
        if node.inputs != (prev,) or not isinstance(node.op, AFFINE_OPS + (ReLU,)):
            return None
        prev = node.name
    if prev != net64.output:
        return None
    weights, biases = [], []
    run, run_shape, cur_shape = [], net64.input_shape, net64.input_shape
    widest = math.prod(run_shape)

    def flush():
        nonlocal run, run_shape, widest
        if math.prod(run_shape) * math.prod(cur_shape) > max_entries:
            return False
        wb = _densify(run, run_shape, max_entries, net64.device, widest)
        if wb is None:
            return False
        weights.append(wb[0])
        biases.append(wb[1])
        run, run_shape = [], cur_shape
        widest = math.prod(run_shape)
        return True

    for node in net64.nodes:
        if isinstance(node.op, ReLU):
            if not flush():      # an empty run gives the identity: relu(relu(x)) stays exact
                return None
            run_shape = node.shape
        else:
            run.append(node.op)
            widest = max(widest, math.prod(node.shape))
        cur_shape = node.shape
    if not flush():
        return None
    return Chain(weights, biases)
