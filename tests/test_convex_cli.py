"""``certify lp|sdp|milp``: output lines, result records, resume, refusal to overwrite, errors."""
import json

from certify.cli.convex import demo_section
from certify.cli.main import main
from certify.data import load_dataset
from certify.models import load_bundled
from certify.report.records import read_records


def test_lp_and_milp_write_records_and_agree(tmp_path, capsys):
    out = tmp_path / "lp.jsonl"
    assert main(["lp", "digits-mlp", "--count", "4", "--eps", "0.03", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "input 0: label" in text and "lp on 4 inputs, eps 0.03 (inf): clean accuracy" in text
    lp = read_records(str(out))
    assert [r.idx for r in lp] == [0, 1, 2, 3]
    assert all(r.engine == "convex" and r.method == "lp" for r in lp)
    out2 = tmp_path / "milp.jsonl"
    assert main(["milp", "digits-mlp", "--count", "4", "--eps", "0.03", "--out", str(out2)]) == 0
    milp = read_records(str(out2))
    for a, b in zip(lp, milp):
        if a.verdict == "certified":            # LP certified -> exact MILP must agree
            assert b.verdict == "certified"
        if a.verdict == "misclassified":
            assert b.verdict == "misclassified"
    # resume keeps the records, refusal without --resume/--overwrite
    assert main(["lp", "digits-mlp", "--count", "5", "--eps", "0.03", "--out", str(out), "--resume"]) == 0
    assert len(read_records(str(out))) == 5
    capsys.readouterr()
    assert main(["lp", "digits-mlp", "--count", "2", "--eps", "0.03", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert len(read_records(str(out))) == 5


def test_sdp_cli_and_errors(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["sdp", "digits-mlp", "--count", "1", "--start", "3", "--eps", "0.01", "--solver", "first-order",
                 "--iters", "30", "--out", str(out)]) == 0
    head, rec = (json.loads(line) for line in out.read_text().splitlines())
    assert head["provenance"]["command"] == "sdp" and head["provenance"]["eps"] == 0.01
    assert rec["method"] == "sdp" and rec["evidence"]["solver"] == "first-order"
    assert main(["lp", "digits-mlp", "--eps", "-1"]) == 2
    assert "--eps" in capsys.readouterr().err
    assert main(["milp", str(tmp_path / "missing.onnx"), "--eps", "0.1"]) == 2
    assert "missing.onnx" in capsys.readouterr().err


def test_demo_section():
    net = load_bundled("digits-mlp")
    X, y = load_dataset("digits", "test")
    lines = demo_section(net, X, y, n=3)
    assert len(lines) == 5 and "MILP" in lines[0]
    assert any("certified" in l for l in lines[2:])


def test_radius_search(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["lp", "digits-mlp", "--count", "1", "--radius", "--tol", "0.01", "--out", str(out)]) == 0
    rec = read_records(str(out))[0]
    assert rec.eps is None and rec.verdict == "certified" and 0.01 < rec.radius < 0.5
    assert rec.evidence["min_margin_lower"] > 0 and rec.evidence["eps_checked"] == rec.radius
    assert "average certified radius" in capsys.readouterr().out


def test_lp_l2_cli(tmp_path, capsys):
    out = tmp_path / "l2.jsonl"
    assert main(["lp", "digits-mlp", "--count", "2", "--norm", "2", "--eps", "0.1", "--out", str(out)]) == 0
    assert "lp on 2 inputs, eps 0.1 (2)" in capsys.readouterr().out
    recs = read_records(str(out))
    assert all(r.norm == "2" and r.evidence["solver"] == "cvxpy-CLARABEL" for r in recs if r.verdict != "misclassified")
