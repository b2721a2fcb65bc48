"""Shared preparation of a convex certificate: network -> float64 IR and its linearization,
input set, margin matrix, and the pre-activation bounds asked from ``bounds`` (CROWN or
alpha-CROWN, never IBP: IBP bounds make the LP looser than CROWN alone).

Shapes: ``x`` (B, *input_shape); ``C`` (B, rows, K) (default: the identity on the K outputs,
i.e. bounds of every output); ``d`` (B, rows) or None. Pre-activation bounds per ReLU layer
are numpy float64 arrays (B, n_k), widened outward by ``PAD`` (relative + absolute) so that
float rounding inside the bound engine cannot make them unsound.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from certify.solvers.linearize import Affine, PiecewiseLinear, linearize
from certify.errors import CertifyError
from certify.ir import Network
from certify.spec.sets import Box, InputSet, ball

PAD = 1e-7
METHODS = ("crown", "alpha")


def as_network(net_or_module, input_shape) -> Network:
    """A float64 IR copy of ``net_or_module`` (a Network or a torch module traced by the frontend)."""
    if isinstance(net_or_module, Network):
        net = net_or_module
    elif isinstance(net_or_module, torch.nn.Module):
        from certify.frontends.torch import from_module
        net = from_module(net_or_module, tuple(input_shape))
    else:
        raise CertifyError(f"expected a certify Network or a torch.nn.Module, got {type(net_or_module).__name__}")
    return net.detach().to(torch.float64)


@dataclass
class Problem:
    """Everything a solver needs, for B samples."""

    net: Network                       # float64 copy
    pl: PiecewiseLinear
    input_set: InputSet
    lower0: np.ndarray                 # (B, n0) input box
    upper0: np.ndarray
    C: torch.Tensor                    # (B, rows, K) float64
    d: torch.Tensor                    # (B, rows) float64
    pre: list[tuple[np.ndarray, np.ndarray]]   # per ReLU layer (B, n_k) lower, upper

    @property
    def batch(self) -> int:
        return self.lower0.shape[0]

    def objective(self, b: int) -> Affine:
        """The margin rows of sample b as an Affine of the variables: C_b @ out + d_b."""
        return self.pl.output.left(self.C[b].numpy()).shift(self.d[b].numpy())

    def margins(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """(n, rows) float64 margins of sample b's rows at inputs x (n, *input_shape)."""
        y = self.net(x.to(torch.float64).reshape((-1,) + tuple(self.net.input_shape)))
        return y.reshape(y.shape[0], -1) @ self.C[b].T + self.d[b]


def make_input_set(x, eps, norm, domain, input_set) -> InputSet:
    if input_set is not None:
        return input_set
    if eps is None:
        raise CertifyError("give eps (and norm) or an input_set")
    return ball(x.to(torch.float64), eps, norm, domain)


def pre_activation_bounds(net: Network, pl: PiecewiseLinear, input_set: InputSet, method: str,
                          given: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per ReLU layer (lower, upper) (B, n_k) float64, from ``given`` (dict node -> (lo, hi) or
    Bounds, used by tests to compare methods on identical bounds) or ``bounds.intermediate_bounds``."""
    if given is None:
        if method not in METHODS:
            raise CertifyError(f"bounds_method must be one of {METHODS}, got {method!r} "
                               "(IBP bounds make the relaxation looser than CROWN alone)")
        import bounds
        given = bounds.intermediate_bounds(net, input_set, method=method)
    lo0, hi0 = (t.to(torch.float64) for t in input_set.box())
    out = []
    for layer in pl.layers:
        if layer.pre_node == net.input_name:
            lo, hi = lo0, hi0
        else:
            if layer.pre_node not in given:
                raise CertifyError(f"no pre-activation bounds for node {layer.pre_node!r} (input of ReLU {layer.node!r})")
            v = given[layer.pre_node]
            lo, hi = (v.lower, v.upper) if hasattr(v, "lower") else v
        B = lo0.shape[0]
        lo = lo.detach().to(torch.float64).reshape(B, -1).numpy()
        hi = hi.detach().to(torch.float64).reshape(B, -1).numpy()
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise CertifyError(f"pre-activation bounds of {layer.pre_node!r} are not finite")
        pad = PAD * (1.0 + np.maximum(np.abs(lo), np.abs(hi)))
        out.append((lo - pad, hi + pad))
    return out


def prepare(net_or_module, x: torch.Tensor, eps=None, norm="inf", C=None, d=None, domain=None,
            input_set: InputSet | None = None, bounds_method: str = "crown", pre_bounds: dict | None = None,
            need_bounds: bool = True) -> Problem:
    """Build the ``Problem`` (see module doc). ``pre_bounds`` overrides the bound engine."""
    x = torch.as_tensor(x)
    net = as_network(net_or_module, x.shape[1:])
    if tuple(x.shape[1:]) != tuple(net.input_shape):
        raise CertifyError(f"input batch has per-sample shape {tuple(x.shape[1:])}, network expects {net.input_shape}")
    pl = linearize(net)
    s = make_input_set(x, eps, norm, domain, input_set)
    lo0, hi0 = (t.detach().to(torch.float64).reshape(x.shape[0], -1).numpy() for t in s.box())
    K = int(np.prod(net.output_shape))
    B = x.shape[0]
    C = torch.eye(K, dtype=torch.float64).expand(B, K, K) if C is None else torch.as_tensor(C).to(torch.float64)
    if C.dim() != 3 or C.shape[0] != B or C.shape[2] != K:
        raise CertifyError(f"C must have shape ({B}, rows, {K}), got {tuple(C.shape)}")
    d = torch.zeros(C.shape[:2], dtype=torch.float64) if d is None else torch.as_tensor(d).to(torch.float64)
    if tuple(d.shape) != tuple(C.shape[:2]):
        raise CertifyError(f"d must have shape {tuple(C.shape[:2])}, got {tuple(d.shape)}")
    pre = pre_activation_bounds(net, pl, s, bounds_method, pre_bounds) if need_bounds else []
    return Problem(net, pl, s, lo0, hi0, C.contiguous(), d.contiguous(), pre)


def is_box_set(s: InputSet) -> bool:
    return isinstance(s, Box) or s.norm in ("inf", "box")
