"""Attacks as stages: ``OpeningAttack`` on a whole region before any proof, ``ClosingAttack`` on
one obligation before a search gives it up. Both only ever return ``sat`` (a point confirmed in
float64 by the ``Falsifier``) or ``timeout``."""
from __future__ import annotations

import torch

from bounds.bab.stages.base import Obligation, Outcome, Stage


class OpeningAttack(Stage):
    """The box's centre and corners, then PGD with restarts on the region's violation value;
    inputs with at most ``attack_max_dims`` dimensions also get thousands of attacks side by side,
    then samples biased to the box's faces (where PGD stalls): cheap for small inputs, and most
    ``sat`` instances end here."""

    name = "falsify"

    def run(self, ob: Obligation, until: float) -> Outcome:
        s, fal, opts = self.search, self.search.falsifier, self.search.opts
        lo, hi = ob.lo, ob.hi
        how, ce = "pgd", fal.check_points(torch.stack([(lo + hi) / 2, lo, hi]))
        if ce is None:
            ce, _ = fal.pgd(lo.unsqueeze(0), hi.unsqueeze(0), ob.disjuncts, steps=50, restarts=opts.pgd_restarts,
                            deadline=until)
        if ce is None and s.n_in <= opts.attack_max_dims:
            ce, _ = fal.pgd(lo.unsqueeze(0), hi.unsqueeze(0), ob.disjuncts, steps=100, restarts=1, parallel=2000,
                            deadline=until)
            if ce is None:
                how, ce = "sample", fal.sample(lo, hi, ob.disjuncts, deadline=until)
        return Outcome("sat", ce, self.name, how) if ce is not None else Outcome("timeout")


class ClosingAttack(Stage):
    """PGD (100 steps, ``pgd_restarts`` restarts) on one obligation, once per obligation however
    often it is run (a search may give an obligation up in several passes)."""

    name = "closing-attack"

    def run(self, ob: Obligation, until: float) -> Outcome:
        if ob.state.get(self.name):
            return Outcome("timeout")
        ob.state[self.name] = True
        ce = self.search.attack(ob, steps=100, restarts=self.search.opts.pgd_restarts, deadline=until)
        return Outcome("sat", ce, "falsify", "pgd") if ce is not None else Outcome("timeout")
