"""Output details of the commands: no HiGHS banner on stdout, each command's own help texts,
vnnlib saying what found a counterexample, Cohen's h:mm:ss time column, the clipping domain in
every record's evidence, and the progress hooks (verify's live stats, bars counting inputs)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from certify.cli.main import build_parser, main
from certify.report.records import read_result_file


def test_no_solver_banner_on_stdout():
    """HiGHS prints its banner once per process, when its first instance is made (every solver
    instance of lp / milp / sdp / vnnlib comes from certify.solvers.highs.new_highs)."""
    r = subprocess.run([sys.executable, "-m", "certify", "milp", "digits-mlp", "--count", "1"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "HiGHS" not in r.stdout and "Copyright" not in r.stdout, r.stdout
    assert r.stdout.startswith("input 0: label")


def test_each_convex_command_has_its_own_help():
    subs = build_parser().commands
    helps = {name: {a.dest: a.help for a in subs[name]._actions} for name in ("lp", "sdp", "milp")}
    assert "milp" not in helps["lp"]["time_limit"] and "milp" not in helps["sdp"]["time_limit"]
    assert "default: 60" in helps["milp"]["time_limit"]
    assert "for lp" not in helps["sdp"]["norm"] and "cone program" in helps["lp"]["norm"]
    assert "L-inf balls only" in helps["milp"]["norm"]
    assert "first-order" in helps["sdp"]["solver"] and "400" in subs["sdp"].description


def _vnnlib_for(x0, label, eps, path):
    lines = [f"(declare-const X_{i} Real)" for i in range(64)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x0.tolist()):
        lines += [f"(assert (>= X_{i} {max(v - eps, 0.0)}))", f"(assert (<= X_{i} {min(v + eps, 1.0)}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label) + "))")
    path.write_text("\n".join(lines) + "\n")


def test_vnnlib_says_what_found_the_counterexample(tmp_path, capsys):
    from certify.data import load_dataset
    from certify.models import load_bundled
    load_bundled("digits-mlp").to_onnx(str(tmp_path / "m.onnx"))
    x, y = load_dataset("digits")
    _vnnlib_for(x[1].flatten(), int(y[1]), 0.01, tmp_path / "mis.vnnlib")        # input 1 is misclassified
    assert main(["vnnlib", str(tmp_path / "m.onnx"), str(tmp_path / "mis.vnnlib"), "--timeout", "20"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("sat")
    assert "counterexample found by the PGD attack before bounding" in err and "None" not in err
    _vnnlib_for(x[0].flatten(), int(y[0]), 0.001, tmp_path / "ok.vnnlib")
    assert main(["vnnlib", str(tmp_path / "m.onnx"), str(tmp_path / "ok.vnnlib"), "--timeout", "20"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("unsat") and re.search(r"proved by the root bound|method (input|relu|generic-input), \d+ "
                                                 r"domains", err)


def test_cohen_time_column_is_h_mm_ss(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["smooth", "digits-mlp", "--count", "2", "--samples", "100", "--n0", "10", "--format", "cohen",
                 "--out", str(out)]) == 0
    rows = (tmp_path / "s.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
    assert all(re.fullmatch(r"\d+:\d\d:\d\d(\.\d{6})?", r.split("\t")[5]) for r in rows[1:]), rows
    assert main(["curve", str(tmp_path / "s.tsv")]) == 0               # and reads back
    capsys.readouterr()


def test_records_say_whether_the_ball_was_clipped(tmp_path, capsys):
    runs = {"clip": [], "free": ["--no-domain"], "own": ["--domain", "-1", "2"]}
    for name, flags in runs.items():
        for cmd in ("bounds", "lp"):
            out = tmp_path / f"{cmd}-{name}.jsonl"
            assert main([cmd, "digits-mlp", "--count", "3", "--quiet", "--out", str(out)] + flags) == 0
            recs = [r for r in read_result_file(str(out))[1] if r.verdict != "misclassified"]
            want = {"clip": [0.0, 1.0], "free": None, "own": [-1.0, 2.0]}[name]
            assert recs and all(r.evidence["domain"] == want for r in recs), (cmd, name)
    assert main(["bounds", "digits-mlp", "--count", "1", "--domain", "0", "1", "--no-domain"]) == 2
    assert "--domain and --no-domain exclude each other" in capsys.readouterr().err


def test_verify_hands_its_live_stats_to_progress():
    from bounds.bab import verify
    from certify.spec.vnnlib import Region, VnnlibProperty
    torch.manual_seed(0)
    from certify.frontends.torch import from_module
    net = from_module(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), (2,))
    import numpy as np
    prop = VnnlibProperty("p", 2, 2, [Region(np.zeros(2), np.full(2, 0.01), [(np.array([[1.0, -1.0]]), np.array([-50.0]))])])
    seen = []
    res = verify(net, prop, timeout=10, progress=seen.append)
    assert res.status == "unsat" and seen and all(isinstance(s, dict) for s in seen)
    assert seen[-1]["domains"] == res.stats["domains"] and seen[-1]["bound_calls"] == res.stats["bound_calls"]

    from certify.cli.vnn import VerifyProgress, _found_by

    class Bar:
        n, postfix = 0, ""

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s
    watch, bar = VerifyProgress(10.0, 0.0), Bar()
    watch({"method": "relu", "domains": 12, "worst_open_lower": -0.25})
    watch.refresh(bar)
    assert bar.postfix == "relu, 12 domains, bound -0.25" and bar.n == 10.0
    assert _found_by({"method": None, "found_by": "sample"}) == "counterexample found by sampling before bounding"
    assert _found_by({"method": "relu", "domains": 3, "bound_calls": 2}) == "method relu, 3 domains, 2 bound calls"


def test_sized_progress_passes_every_item_through():
    from certify.report.progress import progress
    batches = [[1, 2, 3], [4], [5, 6]]
    assert list(progress(batches, total=6, size=len)) == batches
    assert list(progress(iter(range(4)), total=4)) == [0, 1, 2, 3]
