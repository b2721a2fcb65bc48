"""``certify train`` end to end on the 8x8 digits: run directory contents, evaluation records in
the common format, refusal to overwrite a run, resume, and one-line errors."""
from __future__ import annotations

import json

import torch

from certify.cli.main import main
from certify.models.zoo import load_checkpoint
from certify.report.records import read_records


def test_train_ibp_then_evaluate_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "digits-mlp", "--objective", "ibp", "--eps", "0.05", "--epochs", "2", "--lr", "5e-3",
            "--out", str(out), "--eval-count", "40", "--eval-skip", "3"]
    assert main(argv) == 0
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "model.onnx", "certify.jsonl", "eval.json"):
        assert (out / f).exists(), f
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    recs = read_records(str(out / "certify.jsonl"))
    assert [r.idx for r in recs] == list(range(0, 120, 3))
    assert {r.engine for r in recs} == {"bounds"} and {r.method for r in recs} == {"crown+ibp"}
    for r in recs:     # each row takes the better of CROWN and IBP: never below either's own minimum
        ev = r.evidence
        assert ev["margin_lower_bound"] >= max(ev["crown_margin_lower_bound"], ev["ibp_margin_lower_bound"]) - 1e-6
    for r in recs:     # a certified input is never one PGD breaks; a falsified one has a negative margin
        if r.verdict == "certified":
            assert r.evidence["margin_lower_bound"] > 0 and r.evidence["pgd20_margin"] > 0
        if r.verdict == "falsified":
            assert r.evidence["pgd20_margin"] < 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["n"] == 40
    assert summary["certified_acc"] <= summary["pgd20_acc"] <= summary["clean_acc"]
    assert summary["certified_acc"] == sum(r.certified for r in recs) / 40
    model, info = load_checkpoint(str(out / "model.pt"))
    assert info["meta"]["train"]["objective"] == "ibp"

    before = (out / "model.pt").read_bytes()
    assert main(argv) == 2                                  # refuses to touch an existing run
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == before
    assert main(argv + ["--resume"]) == 0                   # finished run: nothing retrained
    after, _ = load_checkpoint(str(out / "model.pt"))
    for a, b in zip(model.state_dict().values(), after.state_dict().values()):
        assert torch.equal(a, b)
    assert main(argv + ["--overwrite"]) == 0


def test_train_gaussian_is_certified_by_smoothing(tmp_path):
    out = tmp_path / "g"
    assert main(["train", "--model", "digits-cnn", "--objective", "gaussian", "--sigma", "0.25", "--eps", "0.1",
                 "--epochs", "1", "--out", str(out), "--eval-count", "5", "--n0", "20", "--samples", "200"]) == 0
    recs = read_records(str(out / "certify.jsonl"))
    assert len(recs) == 5 and {r.engine for r in recs} == {"smoothing"}
    for r in recs:
        assert r.norm == "2" and "pa_lower" in r.evidence
        if r.verdict == "certified":
            assert r.radius >= 0.1 and r.correct
    assert "certified_at" in json.loads((out / "eval.json").read_text())


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("mine")
    assert main(["train", "--model", "digits-mlp", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "mine"
    assert main(["train", "--model", "digits-mlp", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_resume_with_another_model_is_refused(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--model", "digits-mlp", "--epochs", "1", "--out", out, "--no-eval"]) == 0
    assert main(["train", "--model", "digits-cnn", "--epochs", "1", "--out", out, "--no-eval", "--resume"]) == 2
    assert "does not fit this model" in capsys.readouterr().err
