"""The training loop: one loop for every objective of ``certify.train.objectives``.

Per optimizer step: the schedule gives eps / kappa / beta and the learning rate, the objective
gives the loss, then backward, optional gradient-norm clipping, and the optimizer step. Per
epoch: a JSON line of metrics appended to ``metrics.jsonl`` and a checkpoint (``checkpoint.pt``,
see ``certify.train.checkpoint``) in the run directory. ``resume=True`` continues from the last
checkpoint and reproduces the uninterrupted run bit for bit (same data order, same attack
starts and noise: all randomness comes from one generator whose state is checkpointed; on
an accelerator the draws made there come from a generator on it, seeded per epoch from the run's
seed). The model and each batch live on ``device``; ``amp`` runs the forward passes of the
standard / PGD / Gaussian objectives under ``torch.autocast`` (float16 with gradient scaling on
CUDA, bfloat16 on the CPU), never those of the certified objectives, whose bounds must be exact.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch
from torch import nn

from certify.errors import CertifyError
from certify.train.checkpoint import load_training_state, restore, save_training_state
from certify.train.init import ibp_init
from certify.train.objectives import OBJECTIVES, Hyper, Step
from certify.train.schedule import Schedule

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
BOUND_OBJECTIVES = ("ibp", "crown-ibp")
AMP_OBJECTIVES = ("standard", "pgd", "gaussian")


@dataclass
class TrainConfig:
    """Everything that defines a run (plain values: stored in every checkpoint).

    ``eps`` is the training radius (L-inf for pgd/trades/ibp/crown-ibp, L2 for smoothadv),
    reached after ``warmup_epochs`` at eps 0 and ``ramp_epochs`` of ramp. ``kappa``/``beta`` are
    (start, end) of the natural-loss weight and of the CROWN-IBP weight over the same ramp.
    """

    objective: str = "standard"
    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_milestones: tuple = ()
    lr_gamma: float = 0.1
    eps: float = 0.0
    warmup_epochs: float = 0.0
    ramp_epochs: float = 0.0
    ramp: str = "linear"
    kappa: tuple = (1.0, 1.0)
    beta: tuple = (1.0, 1.0)
    clip_grad: float | None = None
    seed: int = 0
    shi_init: bool = False
    attack_steps: int = 10
    attack_step_size: float | None = None
    trades_beta: float = 6.0
    sigma: float = 0.25
    noise_samples: int = 1
    num_classes: int = 10
    amp: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise CertifyError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.optimizer not in ("adam", "sgd"):
            raise CertifyError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise CertifyError("batch size, epochs and learning rate must be positive")
        if self.amp and self.objective not in AMP_OBJECTIVES:
            raise CertifyError(f"mixed precision (amp) is offered for the {', '.join(AMP_OBJECTIVES)} objectives "
                               f"only, not {self.objective!r}: its bounds and attacks must run in full precision")
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        self.kappa = tuple(float(v) for v in self.kappa)
        self.beta = tuple(float(v) for v in self.beta)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})

    def hyper(self) -> Hyper:
        return Hyper(attack_steps=self.attack_steps, attack_step_size=self.attack_step_size,
                     trades_beta=self.trades_beta, sigma=self.sigma, noise_samples=self.noise_samples,
                     num_classes=self.num_classes)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    return Schedule(steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, eps=cfg.eps,
                    warmup_epochs=cfg.warmup_epochs, ramp_epochs=cfg.ramp_epochs, ramp_shape=cfg.ramp,
                    kappa=cfg.kappa, beta=cfg.beta, lr=cfg.lr, lr_schedule=cfg.lr_schedule,
                    lr_milestones=cfg.lr_milestones, lr_gamma=cfg.lr_gamma)


def ir_network(model: nn.Module, input_shape: tuple[int, ...]):
    """The IR network of ``model`` sharing its parameters (gradients of bounds reach the model)."""
    from certify.frontends.torch import from_module
    return from_module(model, tuple(input_shape))


def _mixed_precision(amp: bool, device: torch.device):
    """(a context-manager factory for the forward passes, a gradient scaler) for ``amp`` on ``device``."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)
    return (lambda: torch.autocast(device.type, dtype=dtype, enabled=amp)), scaler


