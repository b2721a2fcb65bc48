"""Training checkpoints: everything needed to continue a run bit for bit, as plain tensors and
dicts so that ``torch.load(weights_only=True)`` reads them (no pickled code).

Contents: format tag, epoch (last finished), optimizer step count, the model's state_dict, the
optimizer's state_dict, the learning-rate schedule's state (its step), the global torch RNG state,
the run's generator state (shuffling, attack starts, noise) and the run config (plain values).
Written to a temporary file and renamed, so an interruption never leaves a torn checkpoint.
"""
from __future__ import annotations

import os

import torch

from certify.errors import CertifyError
from certify.models.zoo import TRAIN_FORMAT as FORMAT


def save_training_state(path: str, *, epoch: int, step: int, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, config: dict) -> None:
    state = {
        "format": FORMAT,
        "epoch": int(epoch),
        "step": int(step),
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": int(step)},
        "rng": torch.get_rng_state(),
        "generator": generator.get_state(),
        "config": config,
    }
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: str) -> dict:
    """The checkpoint dict (see module doc); ``CertifyError`` if it is missing or not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CertifyError(f"no training checkpoint at {path}: nothing to resume") from None
    except Exception as e:
        raise CertifyError(f"{path}: unreadable training checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CertifyError(f"{path}: not a certify training checkpoint (format {FORMAT!r})")
    return state


def restore(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            generator: torch.Generator) -> None:
    """Load model, optimizer and RNG states from a checkpoint dict, in place."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CertifyError(f"the checkpoint does not fit this model (was the run started with another --model?): "
                           f"{str(e).splitlines()[0][:200]}") from None
    torch.set_rng_state(state["rng"])
    generator.set_state(state["generator"])
