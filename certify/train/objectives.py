"""The training objectives, one table: ``OBJECTIVES[name](step) -> (loss, stats)``.

Every objective reads one ``Step``: the torch module, its IR network (built by
``certify.frontends.torch.from_module``: it shares the module's parameters, so gradients of
bounds computed on it reach the module), a batch ``x`` (B, C, H, W) in [0, 1] with labels ``y``
(B,), and the step's knobs (eps, kappa, beta) from ``certify.train.schedule``.

* ``standard``: cross-entropy.
* ``pgd``: Madry et al. 2018, cross-entropy at a PGD point (random start, L-inf ball).
* ``trades``: Zhang et al. 2019, CE(f(x), y) + beta_trades * KL(f(x) || f(x')), x' from PGD on
  the KL started at x + 0.001 N(0, 1).
* ``ibp``: Gowal et al. 2018, kappa * CE(f(x), y) + (1 - kappa) * CE(z_worst, y), z_worst from
  the IBP lower bounds of the margins ``y_true - y_j`` (``bounds.ibp``).
* ``crown-ibp``: Zhang et al. 2020, the same with the margin lower bound
  beta * CROWN-IBP + (1 - beta) * IBP (``bounds.crown(intermediate="ibp")`` and ``bounds.ibp``).
* ``gaussian``: Cohen et al. 2019, CE at x + sigma * noise (``smoothing`` noise sampler).
* ``smoothadv``: Salman et al. 2019, PGD in an L2 ball on the soft smoothed classifier
  (mean softmax over m noise draws), then the mean CE of the m noisy copies of the PGD point.

The worst-case cross-entropy of margin lower bounds ``lb`` (B, K-1) is
``log(1 + sum_j exp(-lb_j))``: the CE of logits whose true entry is 0 and other entries -lb.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from certify.attack import pgd_minimize
from certify.ir import Network
from certify.spec import L2Ball, LinfBall, robustness_matrix
from certify.train.schedule import Knobs

DOMAIN = (0.0, 1.0)


@dataclass
class Hyper:
    """Objective hyper-parameters that do not change during a run."""

    attack_steps: int = 10          # PGD / TRADES / SmoothAdv steps
    attack_step_size: float | None = None   # default: 2.5 * eps / steps
    trades_beta: float = 6.0        # weight of the TRADES KL term
    sigma: float = 0.25             # Gaussian noise level (gaussian, smoothadv)
    noise_samples: int = 1          # m: noise draws per input (smoothadv)
    num_classes: int = 10


@dataclass
class Step:
    model: nn.Module
    net: Network | None
    x: torch.Tensor
    y: torch.Tensor
    knobs: Knobs
    hyper: Hyper = field(default_factory=Hyper)
    generator: torch.Generator | None = None


Stats = dict[str, float]


def worst_case_ce(lower: torch.Tensor) -> torch.Tensor:
    """Per-sample CE (B,) of the worst-case logits given margin lower bounds ``lower`` (B, K-1)."""
    z = torch.cat([torch.zeros_like(lower[:, :1]), -lower], dim=1)
    return torch.logsumexp(z, dim=1)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


# ------------------------------------------------------------------------------ attacks
def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
               step_size: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Madry PGD: a point of the L-inf ball (clipped to [0, 1]) of high cross-entropy, (B, *shape)."""
    s = LinfBall(x.detach(), eps, DOMAIN)
    start = s.project(s.sample(1, generator)[0])
    xa, _ = pgd_minimize(lambda z: -F.cross_entropy(model(z), y, reduction="none"), s, steps=steps,
                         step_size=step_size, start=start)
    return xa


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per sample from log-probabilities (B, K) -> (B,)."""
    return (p_log.exp() * (p_log - q_log)).sum(1)


def trades_attack(model: nn.Module, x: torch.Tensor, eps: float, steps: int, step_size: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES inner maximization: x' in the L-inf ball (clipped to [0, 1]) maximizing KL(f(x) || f(x'))."""
    s = LinfBall(x.detach(), eps, DOMAIN)
    with torch.no_grad():
        p_log = F.log_softmax(model(x), 1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    start = s.project(x.detach() + 0.001 * noise)
    xa, _ = pgd_minimize(lambda z: -_kl(p_log, F.log_softmax(model(z), 1)), s, steps=steps,
                         step_size=step_size, start=start)
    return xa


def _noise(shape: tuple[int, ...], sigma: float, generator: torch.Generator | None, dtype, device) -> torch.Tensor:
    """Gaussian noise of standard deviation ``sigma`` from the smoothing engine's sampler."""
    from smoothing.noise import sample_noise
    return sample_noise(shape, generator, "gaussian", sigma, dtype=dtype, device=device)


def smoothadv_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, noise: torch.Tensor,
                     steps: int, step_size: float | None = None) -> torch.Tensor:
    """SmoothAdv inner maximization: x' in the L2 ball (clipped to [0, 1]) minimizing the soft
    smoothed classifier's log-probability of ``y``, log mean_i softmax(f(x' + noise_i))_y.

    ``noise`` (m, B, *shape) is fixed during the attack (Salman et al. 2019, SmoothAdv-PGD).
    """
    from smoothing import soft_log_probs
    s = L2Ball(x.detach(), eps, DOMAIN)
    yy = y.reshape(-1, 1)
    xa, _ = pgd_minimize(lambda z: soft_log_probs(model, z, noise).gather(1, yy)[:, 0], s, steps=steps,
                         step_size=step_size)
    return xa


