"""Reliability and safety of runs: no code runs from a data file, result files carry their provenance
and refuse a mismatched resume, one writer per file (two real processes), a killed run resumes with
0 records lost or duplicated, and the crashes / silent successes of bad runs are clean errors."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from certify.cli.main import main
from certify.data import load_dataset
from certify.data.cifar import read_cifar_pickle
from certify.errors import CertifyError
from certify.report import Record, ResultWriter, read_records
from certify.report.records import read_provenance

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")


def _cli(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "certify", *argv], capture_output=True, text=True, env=ENV,
                          timeout=300, **kw)


class _Evil:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# ------------------------------------------------------------------------------ data files run no code
def test_malicious_data_pickle_runs_no_code_in_a_real_run(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0, 1, 2]}, f, protocol=2)
    r = _cli("bounds", "digits-mlp", "--data", str(evil), "--count", "3")
    assert r.returncode == 2 and not marker.exists()
    assert r.stderr.strip().splitlines() == [f"certify bounds: error: {evil}: not a CIFAR-10 python batch "
                                             "(refusing global posix.system (a data file must not run code))"]


def test_cifar_batches_in_their_real_layout_still_load(tmp_path):
    """A batch as CIFAR-10 ships it (dict of bytes keys, uint8 (N, 3072) data, int labels, filenames),
    pickled with protocol 2 and with the newest protocol: read as file and as a --data folder."""
    rng = np.random.RandomState(0)
    data = rng.randint(0, 256, (5, 3072)).astype(np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 8, 8, 0, 6], b"data": data,
             b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png", b"e.png"]}
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"batch{proto}"
        path.write_bytes(pickle.dumps(batch, protocol=proto))
        x, y = read_cifar_pickle(str(path))
        assert x.shape == (5, 3, 32, 32) and (x.reshape(5, -1) == data).all() and y.tolist() == [3, 8, 8, 0, 6]
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    xt, yt = load_dataset(str(tmp_path / "set"), "test")
    assert xt.shape == (5, 3, 32, 32) and float(xt[1, 2, 3, 4]) == pytest.approx(data[1, 2 * 1024 + 3 * 32 + 4] / 255)
    obj = tmp_path / "objects"
    obj.write_bytes(pickle.dumps({b"data": np.array([1, "x"], dtype=object), b"labels": [0]}, protocol=2))
    with pytest.raises(CertifyError, match="refusing array dtype object"):
        read_cifar_pickle(str(obj))


# ------------------------------------------------------------------------------ provenance
def test_provenance_header_and_resume_checks(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    argv = ["bounds", "digits-mlp", "--count", "3", "--eps", "0.01", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    head = json.loads(out.read_text().splitlines()[0])["provenance"]
    from certify import __version__
    from certify.models import BUNDLED
    from certify.report.provenance import file_sha256
    assert head["argv"] == argv and head["certify_version"] == __version__ and head["command"] == "bounds"
    assert head["model"] == "digits-mlp" and head["model_sha256"] == file_sha256(str(BUNDLED["digits-mlp"]))
    assert (head["data"], head["split"], head["engine"], head["method"], head["norm"], head["eps"]) == \
        ("digits", "test", "bounds", "crown", "inf", 0.01)
    assert head["config"]["--eps"] == 0.01 and "--out" not in head["config"] and "--count" not in head["config"]
    assert read_provenance(str(out)) == head and len(read_records(str(out))) == 3
    # more inputs, other output verbosity: same configuration, resumed
    assert main(argv[:3] + ["5"] + argv[4:7] + ["--out", str(out), "--resume"]) == 0
    assert [r.idx for r in read_records(str(out))] == [0, 1, 2, 3, 4]
    # a changed flag is refused by name, and the file is left as it was
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["bounds", "digits-mlp", "--count", "5", "--eps", "0.02", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--eps 0.02 != 0.01 in {out}" in err and out.read_bytes() == before
    # smoothing records never go into a bounds file
    assert main(["smooth", "digits-mlp", "--max", "2", "--samples", "50", "--n0", "10", "--out", str(out), "--resume"]) == 2
    assert f"command smooth != bounds in {out}" in capsys.readouterr().err and out.read_bytes() == before


def test_files_without_a_header_still_read_and_resume(tmp_path, capsys):
    out = tmp_path / "old.jsonl"
    rec = Record(idx=0, label=1, predict=1, engine="bounds", method="crown", verdict="certified", norm="inf",
                 eps=0.01, seconds=0.1)
    out.write_text(rec.to_json() + "\n")
    assert [r.idx for r in read_records(str(out))] == [0] and read_provenance(str(out)) is None
    assert main(["bounds", "digits-mlp", "--count", "2", "--eps", "0.01", "--quiet", "--out", str(out), "--resume"]) == 0
    assert "no provenance header" in capsys.readouterr().err
    assert [r.idx for r in read_records(str(out))] == [0, 1]


def test_curve_labels_norms_and_formats(tmp_path, capsys):
    a, b, s = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "s.jsonl"
    assert main(["bounds", "digits-mlp", "--count", "4", "--eps", "0.02", "--quiet", "--out", str(a)]) == 0
    assert main(["bounds", "digits-mlp", "--count", "4", "--eps", "0.02", "--method", "ibp", "--quiet",
                 "--out", str(b)]) == 0
    assert main(["smooth", "digits-mlp", "--max", "4", "--samples", "200", "--n0", "20", "--out", str(s)]) == 0
    capsys.readouterr()
    png = tmp_path / "c.png"
    assert main(["curve", str(a), str(b), "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "digits-mlp crown eps=0.02" in text and "digits-mlp ibp eps=0.02" in text and png.exists()
    assert main(["curve", str(a), str(b), "--label", "CROWN", "--label", "IBP", "--format", "markdown"]) == 0
    assert "| CROWN |" in capsys.readouterr().out
    assert main(["curve", str(a), str(s)]) == 2
    assert "L-inf in" in capsys.readouterr().err
    assert main(["curve", str(a), str(s), "--allow-mixed-norms"]) == 0
    from certify.report.curve import load_results, norm_label
    assert norm_label([load_results(str(a)), load_results(str(s))]) == "radius (L2, L-inf)"
    assert norm_label([load_results(str(s))]) == "radius (L2)"
    # an unknown image format is refused before the CSV is written
    capsys.readouterr()
    assert main(["curve", str(a), "--out", str(tmp_path / "d.jpgx")]) == 2
    assert not (tmp_path / "d.csv").exists() and "unknown image format 'jpgx'" in capsys.readouterr().err
    assert main(["curve", str(a), "--out", str(tmp_path / "e.svg")]) == 0
    assert (tmp_path / "e.svg").read_text().lstrip().startswith("<?xml")


# ------------------------------------------------------------------------------ one writer, crash, resume
def _records_in(path: Path) -> int:
    try:
        return max(len(path.read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


def test_two_processes_on_one_file_and_resume_after_a_kill(tmp_path):
    out = tmp_path / "r.jsonl"
    cmd = ["smooth", "digits-mlp", "--max", "12", "--samples", "20000", "--n0", "50", "--out", str(out)]
    a = subprocess.Popen([sys.executable, "-m", "certify", *cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=ENV)
    try:
        t0 = time.monotonic()
        while _records_in(out) < 2:
            assert a.poll() is None, a.stderr.read()
            assert time.monotonic() - t0 < 240, "the first run wrote nothing"
            time.sleep(0.05)
        a.send_signal(signal.SIGSTOP)          # holds its lock, mid-run, for as long as this test needs
        others = [subprocess.Popen([sys.executable, "-m", "certify", *cmd, extra], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=ENV) for extra in ("--resume", "--overwrite")]
        for b in others:                       # a second writer is refused, whatever it asks
            err = b.communicate(timeout=300)[1]
            assert b.returncode == 2 and "being written by another certify run" in err, err
            assert len(err.strip().splitlines()) == 1
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    done = {r.idx: r for r in read_records(str(out))}
    assert 2 <= len(done) < 12
    c = _cli(*cmd, "--resume")
    assert c.returncode == 0, c.stderr
    recs = read_records(str(out))
    assert sorted(r.idx for r in recs) == list(range(12))                  # 0 lost, 0 duplicated
    assert all(done[r.idx] == r for r in recs if r.idx in done)             # the finished ones kept as they were
    assert len(out.read_text().splitlines()) == 13                          # the header and 12 records


def test_ctrl_c_keeps_finished_records_and_says_resume(tmp_path, capsys, monkeypatch):
    import certify.cli.bounds as cb
    calls = []
    real = cb.certify_batch

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cb, "certify_batch", interrupted)
    out = tmp_path / "r.jsonl"
    argv = ["bounds", "digits-mlp", "--count", "8", "--batch", "4", "--quiet", "--out", str(out)]
    assert main(argv) == 130
    assert "rerun with --resume to continue" in capsys.readouterr().err
    assert len(read_records(str(out))) == 4
    monkeypatch.setattr(cb, "certify_batch", real)
    assert main(argv + ["--resume"]) == 0 and [r.idx for r in read_records(str(out))] == list(range(8))


def test_writer_lock_is_released_on_close(tmp_path):
    p = str(tmp_path / "r.jsonl")
    w = ResultWriter(p, resume=False)
    with pytest.raises(CertifyError, match="being written by another certify run"):
        ResultWriter(p, resume=True)
    w.close()
    ResultWriter(p, resume=True).close()


# ------------------------------------------------------------------------------ former crashes
def test_non_finite_bounds_are_written_and_read_back(tmp_path):
    rec = Record(idx=0, label=1, predict=1, engine="convex", method="milp", verdict="falsified", norm="inf",
                 eps=float("inf"), evidence={"lower": [float("-inf"), 0.5], "t": torch.tensor([float("nan")])})
    back = Record.from_dict(json.loads(rec.to_json()))
    assert back.eps == float("inf") and back.evidence["lower"] == ["-inf", 0.5] and back.evidence["t"] == ["nan"]
    out = tmp_path / "m.jsonl"           # decision-mode MILP stops at a counterexample: later rows stay at -inf
    assert main(["milp", "digits-mlp", "--count", "3", "--eps", "0.3", "--quiet", "--out", str(out)]) == 0
    recs = read_records(str(out))
    assert any(r.verdict == "falsified" and "-inf" in r.evidence["lower"] for r in recs)


def test_prepare_instance_script_is_clean_on_a_garbage_network(tmp_path):
    bad = tmp_path / "net.onnx"
    bad.write_bytes(b"garbage" * 10)
    prop = tmp_path / "p.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
                    "(assert (<= Y_0 0))\n")
    r = subprocess.run(["bash", str(REPO / "vnncomp_scripts" / "prepare_instance.sh"), "v1", "test", str(bad),
                        str(prop)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "net.onnx" in r.stderr


def test_closed_stdout_pipe_exits_quietly():
    p = subprocess.Popen([sys.executable, "-m", "certify", "info", "digits-cnn"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    p.stdout.close()           # like `| head -1` finishing before certify writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141 and err == ""


def test_vnncomp_retries_error_rows(tmp_path, capsys):
    from certify.frontends.torch import from_module
    bench = tmp_path / "bench"
    bench.mkdir()
    torch.manual_seed(0)
    from_module(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
                (2,)).to_onnx(str(bench / "net.onnx"))
    decl = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    box = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n"
    (bench / "a.vnnlib").write_text(decl + box + "(assert (<= Y_0 -1000))\n")
    (bench / "b.vnnlib").write_text(decl + box + "(assert (<= Y_0 Y_9))\n")      # a broken property
    (bench / "instances.csv").write_text("net.onnx,a.vnnlib,20\nnet.onnx,b.vnnlib,20\n")
    out = tmp_path / "res.csv"
    assert main(["vnncomp", str(bench), "--out", str(out)]) == 0
    import csv
    rows = list(csv.DictReader(open(out)))
    assert [r["verdict"] for r in rows] == ["unsat", "error"]
    (bench / "b.vnnlib").write_text(decl + box + "(assert (<= Y_0 -1000))\n")   # fixed by the user
    capsys.readouterr()
    assert main(["vnncomp", str(bench), "--out", str(out)]) == 0
    assert "retrying 1 instance(s) whose last result" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out)))
    assert [(r["vnnlib"], r["verdict"]) for r in rows] == [("a.vnnlib", "unsat"), ("b.vnnlib", "unsat")]
    assert main(["vnncomp", str(bench), "--out", str(out), "--timeout-scale", "0.5"]) == 2
    assert "timeout 20.0 s, this run gives it 10.0 s" in capsys.readouterr().err


def test_save_checkpoint_refuses_what_it_could_not_load(tmp_path):
    from certify.models import build, load_network, save_checkpoint
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(CertifyError, match="'custom' is not a zoo architecture"):
        save_checkpoint(str(tmp_path / "c.pt"), m, "custom", (1, 8, 8), 10)
    with pytest.raises(CertifyError, match="do not fit architecture 'digits-mlp'"):
        save_checkpoint(str(tmp_path / "c.pt"), m, "digits-mlp", (1, 8, 8), 10)
    assert not (tmp_path / "c.pt").exists()
    save_checkpoint(str(tmp_path / "ok.pt"), build("digits-mlp", (1, 8, 8), 10), "digits-mlp", (1, 8, 8), 10)
    assert load_network(str(tmp_path / "ok.pt")).input_shape == (1, 8, 8)


# ------------------------------------------------------------------------------ certify check
def test_check_passes_on_the_bundled_model(capsys):
    assert main(["check", "digits-mlp", "--count", "3", "--samples", "500"]) == 0
    out = capsys.readouterr().out
    rows = {ln.rsplit("  ", 2)[0].split("  ")[0]: ln for ln in out.splitlines()[2:]}
    for name in ("CROWN lower <= PGD margin", "alpha-CROWN >= CROWN", "LP >= CROWN",
                 "every lower bound <= MILP minimum", "smoothing pA lower = Clopper-Pearson of its counts"):
        assert rows[name].split()[-1] == "pass" and int(rows[name].split()[-3]) > 0, rows[name]
    assert "FAIL" not in out


def test_check_catches_an_unsound_engine(capsys, monkeypatch):
    import bounds
    from bounds.result import Bounds
    real = bounds.compute_bounds

    def too_good(net, s, C=None, d=None, method="crown", **kw):
        b = real(net, s, C, d, method=method, **kw)
        return Bounds(b.lower + 1.0, b.upper) if method == "crown" else b

    monkeypatch.setattr(bounds, "compute_bounds", too_good)
    assert main(["check", "digits-mlp", "--count", "3", "--samples", "500"]) == 1
    out, err = capsys.readouterr()
    assert "FAIL" in next(ln for ln in out.splitlines() if ln.startswith("CROWN lower <= PGD margin"))
    assert "FAILED" in err
