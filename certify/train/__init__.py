"""Certified-defense training (layer 2): one loop (``loop.train``), the objectives in one table
(``objectives.OBJECTIVES``: standard, pgd, trades, ibp, crown-ibp, gaussian, smoothadv) built on
``certify.attack``, ``bounds`` and ``smoothing``, the schedules (eps / kappa / beta ramps,
learning rate), Shi et al.'s initialization, resumable checkpoints and the evaluation that
certifies a trained model with the matching engine."""
from certify.train.checkpoint import load_training_state, save_training_state
from certify.train.init import ibp_init
from certify.train.loop import TrainConfig, train
from certify.train.objectives import FAMILY, OBJECTIVES, Hyper, Step, worst_case_ce
from certify.train.schedule import Knobs, Schedule, ramp

__all__ = ["train", "TrainConfig", "OBJECTIVES", "FAMILY", "Hyper", "Step", "worst_case_ce", "Schedule", "Knobs",
           "ramp", "ibp_init", "save_training_state", "load_training_state"]
