"""CLI skeleton: --help, info, demo, and user mistakes give one clear line and exit 2 (no traceback)."""
import subprocess
import sys

import pytest

from certify.cli.main import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "demo"):
        assert cmd in out


def test_info_bundled_and_onnx(tmp_path, capsys):
    assert main(["info", "digits-cnn"]) == 0
    out = capsys.readouterr().out
    assert "Conv2d 1->4" in out and "ReLU" in out and "parameters" in out
    from certify.models import load_bundled
    load_bundled("digits-mlp").to_onnx(str(tmp_path / "m.onnx"))
    assert main(["info", str(tmp_path / "m.onnx")]) == 0
    assert "Linear 64->24" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["info", "no/such/model.onnx"], "does not exist"),
    (["info", "README.md"], "unknown model format"),
])
def test_user_mistakes_are_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_garbage_files_give_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["info", str(bad)]) == 2
    assert "bad.onnx" in capsys.readouterr().err
    badpt = tmp_path / "bad.pt"
    badpt.write_bytes(b"junk")
    assert main(["info", str(badpt)]) == 2
    assert "bad.pt" in capsys.readouterr().err


def test_demo_runs_as_a_console_command():
    r = subprocess.run([sys.executable, "-m", "certify", "demo", "--count", "5"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "clean accuracy on the digits test split: 0.9" in r.stdout


def test_bounds_precision_float64_default_matches_float32(tmp_path):
    from certify.report import read_records
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["bounds", "digits-cnn", "--count", "30", "--eps", "0.03", "--quiet", "--out", str(a)]) == 0
    assert main(["bounds", "digits-cnn", "--count", "30", "--eps", "0.03", "--quiet", "--precision", "float32",
                 "--out", str(b)]) == 0
    ra, rb = read_records(str(a)), read_records(str(b))
    assert [r.verdict for r in ra] == [r.verdict for r in rb]
    assert sum(r.verdict == "certified" for r in ra) >= 20
    for x, y in zip(ra, rb):
        if x.evidence and y.evidence:
            assert abs(x.evidence["min_margin_lower"] - y.evidence["min_margin_lower"]) < 1e-4
