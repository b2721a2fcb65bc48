"""VNN-COMP runs: decide one instance (a network and a VNN-LIB property) or every instance of a
benchmark folder, write VNN-COMP result files / a results CSV, and score them.

Result file (VNN-COMP 2022+): first line ``sat`` / ``unsat`` / ``timeout`` / ``unknown`` /
``error``; after ``sat`` the counterexample ``((X_0 v)\\n (X_1 v) ... (Y_0 v) ...)``.
Scoring: +10 per correct sat/unsat, -150 per wrong one (a ``sat`` whose counterexample fails the
onnxruntime check counts as wrong); instances whose truth is unknown score 0.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np

from certify.errors import CertifyError

VERDICTS = ("sat", "unsat", "timeout", "unknown", "error")
CSV_FIELDS = ["benchmark", "onnx", "vnnlib", "timeout_s", "verdict", "seconds", "domains", "method",
              "truth", "correct", "ce_valid"]


def format_result(status: str, counterexample=None) -> str:
    """The VNN-COMP result file text for ``status`` (and the (x, y) counterexample after sat)."""
    if status not in VERDICTS:
        raise ValueError(status)
    if status != "sat" or counterexample is None:
        return status + "\n"
    x, y = (np.asarray(v, dtype=np.float64).reshape(-1) for v in counterexample)
    items = [f"(X_{i} {v!r})" for i, v in enumerate(x.tolist())] + [f"(Y_{j} {v!r})" for j, v in enumerate(y.tolist())]
    return "sat\n(" + "\n ".join(items) + ")\n"


def parse_result(text: str) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """(status, x, y) from a result file's text (x, y None unless a counterexample follows)."""
    lines = text.strip().splitlines()
    status = lines[0].strip() if lines else ""
    if status != "sat" or len(lines) < 2:
        return status, None, None
    xs, ys = {}, {}
    body = " ".join(lines[1:]).replace("(", " ").replace(")", " ").split()
    for name, val in zip(body[0::2], body[1::2]):
        (xs if name.startswith("X_") else ys)[int(name[2:])] = float(val)
    return status, np.array([xs[i] for i in range(len(xs))]), np.array([ys[j] for j in range(len(ys))])


def onnx_session(path: str):
    """An onnxruntime session (CPU, one thread) for a .onnx / .onnx.gz file; counterexamples are
    judged by its outputs (``check_counterexample_ort``)."""
    import onnxruntime as ort
    data = gzip.open(path, "rb").read() if str(path).endswith(".gz") else Path(path).read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def check_counterexample_ort(onnx_path: str, prop, x: np.ndarray, tol: float = 1e-4) -> bool:
    """VNN-COMP's check: x (cast to float32) in a region's box (abs tol) and the onnxruntime
    output violating that region's condition (abs tol)."""
    sess = onnx_session(onnx_path)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    x32 = np.asarray(x, dtype=np.float32).reshape(shape)
    y = sess.run(None, {inp.name: x32})[0].reshape(-1).astype(np.float64)
    return prop.violated_by(x32.reshape(-1).astype(np.float64), y, tol=tol)


def run_instance(net, onnx_path: str, vnnlib_path: str, timeout: float, method: str = "auto",
                 started: float | None = None, seed: int = 0, progress=None):
    """Load the property for ``net`` and verify it; returns (VerifyResult, prop). ``started`` is
    when the clock for ``timeout`` began (model loading counts, as in the competition);
    ``progress``: passed to ``bounds.bab.verify``."""
    from bounds.bab import verify
    from certify.spec import vnnlib
    started = time.monotonic() if started is None else started
    prop = vnnlib.load(vnnlib_path, net.input_size, net.output_size)
    left = max(0.5, timeout - (time.monotonic() - started) - 1.0)
    return verify(net, prop, timeout=left, method=method, seed=seed, progress=progress), prop


def read_instances(path: Path) -> list[tuple[str, str, float]]:
    """Rows (onnx, vnnlib, timeout) of a VNN-COMP instances.csv (no header)."""
    if not path.exists():
        raise CertifyError(f"instances file {path} does not exist")
    rows = []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            rows.append((parts[0], parts[1], float(parts[2])))
        except (IndexError, ValueError):
            raise CertifyError(f"{path}:{ln}: expected 'onnx,vnnlib,timeout', got {line!r}") from None
    return rows


