"""Certified-accuracy curves: certified accuracy at chosen radii, average certified radius (ACR),
tables (text, Markdown, LaTeX; best value per radius marked, as in Cohen et al.'s analyze.py),
CSV and a PNG plot (matplotlib, Agg backend: works headless).

Inputs: our JSON-lines result files (``certify.report.read_records``) or Cohen et al.'s
tab-separated files (header ``idx label predict radius correct time``).

Definitions: an input counts as certified at radius r when its prediction is correct and its
certified radius is >= r (so r = 0 gives the smoothed/verified classifier's clean accuracy; an
abstention has prediction -1 and never counts). A record without a radius (a fixed-eps run) has
radius eps when its verdict is ``certified`` and 0 otherwise. ACR = mean over all inputs of
(radius if correct else 0) (Zhai et al. 2020).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

from certify.errors import CertifyError
from certify.report.records import Record, read_records

COHEN_HEADER = ["idx", "label", "predict", "radius", "correct", "time"]


@dataclass
class Results:
    """One result file's per-input arrays: radius (certified radius, 0 if none), correct (bool)."""

    name: str
    idx: np.ndarray
    radius: np.ndarray
    correct: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)


def _effective_radius(r: Record) -> float:
    if r.radius is not None:
        return float(r.radius)
    return float(r.eps) if (r.verdict == "certified" and r.eps is not None) else 0.0


def from_records(records: list[Record], name: str = "results") -> Results:
    rad = np.array([_effective_radius(r) for r in records], dtype=float)
    ok = np.array([r.correct and r.verdict != "abstain" for r in records], dtype=bool)
    return Results(name, np.array([r.idx for r in records], dtype=int), rad, ok)


def _read_cohen(path: str, lines: list[str]) -> Results:
    head = lines[0].split("\t")
    col = {h.strip(): k for k, h in enumerate(head)}
    idx, rad, ok = [], [], []
    for k, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        try:
            idx.append(int(f[col["idx"]]))
            rad.append(float(f[col["radius"]]))
            ok.append(bool(int(f[col["correct"]])))
        except (ValueError, IndexError) as e:
            raise CertifyError(f"{path}:{k}: not a Cohen-format row ({e})") from None
    return Results(_name(path), np.array(idx, dtype=int), np.array(rad, dtype=float), np.array(ok, dtype=bool))


def _name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".jsonl", ".json", ".tsv", ".txt"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def load_results(path: str) -> Results:
    """Results of a JSON-lines record file or a Cohen tab-separated file (detected by its header)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise CertifyError(f"cannot read result file {path}: {e.strerror}") from None
    lines = text.splitlines()
    if not lines:
        raise CertifyError(f"{path}: empty result file")
    first = lines[0].split("\t")
    if {"idx", "radius", "correct"} <= {h.strip() for h in first}:
        return _read_cohen(path, lines)
    if not lines[0].lstrip().startswith("{"):
        raise CertifyError(f"{path}: neither JSON-lines records nor Cohen's tab-separated format "
                           f"(header {' '.join(COHEN_HEADER)})")
    return from_records(read_records(path), _name(path))


def write_cohen(path: str, records: list[Record], append: bool = False) -> None:
    """Write records in Cohen et al.'s format ``idx label predict radius correct time``."""
    new = not (append and os.path.exists(path) and os.path.getsize(path) > 0)
    with open(path, "w" if new else "a") as f:
        if new:
            f.write("\t".join(COHEN_HEADER) + "\n")
        for r in records:
            f.write(f"{r.idx}\t{r.label}\t{r.predict}\t{_effective_radius(r):.3f}\t{int(r.correct)}\t"
                    f"{r.seconds:.4f}\n")


def certified_accuracy(res: Results, radii) -> np.ndarray:
    """Fraction of inputs certified at each radius (correct and radius >= r)."""
    radii = np.asarray(radii, dtype=float)
    if len(res) == 0:
        return np.zeros_like(radii)
    return ((res.radius[None, :] >= radii[:, None]) & res.correct[None, :]).mean(axis=1)


