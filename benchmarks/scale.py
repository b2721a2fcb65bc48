"""Scale-out over a Dask cluster of worker processes on this machine (``--cluster``, 127.0.0.1 only).

Measured in one run, at 1 and at 2 worker processes of one thread each (``local:W`` clusters,
started and warmed up, modules imported, before anything is timed):

* ``smooth``: ``certify smooth`` of LeNet conv20-conv50-fc500 (random weights, exported to ONNX) on
  MNIST test images, N = ``--samples``, n0 100, sigma 0.25, through ``--cluster``: inputs per second
  of the whole command (its driver, each worker's setup, every task), and the ratio 2 workers / 1;
* ``vnncomp``: ``certify vnncomp`` of a VNN-COMP subset the same way: instances per second, ratio;
* ``overhead``: ``certify.cluster.run_units`` of ``--noop-tasks`` tasks that do nothing, on 1 worker:
  seconds per task, and as a fraction of a typical task (the smoothing run's seconds per input on 1
  worker).

Targets: 2 workers >= 1.8x one on smoothing; per-task overhead < 5% of a typical task. machine.json
records ``os.getloadavg()`` before and after each run: other jobs on a shared machine take cores
from the 2-worker runs.

    python benchmarks/scale.py --out benchmarks/results/scale     # a few minutes on 2 cores
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from certify.cli.main import main as certify  # noqa: E402
from certify.cluster import connect, run_units  # noqa: E402
from certify.report.results_folder import command_line, machine_info, read_csv_rows, write_results_folder  # noqa: E402
from certify.vnncomp import summarize  # noqa: E402

SHARED = Path(os.environ.get("CERTIFY_SHARED", ROOT.parent / "shared"))


def warm() -> None:
    """Run on every worker before timing: import what the tasks import."""
    import certify.cli.smooth  # noqa: F401
    import certify.vnncomp  # noqa: F401


def noop(unit) -> None:
    return None


def lenet_onnx(folder: Path) -> Path:
    from certify.frontends.torch import from_module
    from certify.ir.export import to_onnx
    from certify.models.zoo import build
    torch.manual_seed(0)
    path = folder / "lenet.onnx"
    to_onnx(from_module(build("lenet", (1, 28, 28), 10).eval(), (1, 28, 28)), path)
    return path


def timed_command(argv: list[str], log: Path) -> float:
    """Wall seconds of ``certify ARGV`` in this process (its output to ``log``); it must succeed."""
    t0 = time.perf_counter()
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        status = certify(argv)
    if status != 0:
        raise SystemExit(f"certify {' '.join(argv)} failed with status {status}; see {log}")
    return time.perf_counter() - t0


def measure(workers: int, args, model: Path, tmp: Path, loads: dict) -> list[dict]:
    rows = []
    with connect(f"local:{workers}") as client:
        client.run(warm)
        address = client.scheduler.address
        loads[f"before_{workers}_workers"] = os.getloadavg()
        out = tmp / f"smooth-{workers}.jsonl"
        secs = timed_command(["--threads", "1", "smooth", str(model), "--data", "mnist", "--data-dir",
                              str(SHARED / "data"), "--max", str(args.inputs), "--n", str(args.samples),
                              "--out", str(out), "--cluster", address], tmp / "log.txt")
        rows.append({"measure": "smooth", "workers": workers, "items": args.inputs, "seconds": round(secs, 2),
                     "per_s": round(args.inputs / secs, 4)})
        csv_out = tmp / f"vnncomp-{workers}.csv"
        secs = timed_command(["--threads", "1", "vnncomp", str(SHARED / "vnncomp" / args.vnncomp), "--every",
                              str(args.every), "--ground-truth", str(SHARED / "vnncomp" / "ground_truth.csv"),
                              "--out", str(csv_out), "--cluster", address], tmp / "log.txt")
        s = summarize(read_csv_rows(csv_out))
        rows.append({"measure": "vnncomp", "workers": workers, "items": s["instances"], "seconds": round(secs, 2),
                     "per_s": round(s["instances"] / secs, 4), "solved": s["solved"], "wrong": s["wrong"]})
        if workers == 1:
            t0 = time.perf_counter()
            run_units(list(range(args.noop_tasks)), noop, client, lambda u, r: None)
            secs = time.perf_counter() - t0
            rows.append({"measure": "overhead", "workers": 1, "items": args.noop_tasks, "seconds": round(secs, 3),
                         "per_s": round(args.noop_tasks / secs, 2)})
        loads[f"after_{workers}_workers"] = os.getloadavg()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=24, help="MNIST test images for smoothing (default 24)")
    p.add_argument("--samples", type=int, default=10_000, help="smoothing's N (default 10000)")
    p.add_argument("--vnncomp", default="acasxu", help="VNN-COMP benchmark of ../shared/vnncomp (default acasxu)")
    p.add_argument("--every", type=int, default=6, help="its every K-th instance (default 6)")
    p.add_argument("--noop-tasks", type=int, default=200, help="tasks of the overhead measurement (default 200)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "scale"), help="results folder")
    args = p.parse_args(argv)
    if not (SHARED / "data" / "mnist").is_dir() or not (SHARED / "vnncomp" / args.vnncomp).is_dir():
        print(f"error: needs {SHARED}/data/mnist and {SHARED}/vnncomp/{args.vnncomp}", file=sys.stderr)
        return 2
    loads: dict = {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = lenet_onnx(tmp)
        rows = measure(1, args, model, tmp, loads) + measure(2, args, model, tmp, loads)
    by = {(r["measure"], r["workers"]): r for r in rows}
    smooth_task_s = by[("smooth", 1)]["seconds"] / by[("smooth", 1)]["items"]
    overhead_s = by[("overhead", 1)]["seconds"] / by[("overhead", 1)]["items"]
    summary = {
        "smooth": {"model": "LeNet conv20-conv50-fc500 (random weights)", "N": args.samples, "inputs": args.inputs,
                   "inputs_per_s_1_worker": by[("smooth", 1)]["per_s"], "inputs_per_s_2_workers": by[("smooth", 2)]["per_s"],
                   "speedup_2_vs_1": round(by[("smooth", 2)]["per_s"] / by[("smooth", 1)]["per_s"], 3), "target": 1.8},
        "vnncomp": {"benchmark": args.vnncomp, "every": args.every, "instances": by[("vnncomp", 1)]["items"],
                    "instances_per_s_1_worker": by[("vnncomp", 1)]["per_s"],
                    "instances_per_s_2_workers": by[("vnncomp", 2)]["per_s"],
                    "speedup_2_vs_1": round(by[("vnncomp", 2)]["per_s"] / by[("vnncomp", 1)]["per_s"], 3),
                    "wrong": max(by[("vnncomp", w)]["wrong"] for w in (1, 2))},
        "overhead": {"seconds_per_task": round(overhead_s, 5), "typical_task_s": round(smooth_task_s, 4),
                     "fraction_of_typical_task": round(overhead_s / smooth_task_s, 5), "target": 0.05},
    }
    print(f"{'measure':<10}{'workers':>8}{'items':>7}{'seconds':>10}{'per s':>10}")
    for r in rows:
        print(f"{r['measure']:<10}{r['workers']:>8}{r['items']:>7}{r['seconds']:>10}{r['per_s']:>10}")
    print(f"smoothing: 2 workers {summary['smooth']['speedup_2_vs_1']}x one (target 1.8x); vnncomp "
          f"{summary['vnncomp']['speedup_2_vs_1']}x; per-task overhead {overhead_s * 1e3:.1f} ms = "
          f"{summary['overhead']['fraction_of_typical_task']:.2%} of a smoothing task (target < 5%)")
    print(f"load average (1, 5, 15 min): start {loads['start']}, end {loads['after_2_workers']}")
    out = Path(args.out)
    write_results_folder(out, summary, None, [command_line()],
                         machine_info(threads_per_worker=1, loadavg=loads))
    fields = ["measure", "workers", "items", "seconds", "per_s", "solved", "wrong"]
    with open(out / "rows.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}/summary.json, rows.csv, command.txt, machine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
