"""Which split to search by: input splitting or activation splitting, from the root bound.

Each split doubles the domains, and a search has to split every direction that carries a
sizeable share of its branching scores: for input splitting the input dimensions, scored by
|coefficient| x width in the root bound (how much of the bound's spread each drives); for
activation splitting the unstable neurons, scored by the relaxation intercept the bound pays
for each (``branching.babsr_scores``). ``effective_count`` is how many directions carry the
scores (the participation ratio (sum s)^2 / sum s^2: n for n equal scores, 1 for one dominant
one), so the search with the smaller count has fewer directions to split, hence fewer domains:
a deep network fed by a few inputs has few input directions and many unstable neurons; an MLP
on an image has hundreds of input directions and fewer unstable neurons than that.
"""
from __future__ import annotations

import torch


def effective_count(scores: torch.Tensor) -> float:
    """(sum s)^2 / sum s^2 over the positive entries of ``scores`` (0 when there is none)."""
    s = scores.double().flatten()
    s = s[s > 0]
    return float(s.sum() ** 2 / (s * s).sum()) if s.numel() else 0.0


def split_counts(scores: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Per kind of split ("input", "activation"), the effective counts of its root scores summed
    over the open obligations (``scores[kind]``: one score vector per obligation)."""
    return {kind: sum(map(effective_count, per)) for kind, per in scores.items()}


def prefer_input_split(counts: dict[str, float]) -> bool:
    """Whether input splitting is the search to run, from ``split_counts``: it has at most as
    many directions to split as activation splitting (module docstring)."""
    return counts["input"] <= counts["activation"]


CLOSE = 2.0   # counts within this factor of each other do not tell the searches apart


def split_kinds(counts: dict[str, float]) -> tuple[str, ...]:
    """The kinds of split to search by, from ``split_counts``: the one with fewer directions, or
    both in turns where the counts are within a factor ``CLOSE`` (the participation ratio
    estimates how many directions carry the scores, not how many splits each needs: a neuron's
    split removes its relaxation, an input's halves one width, so near-equal counts are a tie)."""
    a, b = counts["input"], counts["activation"]
    if max(a, b) <= CLOSE * min(a, b):
        return ("input", "activation")
    return ("input",) if a < b else ("activation",)