def _read_metrics(path: str, upto_epoch: int) -> list[dict]:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn last line of an interrupted run
                if r.get("epoch", 0) <= upto_epoch:
                    rows.append(r)
    return rows


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, run_dir: str | None = None,
          resume: bool = False, progress: bool = False, max_batches: int | None = None,
          on_epoch: Callable[[dict], None] | None = None, device: torch.device | str | None = None) -> list[dict]:
    """Train ``model`` in place on images ``X`` (N, C, H, W) in [0, 1] and labels ``y`` (N,).

    Returns the per-epoch metrics (also appended to ``run_dir/metrics.jsonl`` when ``run_dir``
    is given, together with a checkpoint after every epoch). ``max_batches`` cuts every epoch
    short (benchmarks and tests). ``on_epoch(row)`` is called after each epoch's checkpoint.
    With ``resume=True`` the run continues after the last checkpointed epoch of ``run_dir``
    (the config must equal the checkpoint's). ``device``: where the model (moved there in place)
    and its batches live (default: the model's parameters' device); ``X`` and ``y`` may stay on
    the CPU.
    """
    if X.dim() < 2 or len(X) != len(y) or len(X) == 0:
        raise CertifyError(f"training data must be (N, ...) images with N labels; got {tuple(X.shape)} "
                           f"and {tuple(y.shape)}")
    objective = OBJECTIVES[cfg.objective]
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    if cfg.shi_init:
        ibp_init(model, gen)
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    model.to(device)
    model.train()
    autocast, scaler = _mixed_precision(cfg.amp, device)
    optimizer = make_optimizer(model, cfg)
    n = len(X)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    if max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, max_batches)
    schedule = make_schedule(cfg, steps_per_epoch)
    net = ir_network(model, tuple(X.shape[1:])) if cfg.objective in BOUND_OBJECTIVES else None
    hyper = cfg.hyper()

    ck_path = metrics_path = None
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        ck_path, metrics_path = os.path.join(run_dir, CHECKPOINT), os.path.join(run_dir, METRICS)
    start_epoch, step, history = 0, 0, []
    if resume:
        if ck_path is None:
            raise CertifyError("resume needs a run directory")
        state = load_training_state(ck_path)
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        if saved != cfg.to_dict():
            diff = sorted(k for k in saved if saved[k] != cfg.to_dict().get(k))
            raise CertifyError(f"{ck_path}: the run was started with different settings ({', '.join(diff)}); "
                               "resume with the same options or start a new run")
        restore(state, model, optimizer, gen)
        start_epoch, step = state["epoch"], state["step"]
        history = _read_metrics(metrics_path, start_epoch)
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device="cpu")
        draws = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(cfg.seed * 100003 + epoch)
        sums: dict[str, float] = {}
        seen = 0
        bar = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm
            bar = tqdm(bar, desc=f"epoch {epoch}/{cfg.epochs} {cfg.objective}", leave=False, dynamic_ncols=True,
                       file=sys.stderr, disable=None)
        for b in bar:
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            knobs = schedule.knobs(step)
            for group in optimizer.param_groups:
                group["lr"] = schedule.learning_rate(step)
            xb, yb = X[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            with autocast():
                loss, stats = objective(Step(model, net, xb, yb, knobs, hyper, draws))
            if not torch.isfinite(loss):
                raise CertifyError(f"epoch {epoch}, step {step}: the {cfg.objective} loss is {loss.item()}; "
                                   "lower the learning rate or lengthen the eps ramp")
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            seen += len(idx)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            if progress:
                bar.set_postfix(loss=f"{stats['loss']:.3f}", eps=f"{knobs.eps:.3g}")
        knobs = schedule.knobs(step - 1)
        row = {"epoch": epoch, "step": step, "lr": schedule.learning_rate(step - 1), "eps": knobs.eps,
               "kappa": knobs.kappa, "beta": knobs.beta, "seconds": round(time.perf_counter() - t0, 3),
               **{k: v / max(seen, 1) for k, v in sums.items()}}
        history.append(row)
        if run_dir is not None:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            save_training_state(ck_path, epoch=epoch, step=step, model=model, optimizer=optimizer,
                                generator=gen, config=cfg.to_dict())
        if progress:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
            print(f"epoch {epoch}/{cfg.epochs}: {shown}", file=sys.stderr)
        if on_epoch is not None:
            on_epoch(row)
    model.eval()
    return history
