"""The result of a convex certificate: per-row lower bounds, solver statuses, time, verdicts.

Rule: a row's lower bound counts only when its status is in ``CERTIFYING`` (``optimal``, or
``dual_feasible`` for a bound rebuilt from a dual point that is valid whether or not the
solver converged). Any other status makes the sample ``unknown`` unless another row already
decides it (a checked counterexample: ``falsified``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

CERTIFYING = ("optimal", "dual_feasible")
ZERO_TOL = 1e-6   # a counterexample whose margin lies within this of zero is not trusted


@dataclass
class ConvexResult:
    """``lower``: (B, rows) float64 certified lower bounds of ``C @ y + d`` (``-inf`` where none);
    ``upper``: (B, rows) best value found by a checked feasible point (``+inf`` where none; MILP);
    ``status``: B lists of per-row solver statuses; ``seconds``: (B,) wall time per sample;
    ``counterexample``: per sample a checked input (*input_shape) violating the property or None."""

    method: str
    solver: str
    lower: torch.Tensor
    upper: torch.Tensor
    status: list[list[str]]
    seconds: list[float]
    counterexample: list[torch.Tensor | None] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "ConvexResult":
        """This result with its tensors on ``device`` (the solvers produce them on the CPU)."""
        def move(t):
            return t if t is None else t.to(device)
        return replace(self, lower=move(self.lower), upper=move(self.upper),
                       counterexample=[move(c) for c in self.counterexample])

    @property
    def verdict(self) -> list[str]:
        """Per sample: certified / falsified / unknown / not_certified (see module doc)."""
        out = []
        for b, st in enumerate(self.status):
            if self.counterexample and self.counterexample[b] is not None:
                out.append("falsified")
            elif all(s in CERTIFYING for s in st) and bool((self.lower[b] > 0).all()):
                out.append("certified")
            elif any(s not in CERTIFYING for s in st):
                out.append("unknown")
            else:
                out.append("not_certified")
        return out

    def evidence(self, b: int) -> dict:
        """JSON-ready evidence of sample ``b`` for a result record."""
        ev = {"solver": self.solver, "status": self.status[b], "lower": _floats(self.lower[b])}
        if bool(torch.isfinite(self.upper[b]).any()):
            ev["upper"] = _floats(self.upper[b])
        if self.counterexample and self.counterexample[b] is not None:
            ev["counterexample"] = [float(v) for v in self.counterexample[b].flatten().tolist()]
        return ev


def _floats(t: torch.Tensor) -> list:
    """Floats for JSON: non-finite values as the strings 'inf' / '-inf' / 'nan'."""
    return [v if math.isfinite(v) else str(v) for v in (float(a) for a in t.tolist())]
