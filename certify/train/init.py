"""Shi et al. 2021 ("Fast certified robust training with short warmup") initialization.

IBP bounds of a randomly initialized network explode with depth under the usual He / Kaiming
init; Shi et al. draw every affine weight from N(0, sigma^2) with ``sigma = sqrt(2 pi) / fan_in``,
which keeps the expected interval width roughly constant layer to layer, and zero the biases.
Combined with a short eps warm-up (``Schedule.warmup_epochs`` and the ``smooth`` ramp) this
replaces long ramps.
"""
from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> int:
    """Re-initialize every ``nn.Linear`` / ``nn.Conv2d`` in place; returns how many were changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            std = math.sqrt(2 * math.pi) / fan_in
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype, device="cpu") * std)
            if m.bias is not None:
                m.bias.zero_()
            n += 1
    return n