def read_ground_truth(path: Path | None) -> dict[tuple[str, str], dict]:
    """Ground-truth rows keyed by (onnx file name, vnnlib file name) and by their relative paths."""
    if path is None:
        return {}
    if not path.exists():
        raise CertifyError(f"ground truth file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"onnx", "vnnlib", "truth"} <= set(reader.fieldnames):
            raise CertifyError(f"{path}: needs the columns onnx, vnnlib, truth")
        out = {}
        for r in reader:
            out[(r["onnx"], r["vnnlib"])] = r
        return out


def truth_for(gt: dict, bench: str, onnx: str, vnnlib: str):
    """The ground-truth row (``read_ground_truth``) of one instance of benchmark ``bench``, or None."""
    return gt.get((f"{bench}/{onnx}", f"{bench}/{vnnlib}")) or gt.get((onnx, vnnlib))


def score_row(verdict: str, truth: str | None, ce_valid: str) -> tuple[str, int]:
    """(correct in yes/no/-, VNN-COMP points) for one instance."""
    if verdict == "sat" and ce_valid == "no":
        return "no", -150
    if verdict not in ("sat", "unsat") or truth not in ("sat", "unsat"):
        return "-", 0
    return ("yes", 10) if verdict == truth else ("no", -150)


def summarize(rows: list[dict]) -> dict:
    """Counts by verdict, correct sat/unsat, wrong, times and the score of result rows."""
    s = {"instances": len(rows), "by_verdict": {v: 0 for v in VERDICTS}, "correct_sat": 0, "correct_unsat": 0,
         "wrong": 0, "score": 0}
    times = []
    for r in rows:
        s["by_verdict"][r["verdict"]] = s["by_verdict"].get(r["verdict"], 0) + 1
        correct, pts = score_row(r["verdict"], r.get("truth") or None, r.get("ce_valid", "-"))
        s["score"] += pts
        if correct == "yes":
            s["correct_" + r["verdict"]] += 1
        elif correct == "no":
            s["wrong"] += 1
        times.append(float(r["seconds"]))
    s["solved"] = s["by_verdict"]["sat"] + s["by_verdict"]["unsat"]
    s["total_s"] = round(sum(times), 2)
    s["median_s"] = round(statistics.median(times), 2) if times else 0.0
    return s


def _csv_line(row: dict) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=CSV_FIELDS).writerow(row)
    return buf.getvalue()


def _write_all(fd: int, path: Path, text: str) -> None:
    data = text.encode("utf-8")
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError as e:
        raise CertifyError(f"cannot write results file {path}: {e.strerror}") from None


def _open_results_csv(out: Path, overwrite: bool, bench: str) -> tuple[int, dict[tuple[str, str], dict], int]:
    """Open and lock ``out``; returns (fd, benchmark ``bench``'s finished rows by (onnx, vnnlib),
    rows to retry).

    The last row of an instance counts; rows of other benchmarks in the same file are kept, not resumed. Rows whose verdict is ``error`` are dropped from the
    file (rewritten in place) so the instance runs again; a file that is not a results CSV of
    this command is refused unless ``overwrite``."""
    from certify.report.records import lock_file
    if out.is_dir():
        raise CertifyError(f"--out {out} is a directory; give a file name, e.g. {out / 'results.csv'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        raise CertifyError(f"cannot write results file {out}: {e.strerror}") from None
    try:
        lock_file(fd, str(out))
        if overwrite:
            os.ftruncate(fd, 0)
        with open(out, "rb") as f:
            try:
                text = f.read().decode("utf-8")
            except UnicodeDecodeError:
                raise CertifyError(f"{out} exists and is not a results CSV (binary data); pass --overwrite "
                                   "to replace it") from None
        rows = list(csv.DictReader(io.StringIO(text))) if text.strip() else []
        if text.strip() and text.splitlines()[0].split(",") != CSV_FIELDS:
            raise CertifyError(f"{out} exists and is not a certify vnncomp results CSV (header "
                               f"{text.splitlines()[0][:80]!r}); pass --overwrite to replace it, or another --out")
        kept: dict[tuple[str, str, str], dict] = {}
        for r in rows:
            if r.get("verdict") in VERDICTS:
                kept[(r.get("benchmark") or bench, r["onnx"], r["vnnlib"])] = r
        retry = [k for k, r in kept.items() if r["verdict"] == "error" and k[0] == bench]
        for k in retry:
            del kept[k]
        if retry or len(kept) != len(rows) or not text.strip():
            os.ftruncate(fd, 0)
            _write_all(fd, out, ",".join(CSV_FIELDS) + "\r\n" + "".join(_csv_line(r) for r in kept.values()))
    except BaseException:
        os.close(fd)
        raise
    return fd, {k[1:]: r for k, r in kept.items() if k[0] == bench}, len(retry)


INSTANCE_GRACE = 60.0   # seconds past its own timeout after which a cluster task of an instance is given up


_NETS: dict[tuple, object] = {}


def _network(path: str, device: str = "cpu"):
    """The network of ``path`` on ``device``, loaded once while consecutive instances share it (per process)."""
    from certify.models import load_model
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, device)
    if key not in _NETS:
        _NETS.clear()
        _NETS[key] = load_model(path).to(device=device)
    return _NETS[key]


