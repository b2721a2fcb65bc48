"""Certified-accuracy curves: numbers, ACR, tables, CSV, PNG, Cohen's format round trip, CLI."""
import csv

import numpy as np
import pytest

from certify.cli.main import main
from certify.errors import CertifyError
from certify.report import Record, ResultWriter
from certify.report.curve import (acr, certified_accuracy, default_radii, format_table, from_records, load_results,
                                  plot, write_cohen, write_csv)


def rec(i, label, pred, radius, verdict=None):
    v = verdict or ("abstain" if pred == -1 else "certified" if pred == label else "misclassified")
    return Record(idx=i, label=label, predict=pred, engine="smoothing", method="gaussian", verdict=v, norm="2",
                  radius=radius, seconds=0.5, evidence={})


RECS = [rec(0, 1, 1, 0.8), rec(1, 2, 2, 0.3), rec(2, 3, 5, 0.9), rec(3, 4, -1, 0.0), rec(4, 0, 0, 0.5)]


def test_certified_accuracy_and_acr_numbers():
    res = from_records(RECS, "a")
    acc = certified_accuracy(res, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert acc.tolist() == pytest.approx([0.6, 0.6, 0.4, 0.2, 0.0])     # wrong (idx 2) and abstain never count
    assert acr(res) == pytest.approx((0.8 + 0.3 + 0.5) / 5)
    fixed = from_records([Record(idx=0, label=1, predict=1, engine="bounds", method="crown", verdict="certified",
                                 eps=0.1), Record(idx=1, label=1, predict=1, engine="bounds", method="crown",
                                                  verdict="not_certified", eps=0.1)])
    assert certified_accuracy(fixed, [0.0, 0.1, 0.2]).tolist() == [1.0, 0.5, 0.0]


def test_tables_mark_the_best_per_radius():
    a = from_records(RECS, "a")
    b = from_records([rec(i, 1, 1, r) for i, r in enumerate([0.2, 0.2, 0.6, 0.0, 0.0])], "b")
    md = format_table([a, b], [0.0, 0.5], "markdown").splitlines()
    assert md[0] == "| file | r=0 | r=0.5 | ACR | n |"
    assert md[2] == "| a | 0.600 | **0.400** | **0.320** | 5 |"
    assert md[3] == "| b | **1.000** | 0.200 | 0.200 | 5 |"
    tex = format_table([a, b], [0.0, 0.5], "latex")
    assert r"\textbf{1.000}" in tex and r"\textbf{0.400}" in tex and tex.startswith(r"\begin{tabular}")
    txt = format_table([a, b], [0.0, 0.5], "text")
    assert "1.000*" in txt and "0.400*" in txt
    with pytest.raises(CertifyError):
        format_table([a], [0.0], "html")


def test_csv_png_and_cohen_round_trip(tmp_path):
    res = from_records(RECS, "a")
    write_csv(tmp_path / "c.csv", [res], [0.0, 0.5, 1.0])
    rows = list(csv.reader(open(tmp_path / "c.csv")))
    assert rows[0] == ["radius", "a"]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx([0.6, 0.4, 0.0])
    plot(str(tmp_path / "p.png"), [res])
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_cohen(str(tmp_path / "c.tsv"), RECS)
    lines = (tmp_path / "c.tsv").read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert lines[1].split("\t")[:5] == ["0", "1", "1", "0.800", "1"]
    back = load_results(str(tmp_path / "c.tsv"))
    assert back.idx.tolist() == res.idx.tolist() and back.correct.tolist() == res.correct.tolist()
    assert back.radius.tolist() == pytest.approx(res.radius.tolist(), abs=5e-4)
    assert certified_accuracy(back, [0, 0.5]).tolist() == certified_accuracy(res, [0, 0.5]).tolist()


def test_load_results_errors_and_default_radii(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("hello\n")
    with pytest.raises(CertifyError, match="bad.txt"):
        load_results(str(p))
    with pytest.raises(CertifyError, match="cannot read"):
        load_results(str(tmp_path / "missing.jsonl"))
    assert default_radii([from_records(RECS)]) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def test_curve_cli(tmp_path, capsys):
    with ResultWriter(str(tmp_path / "a.jsonl"), resume=False) as w:
        for r in RECS:
            w.write(r)
    write_cohen(str(tmp_path / "b.tsv"), [rec(i, 1, 1, 0.25) for i in range(4)])
    out = tmp_path / "curve.png"
    assert main(["curve", str(tmp_path / "a.jsonl"), str(tmp_path / "b.tsv"), "--radii", "0", "0.5",
                 "--format", "all", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| a | 0.600 | **0.400** | **0.320** | 5 |" in text and r"\textbf" in text
    assert out.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.reader(open(tmp_path / "curve.csv")))
    assert rows[1] == ["0", "0.600000", "1.000000"] and rows[2] == ["0.5", "0.400000", "0.000000"]
    # never overwrite a user's file without --overwrite
    assert main(["curve", str(tmp_path / "a.jsonl"), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["curve", str(tmp_path / "a.jsonl"), "--out", str(out), "--overwrite"]) == 0
    assert np.isclose(float(list(csv.reader(open(tmp_path / "curve.csv")))[1][1]), 0.6)
