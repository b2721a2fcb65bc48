"""``Bounds``: the result type of every bound computation.

``lower`` and ``upper`` have the same shape: (B, rows) for a spec ``C @ y + d`` or
(B, *shape) for a node's output. Every value ``v`` that the bounded quantity takes on the
input set satisfies ``lower <= v <= upper`` (up to float32 rounding, see bounds/crown.py).
An entry that was not computed is ``+inf`` (upper) or ``-inf`` (lower): still sound.
``A`` (with ``return_A``): the linear functions of the input those bounds come from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearBounds:
    """Linear bounds of a spec in the input (auto_LiRPA's ``return_A``): for every x of the input
    set, ``lA . x + lbias <= C @ f(x) + d <= uA . x + ubias``. Shapes: ``lA``, ``uA`` (B, rows,
    *input_shape); ``lbias``, ``ubias`` (B, rows)."""

    lA: torch.Tensor
    lbias: torch.Tensor
    uA: torch.Tensor
    ubias: torch.Tensor

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) linear functions at points ``x`` (B, *input_shape): each (B, rows)."""
        xf = x.to(self.lA.dtype).flatten(1).unsqueeze(2)
        lo = torch.bmm(self.lA.flatten(2), xf).squeeze(2) + self.lbias
        hi = torch.bmm(self.uA.flatten(2), xf).squeeze(2) + self.ubias
        return lo, hi


@dataclass
class Bounds:
    lower: torch.Tensor
    upper: torch.Tensor
    A: LinearBounds | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape)

    @property
    def gap(self) -> torch.Tensor:
        """upper - lower, elementwise."""
        return self.upper - self.lower

    def detach(self) -> "Bounds":
        A = None if self.A is None else LinearBounds(*(t.detach() for t in (self.A.lA, self.A.lbias, self.A.uA,
                                                                            self.A.ubias)))
        return Bounds(self.lower.detach(), self.upper.detach(), A)

    def intersect(self, other: "Bounds") -> "Bounds":
        """The elementwise tighter of two sound bounds of the same quantity (also sound)."""
        return Bounds(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))

    def verified(self) -> torch.Tensor:
        """(B,) bool: every row's lower bound is > 0 (the property ``C @ y + d > 0`` is proved)."""
        return (self.lower.flatten(1) > 0).all(dim=1)

    def __iter__(self):
        yield self.lower
        yield self.upper