def decide_instance(bench_dir: str, method: str, unit: tuple[int, str, str, float], device: str = "cpu") -> dict:
    """Decide one instance ``unit`` = (position, onnx, vnnlib, timeout) of the benchmark folder
    ``bench_dir``: {verdict, seconds, domains, method, ce_valid, error}. The clock of the timeout
    starts here (loading the model counts, as in the competition); a ``CertifyError`` (a file that
    does not load) is verdict ``error`` with its message. The network runs on ``device``."""
    _, onnx, vnn, timeout = unit
    t0 = time.monotonic()
    onnx_path, vnn_path = str(Path(bench_dir) / onnx), str(Path(bench_dir) / vnn)
    out = {"verdict": "error", "domains": 0, "method": "", "ce_valid": "-", "error": ""}
    try:
        res, prop = run_instance(_network(onnx_path, device), onnx_path, vnn_path, timeout, method, t0)
        out.update(verdict=res.status, domains=res.stats["domains"], method=res.stats.get("method") or "")
        if res.status == "sat":
            out["ce_valid"] = "yes" if check_counterexample_ort(onnx_path, prop, res.counterexample[0]) else "no"
    except CertifyError as e:
        out["error"] = str(e)
    out["seconds"] = time.monotonic() - t0
    return out


def run_benchmark(bench_dir: Path, out: Path, instances: Path | None = None, ground_truth: Path | None = None,
                  timeout_scale: float = 1.0, method: str = "auto", overwrite: bool = False,
                  select=None, log=print, client=None, threads: int = 1, device: str = "cpu",
                  timeout_cap: float | None = None) -> dict:
    """Run every instance (resuming this benchmark's rows already in ``out``, retrying those that
    ended in ``error``); returns the summary dict of the instances selected. ``out`` is locked
    while the run lasts and written by this process only.

    Each instance gets its timeout times ``timeout_scale``, at most ``timeout_cap`` seconds.
    ``select(index, onnx, vnnlib) -> bool`` picks a subset. ``client`` (a ``distributed.Client``)
    runs each instance as a task on its cluster, torch at ``threads`` threads (``bounds.bab`` runs
    its own threads beside); a task that fails there (twice, or ``INSTANCE_GRACE`` s past its
    timeout) is an ``error`` row, run again by the next rerun. ``device``: where the networks run."""
    from certify.cluster import run_units
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise CertifyError(f"benchmark folder {bench_dir} does not exist")
    rows_in = read_instances(instances or bench_dir / "instances.csv")
    gt = read_ground_truth(ground_truth)
    bench = bench_dir.name
    out = Path(out)
    fd, done, n_retry = _open_results_csv(out, overwrite, bench)
    results, units = [], []

    def on_result(unit, r: dict) -> None:
        k, onnx, vnn, timeout = unit
        if r["error"]:
            log(f"  {onnx} {vnn}: error: {r['error']}")
        g = truth_for(gt, bench, onnx, vnn)
        truth = g["truth"] if g else ""
        correct, _ = score_row(r["verdict"], truth or None, r["ce_valid"])
        row = {"benchmark": bench, "onnx": onnx, "vnnlib": vnn, "timeout_s": f"{timeout:.1f}",
               "verdict": r["verdict"], "seconds": f"{r['seconds']:.2f}", "domains": r["domains"],
               "method": r["method"], "truth": truth, "correct": correct, "ce_valid": r["ce_valid"]}
        _write_all(fd, out, _csv_line(row))
        results.append(row)
        log(f"  [{k + 1}/{len(rows_in)}] {onnx} {vnn}: {r['verdict']} ({r['seconds']:.1f} s, {r['domains']} domains)"
            + (f" truth={truth}" if truth else "") + (" WRONG" if correct == "no" else ""))

    def on_failure(unit, message: str) -> None:
        on_result(unit, {"verdict": "error", "seconds": 0.0, "domains": 0, "method": "", "ce_valid": "-",
                         "error": f"task failed: {message}"})

    try:
        if n_retry:
            log(f"retrying {n_retry} instance(s) whose last result in {out} was 'error'")
        for k, (onnx, vnn, to) in enumerate(rows_in):
            if select is not None and not select(k, onnx, vnn):
                continue
            timeout = to * timeout_scale if timeout_cap is None else min(to * timeout_scale, timeout_cap)
            if (onnx, vnn) in done:
                row = done[(onnx, vnn)]
                if row.get("timeout_s") != f"{timeout:.1f}":
                    raise CertifyError(f"{out} holds {onnx} {vnn} run with timeout {row.get('timeout_s')} s, this "
                                       f"run gives it {timeout:.1f} s (--timeout-scale {timeout_scale:g}); rerun "
                                       "with the same --timeout-scale, or use --overwrite or another --out")
                results.append(row)
                continue
            units.append((k, onnx, vnn, timeout))
        run_units(units, partial(decide_instance, str(bench_dir.resolve()), method, device=device), client, on_result,
                  on_failure, threads=threads, timeout=lambda u: u[3] + INSTANCE_GRACE, name=f"certify-vnncomp-{bench}")
    finally:
        os.close(fd)
    return summarize(results)


def format_summary(name: str, s: dict) -> str:
    bv = s["by_verdict"]
    return (f"{name}: {s['instances']} instances, solved {s['solved']} (sat {bv['sat']}, unsat {bv['unsat']}), "
            f"timeout {bv['timeout']}, unknown {bv['unknown']}, error {bv['error']}; correct sat {s['correct_sat']}, "
            f"correct unsat {s['correct_unsat']}, WRONG {s['wrong']}; total {s['total_s']} s, median {s['median_s']} s; "
            f"score {s['score']}")
