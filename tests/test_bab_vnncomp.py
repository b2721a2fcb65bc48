"""VNN-COMP instances and the ``certify vnnlib`` / ``certify vnncomp`` commands.

The five ../shared/vnncomp/test instances and a few fast ACAS Xu instances must give their
ground truth; result files follow the VNN-COMP format and counterexamples pass onnxruntime."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from bounds.bab import verify
from certify.cli.main import main
from certify.vnncomp import check_counterexample_ort, format_result, parse_result, score_row
from certify.frontends.onnx import load
from certify.spec import vnnlib


def _truth(shared, onnx, prop):
    with open(shared / "vnncomp/ground_truth.csv", newline="") as f:
        for r in csv.DictReader(f):
            if (r["onnx"], r["vnnlib"]) == (onnx, prop):
                return r["truth"]
    raise KeyError((onnx, prop))


TEST_INSTANCES = [("test_nano.onnx", "test_nano.vnnlib"), ("test_tiny.onnx", "test_tiny.vnnlib"),
                  ("test_small.onnx", "test_small.vnnlib"), ("test_sat.onnx", "test_prop.vnnlib"),
                  ("test_unsat.onnx", "test_prop.vnnlib")]


@pytest.mark.parametrize("onnx, prop", TEST_INSTANCES)
def test_shared_test_instances(shared_dir, onnx, prop):
    d = shared_dir / "vnncomp/test"
    net = load(d / onnx)
    p = vnnlib.load(d / prop, net.input_size, net.output_size)
    res = verify(net, p, timeout=30)
    assert res.status == _truth(shared_dir, f"test/{onnx}", f"test/{prop}")
    if res.status == "sat":
        x, y = res.counterexample
        assert p.violated_by(x, y) and check_counterexample_ort(str(d / onnx), p, x, tol=0.0)


# fast ACAS Xu instances (a few seconds each on one core): sat via the attack, via BaB and via
# face-biased sampling (1_9 prop_7: its violations lie on the box's boundary), unsat
ACAS = [("ACASXU_run2a_2_1_batch_2000.onnx", "prop_2.vnnlib"),
        ("ACASXU_run2a_1_9_batch_2000.onnx", "prop_7.vnnlib"),
        ("ACASXU_run2a_1_7_batch_2000.onnx", "prop_3.vnnlib"),
        ("ACASXU_run2a_1_1_batch_2000.onnx", "prop_1.vnnlib"),
        ("ACASXU_run2a_1_7_batch_2000.onnx", "prop_1.vnnlib")]


@pytest.mark.parametrize("onnx, prop", ACAS)
def test_fast_acasxu_instances(shared_dir, onnx, prop):
    d = shared_dir / "vnncomp/acasxu"
    net = load(d / onnx)
    p = vnnlib.load(d / prop, 5, 5)
    res = verify(net, p, timeout=60)
    assert res.status == _truth(shared_dir, f"acasxu/{onnx}", f"acasxu/{prop}")
    if res.status == "sat":
        assert check_counterexample_ort(str(d / onnx), p, res.counterexample[0])


def test_result_file_format_roundtrip():
    text = format_result("sat", (np.array([0.5, -1e-3]), np.array([2.0])))
    assert text == "sat\n((X_0 0.5)\n (X_1 -0.001)\n (Y_0 2.0))\n"
    status, x, y = parse_result(text)
    assert status == "sat" and x.tolist() == [0.5, -1e-3] and y.tolist() == [2.0]
    assert format_result("unsat") == "unsat\n"
    assert score_row("unsat", "unsat", "-") == ("yes", 10)
    assert score_row("sat", "unsat", "yes") == ("no", -150)
    assert score_row("sat", "sat", "no") == ("no", -150)
    assert score_row("timeout", "sat", "-") == ("-", 0)


def test_cli_vnnlib_writes_counterexample(shared_dir, tmp_path, capsys):
    d = shared_dir / "vnncomp/test"
    out = tmp_path / "result.txt"
    assert main(["vnnlib", str(d / "test_sat.onnx"), str(d / "test_prop.vnnlib"), "--timeout", "30",
                 "--out", str(out)]) == 0
    status, x, y = parse_result(out.read_text())
    assert status == "sat" and x.shape == (5,) and y.shape == (5,)
    p = vnnlib.load(d / "test_prop.vnnlib", 5, 5)
    assert check_counterexample_ort(str(d / "test_sat.onnx"), p, x)
    # never overwrite a user file without --overwrite
    assert main(["vnnlib", str(d / "test_sat.onnx"), str(d / "test_prop.vnnlib"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_vnnlib_bad_property_is_one_line(shared_dir, tmp_path, capsys):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)\n")
    assert main(["vnnlib", str(shared_dir / "vnncomp/test/test_nano.onnx"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}:2:" in err


def test_cli_vnncomp_runs_scores_and_resumes(shared_dir, tmp_path, capsys):
    out = tmp_path / "results.csv"
    args = ["vnncomp", str(shared_dir / "vnncomp/test"), "--ground-truth",
            str(shared_dir / "vnncomp/ground_truth.csv"), "--out", str(out), "--timeout-scale", "0.5"]
    assert main(args + ["--limit", "2"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2
    assert main(args) == 0   # resumes: the first two rows are kept, three are added
    rows = list(csv.DictReader(open(out)))
    assert [r["vnnlib"] for r in rows] == [p for _, p in TEST_INSTANCES]
    assert all(r["correct"] == "yes" for r in rows)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "solved 5" in summary and "WRONG 0" in summary and "score 50" in summary
