"""The stages of the verification search (``bounds.bab.verify`` runs them as a schedule).

``SPLIT_STAGES``: the branch-and-bound searches, fast paths first. For each kind of split
("input", "activation") the schedule takes the first one whose ``applies(search)`` holds. To add
a search: write a ``SplitStage`` subclass (``name``, ``splits``, ``applies``, ``root_scores``,
``run``; ``prepare`` / ``order`` / ``workers`` / ``tightens`` as it needs) and list it here.
"""
from bounds.bab.stages.base import COUNTERS, Helper, Obligation, Outcome, Search, SplitStage, Stage
from bounds.bab.stages.chain_input import ChainInputSplit
from bounds.bab.stages.chain_relu import ChainReluSplit
from bounds.bab.stages.falsify import ClosingAttack, OpeningAttack
from bounds.bab.stages.graph_activation import GraphActivationSplit
from bounds.bab.stages.graph_input import GraphInputSplit
from bounds.bab.stages.in_turns import InTurns
from bounds.bab.stages.milp import MilpBeside
from bounds.bab.stages.tighten import TightenBounds

SPLIT_STAGES: list[type[SplitStage]] = [
    ChainInputSplit,
    ChainReluSplit,
    GraphInputSplit,
    GraphActivationSplit,
]

__all__ = ["SPLIT_STAGES", "COUNTERS", "Stage", "SplitStage", "Helper", "Obligation", "Outcome", "Search",
           "ChainInputSplit", "ChainReluSplit", "GraphInputSplit", "GraphActivationSplit", "InTurns", "OpeningAttack", "ClosingAttack",
           "MilpBeside", "TightenBounds"]
