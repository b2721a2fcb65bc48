"""Configuration files and the shared flags: --config (YAML, TOML) on every command with the long
flags as keys (dashes or underscores), flags overriding the file, unknown keys and bad values
refused naming them, --print-config printing a configuration that reads back to the same run,
certify train writing config.yaml and reproducing its run from it, renamed flags refused with
the name to use, --debug and --threads after the command."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from certify.cli.main import build_parser, main
from certify.report.records import read_result_file


def _records(path):
    return read_result_file(str(path))[1]


def test_every_command_takes_config_and_print_config(capsys):
    parser = build_parser()
    for name, sub in parser.commands.items():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"--config", "--print-config", "--debug", "--threads"} <= flags, name
    assert main(["curve", "x.jsonl", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["command"] == "curve" and cfg["files"] == ["x.jsonl"] and cfg["format"] == "text"


def test_yaml_config_with_flag_override_equals_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: digits-mlp\ncount: 4\neps: 0.03\nmax_radius: 0.5\nmethod: CROWN-Optimized\n"
                   "iterations: 3\nquiet: true\n")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["bounds", "--config", str(cfg), "--eps", "0.01", "--out", str(a)]) == 0
    assert main(["bounds", "digits-mlp", "--count", "4", "--eps", "0.01", "--method", "alpha", "--iterations", "3",
                 "--quiet", "--out", str(b)]) == 0
    ra, rb = _records(a), _records(b)
    assert [r.evidence.get("margin_lower") for r in ra] == [r.evidence.get("margin_lower") for r in rb]
    assert all(r.eps == 0.01 and r.method == "alpha" for r in ra)      # the flag beat the file's 0.03
    capsys.readouterr()


def test_toml_config_and_print_config_round_trip(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "digits-mlp"\ncount = 3\nnorm = "2"\neps = 0.1\ndomain = [0.0, 1.0]\n')
    assert main(["lp", "--config", str(cfg), "--print-config"]) == 0
    printed = capsys.readouterr().out
    conf = yaml.safe_load(printed)
    assert conf["command"] == "lp" and conf["norm"] == "2" and conf["domain"] == [0.0, 1.0] and conf["count"] == 3
    again = tmp_path / "again.yaml"
    again.write_text(printed)
    assert main(["lp", "--config", str(again), "--print-config"]) == 0
    assert capsys.readouterr().out == printed                  # the printed configuration reads back to itself
    out = tmp_path / "lp.jsonl"
    assert main(["lp", "--config", str(again), "--quiet", "--out", str(out)]) == 0
    recs = _records(out)
    assert len(recs) == 3 and all(r.norm == "2" and r.eps == 0.1 for r in recs)
    assert all(r.evidence.get("domain") == [0.0, 1.0] for r in recs if r.verdict != "misclassified")


@pytest.mark.parametrize("text, needle", [
    ("epss: 0.1\n", "unknown key 'epss' for certify bounds (did you mean 'eps'?)"),
    ("eps: -1\n", "key 'eps': must be >= 0, got -1"),
    ("method: deepz\n", "key 'method': invalid choice 'deepz'"),
    ("radius: 3\n", "key 'radius': expected true or false"),
    ("domain: 0.5\n", "key 'domain': expected a list of values"),
    ("domain: [0, 1, 2]\n", "key 'domain': expected 2 values"),
    ("count: [1, 2]\n", "key 'count': expected one value, not a list"),
    ("n: 5\n", "use --count for the number of inputs"),
    ("command: smooth\n", "is for certify smooth, not certify bounds"),
    ("- a list\n", "expected a mapping of option: value"),
    ("eps: [unclosed\n", "not valid YAML"),
])
def test_bad_configs_are_one_line_errors_naming_the_key(tmp_path, capsys, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["bounds", "digits-mlp", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("certify bounds: error:") and needle in err[0], err


def test_config_file_problems(tmp_path, capsys):
    assert main(["bounds", "digits-mlp", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "c.ini").write_text("eps = 1\n")
    assert main(["bounds", "digits-mlp", "--config", str(tmp_path / "c.ini")]) == 2
    assert "unknown format" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("eps = = 1\n")
    assert main(["bounds", "digits-mlp", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_renamed_flags_are_refused_with_the_new_name(capsys):
    cases = [(["bounds", "digits-mlp", "--n", "3"], "--n", "use --count for the number of inputs"),
             (["lp", "digits-mlp", "--n", "3"], "--n", "use --count"),
             (["check", "digits-mlp", "--n", "3"], "--n", "use --count"),
             (["smooth", "digits-mlp", "--n", "100"], "--n", "use --samples for the Monte-Carlo sample count n"),
             (["demo", "--n", "3"], "--n", "use --count"),
             (["train", "--eval-n", "5", "--out", "x"], "--eval-n", "use --eval-count"),
             (["train", "--n-smooth", "5", "--out", "x"], "--n-smooth", "use --samples")]
    for argv, old, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{old} is not an option of certify {argv[0]}: {needle}" in err[0], err


def test_debug_and_threads_after_the_command(tmp_path, capsys):
    with pytest.raises(Exception, match="does not exist"):       # --debug after the command: the traceback
        main(["info", str(tmp_path / "missing.onnx"), "--debug"])
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2
    n = torch.get_num_threads()
    try:
        assert main(["info", "digits-mlp", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)
    capsys.readouterr()


def test_train_writes_its_config_and_reproduces_the_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    argv = ["train", "--model", "digits-mlp", "--objective", "ibp", "--eps", "0.05", "--epochs", "1", "--subset", "300",
            "--batch-size", "50", "--no-eval", "--out", str(a)]
    assert main(argv) == 0
    conf = yaml.safe_load((a / "config.yaml").read_text())
    assert conf["command"] == "train" and conf["objective"] == "ibp" and conf["subset"] == 300
    assert "resume" not in conf and "overwrite" not in conf
    assert main(["train", "--config", str(a / "config.yaml"), "--out", str(b)]) == 0
    wa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "config.json").read_text())["model"] == "digits-mlp"
    # the run folder, its model.pt and its resumable checkpoint.pt all load as a MODEL
    outs = []
    for model in (str(a), str(a / "model.pt"), str(a / "checkpoint.pt")):
        out = tmp_path / f"r{len(outs)}.jsonl"
        assert main(["bounds", model, "--count", "3", "--quiet", "--out", str(out)]) == 0
        outs.append([r.evidence.get("margin_lower") for r in _records(out)])
    assert outs[0] == outs[1] == outs[2]
    capsys.readouterr()
