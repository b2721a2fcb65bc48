"""Each training objective lowers its own loss on a fixed batch of the 8x8 digits; the attack
steps of PGD, TRADES and SmoothAdv stay inside their balls and do their job."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from certify.data import load_dataset
from certify.frontends.torch import from_module
from certify.models.zoo import build
from certify.spec import L2Ball, LinfBall
from certify.train.objectives import (OBJECTIVES, Hyper, Step, _kl, pgd_attack, smoothadv_attack, trades_attack,
                                      worst_case_ce)
from certify.train.schedule import Knobs


@pytest.fixture(scope="module")
def batch():
    X, y = load_dataset("digits", "train")
    return X[:64], y[:64]


def _loss(name, model, x, y, knobs, hyper, net=None):
    g = torch.Generator().manual_seed(1)       # same attack starts / noise before and after training
    return OBJECTIVES[name](Step(model, net, x, y, knobs, hyper, g))[0]


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_decreases_its_loss(name, batch):
    x, y = batch
    torch.manual_seed(0)
    model = build("digits-mlp", (1, 8, 8), 10)
    net = from_module(model, (1, 8, 8)) if name in ("ibp", "crown-ibp") else None
    knobs = Knobs(eps=0.5 if name == "smoothadv" else 0.05, kappa=0.5, beta=0.5)
    hyper = Hyper(attack_steps=5, noise_samples=2, sigma=0.25)
    before = _loss(name, model, x, y, knobs, hyper, net).item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(2)
    for _ in range(30):
        loss, _ = OBJECTIVES[name](Step(model, net, x, y, knobs, hyper, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _loss(name, model, x, y, knobs, hyper, net).item()
    assert after < 0.9 * before, (name, before, after)


def test_worst_case_ce_is_ce_of_worst_logits():
    # logits z with y = 0: margins z_0 - z_j are exact "bounds" at eps 0, so the worst-case CE is CE(z)
    z = torch.randn(5, 4)
    y = torch.zeros(5, dtype=torch.long)
    lb = z[:, :1] - z[:, 1:]
    assert torch.allclose(worst_case_ce(lb), F.cross_entropy(z, y, reduction="none"), atol=1e-6)


def test_trades_attack_stays_in_ball_and_raises_kl(batch):
    x, _ = batch
    torch.manual_seed(0)
    model = build("digits-mlp", (1, 8, 8), 10)
    eps = 0.1
    xa = trades_attack(model, x, eps, steps=10, generator=torch.Generator().manual_seed(0))
    assert bool(LinfBall(x, eps, (0.0, 1.0)).contains(xa, tol=1e-6).all())
    assert float((xa - x).abs().max()) <= eps + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    with torch.no_grad():
        p = F.log_softmax(model(x), 1)
        kl_adv = _kl(p, F.log_softmax(model(xa), 1)).mean()
        kl_rand = _kl(p, F.log_softmax(model(LinfBall(x, eps, (0.0, 1.0)).sample(1)[0]), 1)).mean()
    assert kl_adv > 2 * kl_rand


def test_pgd_attack_stays_in_ball_and_raises_ce(batch):
    x, y = batch
    torch.manual_seed(0)
    model = build("digits-mlp", (1, 8, 8), 10)
    xa = pgd_attack(model, x, y, 0.1, steps=10, generator=torch.Generator().manual_seed(0))
    assert bool(LinfBall(x, 0.1, (0.0, 1.0)).contains(xa).all())
    with torch.no_grad():
        assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y)


def test_smoothadv_attack_stays_in_l2_ball_and_lowers_soft_probability(batch):
    from smoothing import sample_noise, soft_log_probs
    x, y = batch
    torch.manual_seed(0)
    model = build("digits-mlp", (1, 8, 8), 10)
    eps = 0.5
    noise = sample_noise((4,) + tuple(x.shape), torch.Generator().manual_seed(0), "gaussian", 0.25)
    xa = smoothadv_attack(model, x, y, eps, noise, steps=10)
    assert bool(L2Ball(x, eps, (0.0, 1.0)).contains(xa, tol=1e-5).all())
    assert float((xa - x).flatten(1).norm(dim=1).max()) <= eps + 1e-5
    with torch.no_grad():
        before = soft_log_probs(model, x, noise).gather(1, y[:, None]).mean()
        after = soft_log_probs(model, xa, noise).gather(1, y[:, None]).mean()
    assert after < before
