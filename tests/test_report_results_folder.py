"""A benchmark's results folder (summary.json, rows, command.txt, machine.json), and a VNN-COMP
rows file shared by several benchmarks: each benchmark resumes only its own rows."""
from __future__ import annotations

import csv
import json

from certify.report.results_folder import commands_with, write_results_folder
from certify.vnncomp import CSV_FIELDS, run_benchmark


def test_folder_has_the_four_files_and_commands_are_not_repeated(tmp_path):
    out = tmp_path / "bench"
    write_results_folder(out, {"a": 1}, [{"x": 1}, {"x": 2}], ["python b.py"], {"cpus": 2})
    assert sorted(p.name for p in out.iterdir()) == ["command.txt", "machine.json", "rows.jsonl", "summary.json"]
    assert json.loads((out / "summary.json").read_text()) == {"a": 1}
    assert [json.loads(line)["x"] for line in (out / "rows.jsonl").read_text().splitlines()] == [1, 2]
    assert commands_with(out, "python b.py") == ["python b.py"]
    assert commands_with(out, "python b.py --more") == ["python b.py", "python b.py --more"]


def test_a_benchmark_does_not_resume_another_benchmarks_rows(shared_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    with open(rows, "w", newline="") as f:       # a row of another benchmark with the same file names
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerow({"benchmark": "other", "onnx": "test_nano.onnx", "vnnlib": "test_nano.vnnlib", "timeout_s": "1",
                    "verdict": "sat", "seconds": "0.1", "domains": 0, "method": "", "truth": "", "correct": "-",
                    "ce_valid": "-"})
    s = run_benchmark(shared_dir / "vnncomp" / "test", rows, select=lambda k, onnx, vnn: k == 0)
    assert s["by_verdict"]["unsat"] == 1 and s["by_verdict"]["sat"] == 0     # run, not taken from "other"
    got = list(csv.DictReader(open(rows)))
    assert [(r["benchmark"], r["verdict"]) for r in got] == [("other", "sat"), ("test", "unsat")]


def test_timeout_cap_bounds_every_instance_timeout(shared_dir, tmp_path):
    rows = tmp_path / "rows.csv"
    run_benchmark(shared_dir / "vnncomp" / "test", rows, select=lambda k, onnx, vnn: k == 0, timeout_cap=7.0)
    got = list(csv.DictReader(open(rows)))
    assert [(r["timeout_s"], r["verdict"]) for r in got] == [("7.0", "unsat")]
