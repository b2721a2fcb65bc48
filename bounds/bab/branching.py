"""Which ReLU to split: a BaBSR-like score.

``babsr_scores``: for every unstable, unsplit neuron, max(-lambda, 0) * (-l u / (u - l)): the
intercept of the upper chord, which the bound pays only where the neuron's coefficient lambda in
the domain's bound is negative (there the chord is the relaxation used; a positive lambda takes
the lower line alpha z, which has no intercept), and which splitting removes. Neurons with
lambda >= 0 get only a tie-break (1e-9 (u - l)); -inf marks stable or split neurons.
"""
from __future__ import annotations

import numpy as np
import torch

from certify.ir import ReLU
from bounds.activations import ACTIVATIONS
from bounds.bab.chain import Chain

_RELU = ACTIVATIONS[ReLU]

Tensor = torch.Tensor


def babsr_scores(lam_hidden: list[Tensor], pre, splits, rows: Tensor) -> Tensor:
    """(B, sum n_k) float32 scores; ``lam_hidden[k]`` (B, r, n_k), ``rows`` (B,) the row to follow."""
    idx = torch.arange(rows.shape[0], device=rows.device)
    out = []
    for (l, u), lam, s in zip(pre, lam_hidden, splits):
        lam = lam[idx, rows]
        unstable = _RELU.unstable(None, l, u) & (s == 0)
        den = torch.where(unstable, u - l, torch.ones_like(u))
        sc = (-lam).clamp(min=0) * (-l * u / den) + 1e-9 * (u - l)
        out.append(torch.where(unstable, sc, torch.full_like(sc, -float("inf"))))
    return torch.cat(out, 1).float()


def set_split(chain: Chain, splits: list[Tensor], neuron: Tensor, sign: int) -> list[Tensor]:
    """Copies of ``splits`` (lists of (B, n_k) int8) with flat neuron index ``neuron[b]`` set to ``sign``."""
    out = [s.clone() for s in splits]
    offs = np.cumsum([0] + chain.hidden_sizes)
    for layer in range(len(chain.hidden_sizes)):
        sel = (neuron >= offs[layer]) & (neuron < offs[layer + 1])
        if sel.any():
            out[layer][torch.nonzero(sel).flatten(), neuron[sel] - int(offs[layer])] = sign
    return out


def split_children(chain: Chain, splits: list[Tensor], neuron: Tensor) -> tuple[list[Tensor], Tensor]:
    """The two children of each of m domains split at flat neuron index ``neuron[b]``: their splits
    (first the m active (+1) copies, then the m inactive (-1) ones) and, per child (2 m,), the
    hidden layer of the split (only later layers' bounds can change: ``refine_from``)."""
    layer = torch.bucketize(neuron, torch.as_tensor(np.cumsum(chain.hidden_sizes), device=neuron.device), right=True)
    children = [torch.cat([a, b]) for a, b in zip(set_split(chain, splits, neuron, 1),
                                                  set_split(chain, splits, neuron, -1))]
    return children, torch.cat([layer, layer])
