"""A benchmark's results folder: ``summary.json`` (the table a run prints, as data),
``rows.jsonl`` or ``rows.csv`` (one row per measured configuration or instance), ``command.txt``
(the command lines that produced the rows, one per line) and ``machine.json`` (where they ran).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def machine_info(**extra) -> dict:
    """The machine and library versions of this process, plus ``extra`` (e.g. threads)."""
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            **extra}


def command_line(argv: list[str] | None = None) -> str:
    """``python <script> <args>`` of this process (or of ``argv``), shell-quoted."""
    argv = sys.argv if argv is None else argv
    return "python " + " ".join(shlex.quote(a) for a in argv)


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def write_rows_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_results_folder(out: Path, summary: dict, rows: list[dict] | None, commands: list[str],
                         machine: dict) -> Path:
    """Write ``out``/{summary.json, rows.jsonl, command.txt, machine.json}; ``rows`` None leaves
    the rows file to the caller (e.g. a CSV written as the run goes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    if rows is not None:
        write_rows_jsonl(out / "rows.jsonl", rows)
    (out / "command.txt").write_text("".join(c + "\n" for c in commands))
    write_json(out / "machine.json", machine)
    return out


def commands_with(out: Path, command: str) -> list[str]:
    """The commands of ``out``/command.txt with ``command`` added unless it is there (a folder that
    several runs fill, or a run resumed)."""
    path = Path(out) / "command.txt"
    done = path.read_text().splitlines() if path.exists() else []
    return done + ([command] if command not in done else [])


def read_csv_rows(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