# ------------------------------------------------------------------------------ objectives
def standard(st: Step) -> tuple[torch.Tensor, Stats]:
    logits = st.model(st.x)
    loss = F.cross_entropy(logits, st.y)
    return loss, {"loss": loss.item(), "acc": _accuracy(logits, st.y)}


def pgd(st: Step) -> tuple[torch.Tensor, Stats]:
    if st.knobs.eps <= 0:
        return standard(st)
    xa = pgd_attack(st.model, st.x, st.y, st.knobs.eps, st.hyper.attack_steps, st.hyper.attack_step_size,
                    st.generator)
    logits = st.model(xa)
    loss = F.cross_entropy(logits, st.y)
    return loss, {"loss": loss.item(), "adv_acc": _accuracy(logits, st.y)}


def trades(st: Step) -> tuple[torch.Tensor, Stats]:
    logits = st.model(st.x)
    ce = F.cross_entropy(logits, st.y)
    if st.knobs.eps <= 0:
        return ce, {"loss": ce.item(), "acc": _accuracy(logits, st.y)}
    xa = trades_attack(st.model, st.x, st.knobs.eps, st.hyper.attack_steps, st.hyper.attack_step_size,
                       st.generator)
    adv = st.model(xa)
    kl = _kl(F.log_softmax(logits, 1), F.log_softmax(adv, 1)).mean()
    loss = ce + st.hyper.trades_beta * kl
    return loss, {"loss": loss.item(), "acc": _accuracy(logits, st.y), "kl": kl.item(),
                  "adv_acc": _accuracy(adv, st.y)}


def margin_lower_bound(net: Network, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float,
                       num_classes: int, crown: bool) -> torch.Tensor:
    """Lower bounds (B, K-1) of the margins y_true - y_j over the L-inf ball (clipped to [0, 1]):
    IBP (``crown=False``) or beta * CROWN-IBP + (1 - beta) * IBP, straight from ``bounds``."""
    import bounds
    C = robustness_matrix(y, num_classes, dtype=x.dtype)
    lb = None
    if not crown or beta < 1:
        lb = bounds.ibp(net, x, eps=eps, norm="inf", C=C, domain=DOMAIN).lower
    if crown and beta > 0:
        lc = bounds.crown(net, x, eps=eps, norm="inf", C=C, domain=DOMAIN, intermediate="ibp", upper=False).lower
        lb = lc if lb is None else beta * lc + (1 - beta) * lb
    return lb


def _bound_objective(st: Step, crown: bool) -> tuple[torch.Tensor, Stats]:
    logits = st.model(st.x)
    nat = F.cross_entropy(logits, st.y)
    k = st.knobs
    if k.eps <= 0:
        return nat, {"loss": nat.item(), "acc": _accuracy(logits, st.y)}
    lb = margin_lower_bound(st.net, st.x, st.y, k.eps, k.beta, st.hyper.num_classes, crown)
    rob = worst_case_ce(lb).mean()
    loss = k.kappa * nat + (1 - k.kappa) * rob
    return loss, {"loss": loss.item(), "acc": _accuracy(logits, st.y), "robust_loss": rob.item(),
                  "verified_acc": (lb.min(1).values > 0).float().mean().item()}


def ibp(st: Step) -> tuple[torch.Tensor, Stats]:
    return _bound_objective(st, crown=False)


def crown_ibp(st: Step) -> tuple[torch.Tensor, Stats]:
    return _bound_objective(st, crown=True)


def gaussian(st: Step) -> tuple[torch.Tensor, Stats]:
    xn = st.x + _noise(tuple(st.x.shape), st.hyper.sigma, st.generator, st.x.dtype, st.x.device)
    logits = st.model(xn)
    loss = F.cross_entropy(logits, st.y)
    return loss, {"loss": loss.item(), "noisy_acc": _accuracy(logits, st.y)}


def smoothadv(st: Step) -> tuple[torch.Tensor, Stats]:
    m = max(1, st.hyper.noise_samples)
    noise = _noise((m,) + tuple(st.x.shape), st.hyper.sigma, st.generator, st.x.dtype, st.x.device)
    xa = st.x
    if st.knobs.eps > 0:
        xa = smoothadv_attack(st.model, st.x, st.y, st.knobs.eps, noise, st.hyper.attack_steps,
                              st.hyper.attack_step_size)
    B = st.x.shape[0]
    logits = st.model((xa.unsqueeze(0) + noise).reshape((m * B,) + tuple(st.x.shape[1:])))
    yy = st.y.repeat(m)
    loss = F.cross_entropy(logits, yy)
    return loss, {"loss": loss.item(), "noisy_adv_acc": _accuracy(logits, yy)}


OBJECTIVES: dict[str, Callable[[Step], tuple[torch.Tensor, Stats]]] = {
    "standard": standard,
    "pgd": pgd,
    "trades": trades,
    "ibp": ibp,
    "crown-ibp": crown_ibp,
    "gaussian": gaussian,
    "smoothadv": smoothadv,
}

# Which engine certifies a model trained with each objective (used by the evaluation).
FAMILY = {"standard": "bounds", "pgd": "bounds", "trades": "bounds", "ibp": "bounds", "crown-ibp": "bounds",
          "gaussian": "smoothing", "smoothadv": "smoothing"}
# The norm of each objective's perturbation (training eps and evaluation eps).
NORM = {"standard": "inf", "pgd": "inf", "trades": "inf", "ibp": "inf", "crown-ibp": "inf",
        "gaussian": "2", "smoothadv": "2"}
