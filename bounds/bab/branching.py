"""Which ReLU to split: a BaBSR-like score.

``babsr_scores``: for every unstable, unsplit neuron, max(-lambda, 0) * (-l u / (u - l)): the
intercept of the upper chord, which the bound pays only where the neuron's coefficient lambda in
the domain's bound is negative (there the chord is the relaxation used; a positive lambda takes
the lower line alpha z, which has no intercept), and which splitting removes. Neurons with
lambda >= 0 get only a tie-break (1e-9 (u - l)); -inf marks stable or split neurons.

Counting |lambda| instead (sessions 1-10) ranked neurons whose split removes no intercept at all.
With the sign, on mnistfc (30 s of splitting, one thread): 256x4 prop_3_0.03's first obligation
ends with worst open bound -0.07 and 1,060 open domains instead of -0.36 and 2,825; all nine
obligations of 256x2 prop_1_0.03 are proved in 6 s (31-855 domains each) where four of them were
still open after 8 s each (-0.06 to -0.44). abCROWN's BaBSR adds a term for the layer's bias,
min(b lambda (s - 1), b lambda s) (s the chord's slope): it was worse here (-0.13, 1,389 open).

Filtered smart branching (De Palma et al. 2021: bound both children of the k best-scored neurons
with one CROWN pass at the parent's alpha and beta, split the one whose worse child is best) was
tried and dropped: on mnistfc 256x4 prop_0 (eps 0.03) it needed 2-3x the domains with k = 3 or 6
when children's intermediate bounds are refined (its estimate cannot see that refinement), and
was no faster without refinement (42 s against 40 s). Both were measured with the |lambda| score,
which also chose FSB's k candidates; FSB has not been tried again with the signed score.
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
    idx = torch.arange(rows.shape[0])
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
    layer = torch.bucketize(neuron, torch.as_tensor(np.cumsum(chain.hidden_sizes)), right=True)
    children = [torch.cat([a, b]) for a, b in zip(set_split(chain, splits, neuron, 1),
                                                  set_split(chain, splits, neuron, -1))]
    return children, torch.cat([layer, layer])
