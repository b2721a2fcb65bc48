"""README.md runs as written: its Python API blocks execute verbatim, and every `certify ...`
command of its command-line section runs (exit 0) with the sizes made small (--count at most 3,
--samples 200, --epochs 1, --timeout 10, --time-limit 0.3; the SDP on one input, the VNN-COMP
folder limited to one instance) in a folder holding the files the commands name: the README's own
run.yaml and my_models.py, net.pt for that class, net.onnx + prop.vnnlib and model.pt2 made from
the bundled digits model."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from certify.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SHARED = ROOT.parent / "shared"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _files() -> dict[str, str]:
    """Blocks whose first line is a file name comment ('# run.yaml'): files the commands use."""
    out = {}
    for lang in ("python", "yaml"):
        for b in _blocks(lang):
            first = b.splitlines()[0]
            if re.fullmatch(r"# [\w.]+\.(py|yaml|toml)", first):
                out[first[2:]] = b
    return out


def _commands() -> list[str]:
    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("certify "):
                cmds.append(line)
    return cmds


def _small(argv: list[str]) -> list[str]:
    caps = {"--count": 1 if argv[0] == "sdp" else 3, "--samples": 200, "--epochs": 1, "--timeout": 10,
            "--time-limit": 0.3}
    out = []
    for k, a in enumerate(argv):
        prev = argv[k - 1] if k else ""
        if prev in caps:
            a = str(min(type(caps[prev])(float(a)), caps[prev]))
        out.append(a.replace("../shared", str(SHARED)))
    if argv[0] == "vnncomp":
        out += ["--limit", "1", "--timeout-scale", "0.02"]
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_readme_python_api_blocks_run_verbatim(workdir, capsys):
    code = [b for b in _blocks("python") if b not in _files().values()]
    assert code and "certified accuracy" in code[0]
    ns: dict = {}
    for block in code:
        exec(compile(block, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    m = re.search(r"clean accuracy ([\d.]+), certified accuracy ([\d.]+)", out)
    assert m and 0 < float(m.group(2)) <= float(m.group(1)) <= 1
    assert ns["b"].lower.shape == (100, 9) and ns["r"].shape == (10,)
    assert {v.status for v in ns["res"]} <= {"sat", "unsat", "unknown", "timeout"}


def _prepare(d: Path) -> None:
    from certify.frontends.torch import from_module
    from certify.models import load_bundled
    for name, text in _files().items():
        (d / name).write_text(text)
    import importlib

    import my_models
    importlib.reload(my_models)
    torch.manual_seed(0)
    torch.save(my_models.Net(32).state_dict(), d / "net.pt")
    net = load_bundled("digits-mlp")
    net.to_onnx(str(d / "net.onnx"))
    module = net.to_torch().eval()
    torch.export.save(torch.export.export(module, (torch.rand(2, 1, 8, 8),)), str(d / "model.pt2"))
    assert from_module(module, (1, 8, 8)).output_size == 10
    from certify.data import load_dataset
    x, y = load_dataset("digits", "test")
    x0, label = x[0].flatten(), int(y[0])
    lines = [f"(declare-const X_{i} Real)" for i in range(64)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x0.tolist()):
        lines += [f"(assert (>= X_{i} {max(v - 0.02, 0.0)}))", f"(assert (<= X_{i} {min(v + 0.02, 1.0)}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label) + "))")
    (d / "prop.vnnlib").write_text("\n".join(lines) + "\n")


def test_readme_commands_run(workdir, capsys):
    cmds = _commands()
    named = {shlex.split(c, comments=True)[1] for c in cmds}
    assert {"info", "bounds", "lp", "sdp", "milp", "smooth", "curve", "check", "vnnlib", "vnncomp", "train"} <= named
    _prepare(workdir)
    ran = 0
    for c in cmds:
        argv = _small(shlex.split(c, comments=True)[1:])
        if argv[0] == "vnncomp" and not (SHARED / "vnncomp" / "acasxu").exists():
            continue
        status = main(argv)
        out = capsys.readouterr()
        assert status == 0, (c, argv, out.err[-2000:])
        ran += 1
    assert ran >= len(cmds) - 1
    assert (workdir / "runs" / "crownibp" / "config.yaml").exists() and (workdir / "curve.png").exists()
    assert (workdir / "result.txt").read_text().split()[0] in ("sat", "unsat", "unknown", "timeout")
