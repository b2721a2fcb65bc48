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
import datetime
import math
import os
from dataclasses import dataclass, field

import numpy as np

from certify.errors import CertifyError
from certify.report.provenance import label as provenance_label
from certify.report.records import Record, read_result_file

COHEN_HEADER = ["idx", "label", "predict", "radius", "correct", "time"]


NORM_NAMES = {"inf": "L-inf", "2": "L2", "1": "L1"}


@dataclass
class Results:
    """One result file's per-input arrays: radius (certified radius, 0 if none), correct (bool);
    ``norms``: the norms its radii are measured in (empty: not recorded, as in Cohen's format);
    ``provenance``: the file's header, if it has one."""

    name: str
    idx: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    norms: frozenset = field(default_factory=frozenset)
    provenance: dict | None = None

    def __len__(self) -> int:
        return len(self.idx)


def _effective_radius(r: Record) -> float:
    if r.radius is not None:
        return float(r.radius)
    return float(r.eps) if (r.verdict == "certified" and r.eps is not None) else 0.0


def from_records(records: list[Record], name: str = "results") -> Results:
    rad = np.array([_effective_radius(r) for r in records], dtype=float)
    ok = np.array([r.correct and r.verdict != "abstain" for r in records], dtype=bool)
    norms = frozenset(str(r.norm) for r in records if r.norm is not None)
    return Results(name, np.array([r.idx for r in records], dtype=int), rad, ok, norms)


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
    """Results of a JSON-lines record file or a Cohen tab-separated file (detected by its header);
    the name is the provenance label (``certify.report.provenance.label``) or the file name.
    A file without a single record is a ``CertifyError``."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise CertifyError(f"cannot read result file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CertifyError(f"{path}: not a result file (binary data, neither JSON lines nor Cohen's format)") from None
    lines = text.splitlines()
    if not lines:
        raise CertifyError(f"{path}: empty result file")
    first = lines[0].split("\t")
    if {"idx", "radius", "correct"} <= {h.strip() for h in first}:
        res = _read_cohen(path, lines)
    elif not lines[0].lstrip().startswith("{"):
        raise CertifyError(f"{path}: neither JSON-lines records nor Cohen's tab-separated format "
                           f"(header {' '.join(COHEN_HEADER)})")
    else:
        header, records = read_result_file(path)
        res = from_records(records, provenance_label(header) if header else _name(path))
        res.provenance = header
    if len(res) == 0:
        raise CertifyError(f"{path}: holds no result records (an interrupted run's torn line or a header only)")
    return res


def norm_label(results: list[Results]) -> str:
    """The x-axis label: ``radius (L2)``, or the list of norms when several are mixed."""
    norms = sorted({n for r in results for n in r.norms})
    if not norms:
        return "radius"
    return "radius (" + ", ".join(NORM_NAMES.get(n, f"L{n}") for n in norms) + ")"


def plot_formats() -> list[str]:
    """File extensions ``plot`` can write (matplotlib's: png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase
    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_plot_path(path: str) -> None:
    """Refuse a plot path matplotlib cannot write (unknown extension, a directory, no such folder)
    before anything is written."""
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in plot_formats():
        raise CertifyError(f"plot {path}: unknown image format {ext or '(no extension)'!r}; use one of "
                           f"{', '.join(plot_formats())}")
    if os.path.isdir(path):
        raise CertifyError(f"plot {path} is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CertifyError(f"plot {path}: folder {parent} does not exist")


def cohen_time(seconds: float) -> str:
    """A duration as Cohen et al.'s certify.py writes it: ``str(datetime.timedelta)``, h:mm:ss[.ffffff]."""
    return str(datetime.timedelta(seconds=float(seconds)))


def write_cohen(path: str, records: list[Record], append: bool = False) -> None:
    """Write records in Cohen et al.'s format ``idx label predict radius correct time`` (time as
    h:mm:ss.ffffff, ``cohen_time``)."""
    new = not (append and os.path.exists(path) and os.path.getsize(path) > 0)
    with open(path, "w" if new else "a") as f:
        if new:
            f.write("\t".join(COHEN_HEADER) + "\n")
        for r in records:
            f.write(f"{r.idx}\t{r.label}\t{r.predict}\t{_effective_radius(r):.3f}\t{int(r.correct)}\t"
                    f"{cohen_time(r.seconds)}\n")


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
    try:
        f = open(path, "w", newline="")
    except OSError as e:
        raise CertifyError(f"cannot write CSV file {path}: {e.strerror}") from None
    with f:
        w = csv.writer(f)
        w.writerow(["radius"] + [r.name for r in results])
        for j, r in enumerate(radii):
            w.writerow([f"{float(r):g}"] + [f"{table[i, j]:.6f}" for i in range(len(results))])


def plot(path: str, results: list[Results], max_radius: float | None = None, title: str | None = None) -> None:
    """Plot of certified accuracy vs radius (the norm on the x-axis), one line per file (Agg
    backend; the format from the extension, see ``check_plot_path``)."""
    check_plot_path(path)
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
    ax.set_xlabel(norm_label(results))
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
    except (OSError, ValueError) as e:
        raise CertifyError(f"cannot write plot {path}: {getattr(e, 'strerror', None) or e}") from None
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
