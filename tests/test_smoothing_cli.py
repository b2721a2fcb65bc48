"""``certify smooth``: records, Cohen format, resume after an interrupted run, errors; the demo section."""
import math

import pytest

from certify.cli.main import main
from certify.cli.smooth import demo_section
from certify.report import read_records

ARGS = ["smooth", "digits-mlp", "--data", "digits", "--max", "6", "--skip", "3", "--samples", "400", "--n0", "20",
        "--alpha", "0.01", "--sigma", "0.25", "--seed", "4"]


def key(r):
    return (r.idx, r.label, r.predict, r.verdict, r.radius, r.evidence["counts"], r.evidence["counts_selection"])


def test_smooth_writes_records_and_cohen_file(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(ARGS + ["--out", str(out), "--format", "cohen"]) == 0
    recs = read_records(str(out))
    assert [r.idx for r in recs] == [0, 3, 6, 9, 12, 15]
    for r in recs:
        assert r.engine == "smoothing" and r.method == "gaussian" and r.norm == "2"
        ev = r.evidence
        assert sum(ev["counts"]) == 400 and sum(ev["counts_selection"]) == 20
        assert ev["sigma"] == 0.25 and ev["n"] == 400 and ev["n0"] == 20 and ev["alpha"] == 0.01
        if r.predict == -1:
            assert r.verdict == "abstain" and r.radius == 0.0 and ev["pa_lower"] < 0.5
        else:
            assert ev["pa_lower"] >= 0.5 and r.verdict in ("certified", "misclassified", "not_certified")
            assert r.predict == max(range(10), key=lambda c: ev["counts_selection"][c])
    assert sum(r.certified for r in recs) >= 3          # the bundled model is accurate on digits
    lines = (tmp_path / "r.tsv").read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and len(lines) == 7
    f = lines[1].split("\t")
    assert (int(f[0]), int(f[2]), float(f[3])) == (0, recs[0].predict, round(recs[0].radius, 3))
    assert "r=0" in capsys.readouterr().out


def test_resume_after_interrupted_run_equals_uninterrupted(tmp_path, capsys):
    full = tmp_path / "full.jsonl"
    assert main(ARGS + ["--out", str(full)]) == 0
    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    assert '"provenance"' in lines[0]
    part.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])     # killed while writing record 4
    assert main(ARGS + ["--out", str(part), "--resume", "--format", "cohen"]) == 0
    assert "3 of 6 inputs already done" in capsys.readouterr().out
    a, b = read_records(str(full)), read_records(str(part))
    assert [key(r) for r in a] == [key(r) for r in b]
    assert len((tmp_path / "part.tsv").read_text().splitlines()) == 7
    # a second resume has nothing to do and changes nothing
    before = part.read_text()
    assert main(ARGS + ["--out", str(part), "--resume"]) == 0
    assert part.read_text() == before


def test_existing_output_is_never_overwritten_and_bad_args(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text('{"user": "data"}\n')
    assert main(ARGS + ["--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_text() == '{"user": "data"}\n'
    assert main(ARGS[:-2] + ["--alpha", "0.7"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert main(["smooth", "no_such_model.onnx"]) == 2
    assert "no_such_model.onnx" in capsys.readouterr().err
    assert main(ARGS + ["--format", "cohen"]) == 2
    assert "--out" in capsys.readouterr().err


def test_laplace_noise_cli_reports_l1(tmp_path):
    out = tmp_path / "l.jsonl"
    assert main(ARGS + ["--noise", "laplace", "--out", str(out)]) == 0
    recs = read_records(str(out))
    assert all(r.norm == "1" and r.method == "laplace" for r in recs)
    r = next(r for r in recs if r.radius > 0)
    assert r.radius == pytest.approx(-0.25 * math.log(2 * (1 - r.evidence["pa_lower"])))


def test_demo_section_runs_fast():
    from certify.data import load_dataset
    from certify.models import load_bundled
    net = load_bundled("digits-mlp")
    X, y = load_dataset("digits", "test")
    lines = demo_section(net, X[:5], y[:5])
    assert lines[0].startswith("randomized smoothing") and "certified" in lines[-1]
    assert len(lines) == 2 + 5 + 1
    assert int(lines[-1].split(":")[1].split("/")[0]) >= 3


def test_adaptive_at_a_radius_records_samples_and_keeps_the_answers(tmp_path):
    fixed, adapt = tmp_path / "f.jsonl", tmp_path / "a.jsonl"
    args = ["smooth", "digits-mlp", "--data", "digits", "--max", "4", "--samples", "20000", "--n0", "50", "--sigma", "0.25"]
    assert main(args + ["--out", str(fixed)]) == 0
    assert main(args + ["--adaptive", "--radius", "0.25", "--out", str(adapt)]) == 0
    for f, a in zip(read_records(str(fixed)), read_records(str(adapt))):
        ev = a.evidence
        assert ev["n_max"] == 20000 and ev["samples"] == 50 + ev["n"] == 50 + sum(ev["counts"])
        assert ev["target_radius"] == 0.25 and ev["stop"] in ("certified", "below", "budget")
        assert ev["counts_selection"] == f.evidence["counts_selection"]         # same seeded selection stage
        assert (a.certified and a.radius >= 0.25) == (f.certified and f.radius >= 0.25)
    assert sum(r.evidence["samples"] for r in read_records(str(adapt))) < 4 * 20050 / 5


@pytest.mark.parametrize("extra,msg", [(["--radius", "0.5"], "add --adaptive"),
                                       (["--adaptive", "--radius", "-1"], "--radius must be")])
def test_adaptive_flag_errors(extra, msg, capsys):
    assert main(ARGS + extra) == 2
    assert msg in capsys.readouterr().err
