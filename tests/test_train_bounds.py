"""IBP / CROWN-IBP training sits on the bounds engine: its losses are built from exactly the
bounds ``bounds`` computes on the same batch (one code path), the gradients reach the torch
module, the bounds it trains on are sound, and IBP training buys certificates."""
from __future__ import annotations

import pytest
import torch

import bounds
from certify.data import load_dataset
from certify.frontends.torch import from_module
from certify.models.zoo import build
from certify.spec import LinfBall, margin_values, robustness_matrix
from certify.train import OBJECTIVES, Hyper, Step, TrainConfig, train, worst_case_ce
from certify.train.objectives import margin_lower_bound
from certify.train.schedule import Knobs

EPS = 0.05


@pytest.fixture(scope="module")
def batch():
    X, y = load_dataset("digits", "train")
    return X[:32], y[:32]


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name,beta", [("ibp", 1.0), ("crown-ibp", 1.0), ("crown-ibp", 0.3), ("crown-ibp", 0.0)])
def test_loss_is_the_engines_bound(name, beta, batch):
    x, y = batch
    torch.manual_seed(0)
    model = build("digits-cnn", (1, 8, 8), 10)
    net = from_module(model, (1, 8, 8))
    kappa = 0.25
    loss, _ = OBJECTIVES[name](Step(model, net, x, y, Knobs(EPS, kappa, beta), Hyper()))
    model.zero_grad()
    loss.backward()
    g_train = _grads(model)

    # the same quantity, computed here straight from the public bounds API on a fresh trace
    C = robustness_matrix(y, 10)
    ref_net = from_module(model, (1, 8, 8))
    lb_ibp = bounds.ibp(ref_net, x, eps=EPS, C=C, domain=(0.0, 1.0)).lower
    lb_crown = bounds.compute_bounds(ref_net, LinfBall(x, EPS, (0.0, 1.0)), C=C, method="crown-ibp").lower
    lb = lb_ibp if name == "ibp" else beta * lb_crown + (1 - beta) * lb_ibp
    ref = kappa * torch.nn.functional.cross_entropy(model(x), y) + (1 - kappa) * worst_case_ce(lb).mean()
    assert torch.allclose(loss, ref, rtol=0, atol=1e-6), (loss.item(), ref.item())
    model.zero_grad()
    ref.backward()
    for a, b in zip(g_train, _grads(model)):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(float(g.abs().sum()) > 0 for g in g_train)


@pytest.mark.parametrize("crown", [False, True])
def test_training_bounds_are_sound(crown, batch):
    x, y = batch
    torch.manual_seed(0)
    model = build("digits-mlp", (1, 8, 8), 10)
    net = from_module(model, (1, 8, 8))
    with torch.no_grad():
        lb = margin_lower_bound(net, x, y, EPS, 0.5, 10, crown)
        pts = LinfBall(x, EPS, (0.0, 1.0)).sample(200, torch.Generator().manual_seed(0))
        C = robustness_matrix(y, 10)
        sampled = torch.stack([margin_values(model(p), C) for p in pts]).min(0).values
    assert bool((lb <= sampled + 1e-5).all())


def _certified(model, X, y, eps):
    with torch.no_grad():
        lb = bounds.crown(from_module(model, (1, 8, 8)), X, eps=eps, C=robustness_matrix(y, 10), domain=(0.0, 1.0)).lower
        ok = model(X).argmax(1) == y
    return int(((lb.min(1).values > 0) & ok).sum())


def test_ibp_training_certifies_more_than_standard():
    X, y = load_dataset("digits", "train")
    Xt, yt = load_dataset("digits", "test")
    eps = 0.1
    counts = {}
    for obj in ("standard", "ibp"):
        torch.manual_seed(0)
        model = build("digits-mlp", (1, 8, 8), 10)
        train(model, X, y, TrainConfig(objective=obj, epochs=6, eps=eps, lr=5e-3, ramp_epochs=3, kappa=(1.0, 0.0),
                                       batch_size=64))
        counts[obj] = _certified(model, Xt, yt, eps)
    assert counts["ibp"] > counts["standard"] + 36, counts     # by more than 10% of the 360 test images
