"""The root of an obligation on a ``Chain``: CROWN over CROWN pre-activation bounds (float64),
computed once per obligation (the box's pre-activation bounds once per box, kept as
``search.roots[key]["crown"]``, where ReLU splitting's alpha-CROWN starts from) and shared by the
chain stages' ``root_scores``: the bound's input coefficients (input splitting's scores) and its
hidden coefficients (ReLU splitting's intercept scores) come from the same pass."""
from __future__ import annotations

import torch

from bounds.bab.branching import babsr_scores
from bounds.bab.chain_bounds import PROOF_TOL, DomainBounds, bound_domains, pre_activation_bounds
from bounds.bab.stages.base import Obligation, Search

_KEY = "chain-root"


def chain_root(search: Search, ob: Obligation) -> DomainBounds:
    """CROWN's bound of ``ob`` at its root (B = 1), cached in ``ob.state``."""
    if _KEY not in ob.state:
        lo, hi = ob.lo.reshape(1, -1).double(), ob.hi.reshape(1, -1).double()
        root = search.roots.setdefault(ob.key, {})
        if "crown" not in root:
            root["crown"] = search.timed("time_bound", pre_activation_bounds, search.chain, lo, hi)
        ob.state[_KEY] = search.timed("time_bound", bound_domains, search.chain, lo, hi, ob.C.unsqueeze(0),
                                      ob.d.unsqueeze(0), pre=root["crown"], recompute=False)
        search.counters["bound_calls"] += 1
    return ob.state[_KEY]


def proved_at_root(res: DomainBounds) -> bool:
    return bool(res.lower.max(1).values[0] > PROOF_TOL)


def input_scores(res: DomainBounds, ob: Obligation) -> torch.Tensor:
    """(n_in,) |coefficient| x width of the root bound's best row: how much of the bound's
    spread over the box each input dimension drives."""
    row = int(res.lower[0].argmax())
    return res.lam_in[0, row].abs() * (ob.hi - ob.lo).double()


def relu_scores(res: DomainBounds, sizes: list[int]) -> torch.Tensor:
    """(n_unstable,) the intercept scores (``branching.babsr_scores``) of the unstable neurons."""
    row = res.lower.max(1).indices
    splits = [torch.zeros(1, n, dtype=torch.int8) for n in sizes]
    sc = babsr_scores(res.lam_hidden, res.pre, splits, row)[0]
    return sc[torch.isfinite(sc)].double()
