"""``Bounds``: the result type of every bound computation.

``lower`` and ``upper`` have the same shape: (B, rows) for a spec ``C @ y + d`` or
(B, *shape) for a node's output. Every value ``v`` that the bounded quantity takes on the
input set satisfies ``lower <= v <= upper`` (up to float32 rounding, see bounds/crown.py).
An entry that was not computed is ``+inf`` (upper) or ``-inf`` (lower): still sound.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Bounds:
    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape)

    @property
    def gap(self) -> torch.Tensor:
        """upper - lower, elementwise."""
        return self.upper - self.lower

    def detach(self) -> "Bounds":
        return Bounds(self.lower.detach(), self.upper.detach())

    def intersect(self, other: "Bounds") -> "Bounds":
        """The elementwise tighter of two sound bounds of the same quantity (also sound)."""
        return Bounds(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))

    def verified(self) -> torch.Tensor:
        """(B,) bool: every row's lower bound is > 0 (the property ``C @ y + d > 0`` is proved)."""
        return (self.lower.flatten(1) > 0).all(dim=1)

    def __iter__(self):
        yield self.lower
        yield self.upper
