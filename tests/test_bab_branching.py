"""The ReLU-splitting score (``bounds.bab.branching.babsr_scores``) on hand-made numbers."""
from __future__ import annotations

import math

import torch

from bounds.bab.branching import babsr_scores


def test_score_counts_the_chord_intercept_only_where_the_coefficient_is_negative():
    # one domain, one margin row, a hidden layer of 5 neurons:
    # 0, 1 unstable with lambda < 0; 2 unstable with lambda > 0; 3 stable; 4 unstable but split
    l = torch.tensor([[-1.0, -2.0, -3.0, 0.5, -1.0]], dtype=torch.float64)
    u = torch.tensor([[1.0, 2.0, 1.0, 2.0, 1.0]], dtype=torch.float64)
    lam = torch.tensor([[[-2.0, -1.0, 5.0, -7.0, -3.0]]], dtype=torch.float64)
    splits = [torch.tensor([[0, 0, 0, 0, 1]], dtype=torch.int8)]
    sc = babsr_scores([lam], [(l, u)], splits, torch.zeros(1, dtype=torch.long))[0]
    # |lambda| * (-l u / (u - l)): 2 * 0.5 and 1 * 1.0, plus the 1e-9 (u - l) tie-break
    assert math.isclose(float(sc[0]), 1.0 + 2e-9, rel_tol=1e-6)
    assert math.isclose(float(sc[1]), 1.0 + 4e-9, rel_tol=1e-6)
    # a positive coefficient takes the lower line, which has no intercept: tie-break only
    assert 0 < float(sc[2]) < 1e-8
    assert math.isinf(float(sc[3])) and float(sc[3]) < 0
    assert math.isinf(float(sc[4])) and float(sc[4]) < 0
    # the row followed is the one given: a second row with other signs changes the ranking
    lam2 = torch.cat([lam, -lam], 1)
    sc2 = babsr_scores([lam2], [(l, u)], splits, torch.ones(1, dtype=torch.long))[0]
    assert int(sc2.argmax()) == 2 and math.isclose(float(sc2[2]), 5 * 0.75, rel_tol=1e-6)
    assert 0 < float(sc2[0]) < 1e-8