def acr(res: Results) -> float:
    """Average certified radius: mean of radius over inputs, counting wrong or abstained ones as 0."""
    if len(res) == 0:
        return 0.0
    return float(np.where(res.correct, res.radius, 0.0).mean())


def accuracy_table(results: list[Results], radii) -> np.ndarray:
    """(files, radii) certified accuracies."""
    return np.stack([certified_accuracy(r, radii) for r in results]) if results else np.zeros((0, len(radii)))


def _best(table: np.ndarray) -> np.ndarray:
    return table >= table.max(axis=0, keepdims=True) - 1e-12 if table.size else table.astype(bool)


def format_table(results: list[Results], radii, fmt: str = "text") -> str:
    """Certified accuracy per file (rows) and radius (columns), plus ACR; best per radius marked
    (text: '*', markdown: **bold**, latex: \\textbf)."""
    if fmt not in ("text", "markdown", "latex"):
        raise CertifyError(f"unknown table format {fmt!r}; choose text, markdown or latex")
    radii = [float(r) for r in radii]
    table = accuracy_table(results, radii)
    best = _best(table)
    acrs = np.array([acr(r) for r in results])
    best_acr = acrs >= acrs.max() - 1e-12 if len(acrs) else acrs.astype(bool)
    head = ["file"] + [f"r={r:g}" for r in radii] + ["ACR", "n"]

    def cell(v, b, digits=3):
        s = f"{v:.{digits}f}"
        return {"text": s + ("*" if b else " "), "markdown": f"**{s}**" if b else s,
                "latex": f"\\textbf{{{s}}}" if b else s}[fmt]

    rows = [[r.name] + [cell(table[i, j], best[i, j]) for j in range(len(radii))]
            + [cell(acrs[i], best_acr[i]), str(len(r))] for i, r in enumerate(results)]
    if fmt == "text":
        w = [max(len(x[k]) for x in [head] + rows) for k in range(len(head))]
        lines = ["  ".join(c.rjust(w[k]) if k else c.ljust(w[k]) for k, c in enumerate(x)) for x in [head] + rows]
        return "\n".join(lines) + "\n(* best per column)"
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(x) + " |" for x in rows]
        return "\n".join(lines)
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join([esc(x[0])] + x[1:]) + r" \\" for x in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def write_csv(path: str, results: list[Results], radii) -> None:
    """CSV: one row per radius, one column of certified accuracy per file."""
    table = accuracy_table(results, radii)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["radius"] + [r.name for r in results])
        for j, r in enumerate(radii):
            w.writerow([f"{float(r):g}"] + [f"{table[i, j]:.6f}" for i in range(len(results))])


def plot(path: str, results: list[Results], max_radius: float | None = None, title: str | None = None) -> None:
    """PNG of certified accuracy vs radius, one line per file (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max_radius
    if top is None:
        top = max([float(r.radius[r.correct].max()) for r in results if r.correct.any()] + [1e-3]) * 1.05
    grid = np.linspace(0.0, top, 400)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(grid, certified_accuracy(r, grid), label=f"{r.name} (ACR {acr(r):.3f})")
    ax.set_xlabel("radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, top)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise CertifyError(f"cannot write plot {path}: {e.strerror}") from None
    finally:
        plt.close(fig)


def default_radii(results: list[Results], step: float | None = None) -> list[float]:
    """0, step, 2 step, ... up to the largest certified radius; default step: 1, 2.5 or 5 times a
    power of ten, giving 4 to 10 steps."""
    top = max([float(r.radius[r.correct].max()) for r in results if r.correct.any()] + [0.0])
    if step is None:
        if top <= 0:
            step = 0.25
        else:
            p = 10.0 ** math.floor(math.log10(top / 4))
            step = next(m * p for m in (5.0, 2.5, 1.0) if top / (m * p) >= 4)
    k = max(int(math.floor(top / step + 1e-9)), 4 if top <= 0 else 1)
    return [round(i * float(step), 10) for i in range(k + 1)]
