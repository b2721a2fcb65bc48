"""Schedules of the training loop, as pure functions of the step: the epsilon ramp, the
kappa / beta mixing ramps (IBP, CROWN-IBP) and the learning rate.

Conventions: ``step`` counts optimizer steps from 0; a ramp holds ``v0`` before ``start``,
moves to ``v1`` over ``[start, end)`` and holds ``v1`` afterwards.

* ``linear``: straight line (Gowal et al. 2018, Zhang et al. 2020).
* ``smooth``: Shi et al. 2021: a polynomial phase ``c * u**p`` up to ``u = mid`` that joins a
  linear phase with the same slope, so the value starts growing slowly from 0 (no sudden
  jump of the bounds when epsilon leaves 0) and ends exactly at ``v1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from certify.errors import CertifyError

RAMPS = ("linear", "smooth")
LR_SCHEDULES = ("constant", "step", "cosine")


def _smooth_fraction(u: float, mid: float = 0.25, power: float = 4.0) -> float:
    """Fraction in [0, 1] at ramp progress ``u`` in [0, 1]; C1-continuous, f(0)=0, f(1)=1."""
    c = 1.0 / (mid ** power + power * mid ** (power - 1) * (1.0 - mid))
    if u <= mid:
        return c * u ** power
    return c * (mid ** power + power * mid ** (power - 1) * (u - mid))


def ramp(step: float, start: float, end: float, v0: float, v1: float, shape: str = "linear") -> float:
    """Value of a ramp from ``v0`` (before ``start``) to ``v1`` (from ``end`` on)."""
    if shape not in RAMPS:
        raise CertifyError(f"ramp shape must be one of {RAMPS}, got {shape!r}")
    if step < start:
        return v0
    if step >= end or end <= start:
        return v1
    u = (step - start) / (end - start)
    f = u if shape == "linear" else _smooth_fraction(u)
    return v0 + (v1 - v0) * f


@dataclass
class Knobs:
    """The per-step values an objective reads: perturbation radius and mixing weights."""

    eps: float
    kappa: float = 1.0
    beta: float = 1.0


@dataclass
class Schedule:
    """All step-dependent quantities of one run.

    ``eps`` is reached after ``warmup_epochs`` (eps = 0: natural training, the short warm-up
    of Shi et al. 2021) plus ``ramp_epochs`` (the ramp). ``kappa`` (weight of the natural loss)
    and ``beta`` (weight of the CROWN-IBP bound against the IBP bound) follow the same ramp,
    linearly, from their first to their second value. The learning rate is ``lr`` times the
    chosen decay: ``step`` multiplies by ``lr_gamma`` at each epoch in ``lr_milestones``;
    ``cosine`` anneals to 0 over ``epochs``.
    """

    steps_per_epoch: int
    epochs: int
    eps: float
    warmup_epochs: float = 0.0
    ramp_epochs: float = 0.0
    ramp_shape: str = "linear"
    kappa: tuple[float, float] = (1.0, 1.0)
    beta: tuple[float, float] = (1.0, 1.0)
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_milestones: tuple[float, ...] = field(default_factory=tuple)
    lr_gamma: float = 0.1

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise CertifyError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.ramp_shape not in RAMPS:
            raise CertifyError(f"--ramp must be one of {RAMPS}, got {self.ramp_shape!r}")
        if self.eps < 0 or self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise CertifyError("eps, warm-up epochs and ramp epochs must be non-negative")
        if self.steps_per_epoch < 1 or self.epochs < 1:
            raise CertifyError("a run needs at least one epoch of at least one batch")

    @property
    def ramp_start(self) -> float:
        return self.warmup_epochs * self.steps_per_epoch

    @property
    def ramp_end(self) -> float:
        return (self.warmup_epochs + self.ramp_epochs) * self.steps_per_epoch

    def knobs(self, step: int) -> Knobs:
        s, e = self.ramp_start, self.ramp_end
        return Knobs(eps=ramp(step, s, e, 0.0, self.eps, self.ramp_shape),
                     kappa=ramp(step, s, e, *self.kappa),
                     beta=ramp(step, s, e, *self.beta))

    def learning_rate(self, step: int) -> float:
        epoch = step / self.steps_per_epoch
        if self.lr_schedule == "step":
            return self.lr * self.lr_gamma ** sum(epoch >= m for m in self.lr_milestones)
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch / self.epochs, 1.0)))
        return self.lr
