"""The training loop: schedules, bit-exact resume from checkpoints, the metrics log, Shi init."""
from __future__ import annotations

import json
import math

import pytest
import torch

from certify.data import load_dataset
from certify.errors import CertifyError
from certify.models.zoo import build
from certify.train import TrainConfig, ibp_init, load_training_state, train
from certify.train.schedule import Schedule, ramp


def test_ramps_and_lr_schedule():
    assert ramp(0, 10, 20, 0.0, 1.0) == 0.0 and ramp(25, 10, 20, 0.0, 1.0) == 1.0
    assert ramp(15, 10, 20, 0.0, 1.0) == pytest.approx(0.5)
    vals = [ramp(s, 10, 20, 0.0, 0.3, "smooth") for s in range(9, 22)]
    assert vals[0] == 0.0 and vals[-1] == pytest.approx(0.3)
    assert all(b >= a for a, b in zip(vals, vals[1:]))            # monotone
    assert ramp(12, 10, 20, 0.0, 1.0, "smooth") < ramp(12, 10, 20, 0.0, 1.0)  # slow start
    s = Schedule(steps_per_epoch=10, epochs=4, eps=0.2, warmup_epochs=1, ramp_epochs=2, kappa=(1.0, 0.5),
                 beta=(1.0, 0.0), lr=0.1, lr_schedule="step", lr_milestones=(2, 3), lr_gamma=0.1)
    k = s.knobs(20)
    assert k.eps == pytest.approx(0.1) and k.kappa == pytest.approx(0.75) and k.beta == pytest.approx(0.5)
    assert s.knobs(5).eps == 0.0 and s.knobs(30).eps == pytest.approx(0.2)
    assert [s.learning_rate(t) for t in (0, 19, 20, 30)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    c = Schedule(steps_per_epoch=10, epochs=4, eps=0.0, lr=1.0, lr_schedule="cosine")
    assert c.learning_rate(0) == 1.0 and c.learning_rate(20) == pytest.approx(0.5) and c.learning_rate(40) < 1e-12


def _data():
    X, y = load_dataset("digits", "train")
    return X[:300], y[:300]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("objective", ["pgd", "gaussian"])
def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path, objective):
    X, y = _data()
    cfg = TrainConfig(objective=objective, epochs=3, batch_size=50, eps=0.05, attack_steps=3, lr=3e-3,
                      lr_schedule="cosine", seed=3)
    torch.manual_seed(0)
    full = build("digits-mlp", (1, 8, 8), 10)
    train(full, X, y, cfg, run_dir=str(tmp_path / "a"))

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise _Stop

    torch.manual_seed(0)
    part = build("digits-mlp", (1, 8, 8), 10)
    with pytest.raises(_Stop):
        train(part, X, y, cfg, run_dir=str(tmp_path / "b"), on_epoch=stop_after_first)
    assert load_training_state(str(tmp_path / "b" / "checkpoint.pt"))["epoch"] == 1
    torch.manual_seed(123)                       # a different fresh model: resume must overwrite it all
    resumed = build("digits-mlp", (1, 8, 8), 10)
    hist = train(resumed, X, y, cfg, run_dir=str(tmp_path / "b"), resume=True)
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ref = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for a, b in zip(lines, ref):
        a, b = json.loads(a), json.loads(b)
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"]


def test_checkpoint_loads_with_weights_only_and_holds_everything(tmp_path):
    X, y = _data()
    cfg = TrainConfig(objective="standard", epochs=1, batch_size=100, optimizer="sgd", lr=0.05)
    model = build("digits-cnn", (1, 8, 8), 10)
    train(model, X, y, cfg, run_dir=str(tmp_path))
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(ck) >= {"model", "optimizer", "scheduler", "rng", "generator", "epoch", "step", "config"}
    assert ck["epoch"] == 1 and ck["step"] == 3 and ck["config"]["optimizer"] == "sgd"
    for k, v in model.state_dict().items():
        assert torch.equal(ck["model"][k], v)


def test_resume_with_other_settings_is_refused(tmp_path):
    X, y = _data()
    model = build("digits-mlp", (1, 8, 8), 10)
    train(model, X, y, TrainConfig(epochs=1), run_dir=str(tmp_path))
    with pytest.raises(CertifyError, match="lr"):
        train(model, X, y, TrainConfig(epochs=1, lr=0.5), run_dir=str(tmp_path), resume=True)
    with pytest.raises(CertifyError, match="no training checkpoint"):
        train(model, X, y, TrainConfig(epochs=1), run_dir=str(tmp_path / "none"), resume=True)


def test_bad_config_is_one_clear_error():
    with pytest.raises(CertifyError, match="unknown objective"):
        TrainConfig(objective="magic")
    with pytest.raises(CertifyError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")


def test_shi_init_statistics():
    model = build("dm-small", (1, 28, 28), 10)
    assert ibp_init(model, torch.Generator().manual_seed(0)) == 4
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            fan_in = m.weight[0].numel()
            assert float(m.weight.detach().std()) == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.1)
            assert float(m.bias.detach().abs().max()) == 0.0
