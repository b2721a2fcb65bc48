"""Scale-out over a Dask cluster of worker processes on this machine (``--cluster``, 127.0.0.1 only).

Measured in one run, at 1 and at 2 worker processes of one thread each (a ``local:1`` and a
``local:2`` cluster, both started and warmed up, modules imported, before anything is timed; the
runs of the two alternate ``--repeats`` times and the shortest of each counts, so that a change of
the machine's load hits both):

* ``smooth``: ``python -m certify smooth`` of LeNet conv20-conv50-fc500 (random weights, exported to
  ONNX) on MNIST test images, N = ``--samples``, n0 100, sigma 0.25, through ``--cluster``: inputs
  per second of the whole command (its start-up, each worker's setup, every task), and net of the
  command's fixed cost (the same command rerun with nothing left to do: start-up, loading the model
  and data, connecting); the ratios 2 workers / 1;
* ``vnncomp``: ``certify vnncomp`` of a VNN-COMP subset the same way: instances per second, ratio.
  Branch and bound runs a second thread of its own beside torch's, so on 2 cores one worker
  already uses both;
* ``overhead``: ``certify.cluster.run_units`` of ``--noop-tasks`` tasks that do nothing, on 1 worker:
  seconds per task, and as a fraction of a typical task (the smoothing run's net seconds per input
  on 1 worker).

Targets: 2 workers >= 1.8x one on smoothing; per-task overhead < 5% of a typical task. Each row
also has the workers' CPU seconds and the 1-minute load average after it; machine.json has
``os.getloadavg()`` at the start and the end: other jobs on a shared machine take cores from the
2-worker runs.

    python benchmarks/scale.py --out benchmarks/results/scale     # 15 minutes on 2 loaded cores, less when idle
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from certify.cluster import connect, run_units  # noqa: E402
from certify.report.results_folder import command_line, machine_info, read_csv_rows, write_results_folder  # noqa: E402
from certify.vnncomp import summarize  # noqa: E402

SHARED = Path(os.environ.get("CERTIFY_SHARED", ROOT.parent / "shared"))


def warm() -> None:
    """Run on every worker before timing: import what the tasks import."""
    import bounds.bab  # noqa: F401
    import certify.vnncomp  # noqa: F401
    import smoothing  # noqa: F401


def cpu_seconds() -> float:
    """Run on a worker: CPU seconds its process has used (all threads)."""
    import psutil
    t = psutil.Process().cpu_times()
    return t.user + t.system


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


def timed_command(client, argv: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the cluster's workers) of ``python -m certify ARGV --cluster``
    against ``client``'s scheduler (its output appended to ``log``); it must succeed."""
    cpu0 = sum(client.run(cpu_seconds).values())
    t0 = time.perf_counter()
    with open(log, "a") as f:
        r = subprocess.run([sys.executable, "-m", "certify", *argv, "--cluster", client.scheduler.address],
                           stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                           timeout=3600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"certify {' '.join(argv)} failed with status {r.returncode}; see {log}")
    return wall, sum(client.run(cpu_seconds).values()) - cpu0


def run_once(measure: str, workers: int, client, args, model: Path, tmp: Path, k: int) -> dict:
    """One timed run of ``measure`` (smooth or vnncomp) on the cluster of ``workers`` workers, then
    the same command again with nothing left to do: its time is the command's fixed cost (start-up,
    loading the model and data, connecting), and ``net_per_s`` counts the rest."""
    log = tmp / "log.txt"
    if measure == "smooth":
        argv = ["--threads", "1", "smooth", str(model), "--data", "mnist", "--data-dir", str(SHARED / "data"),
                "--count", str(args.inputs), "--samples", str(args.samples), "--out", str(tmp / f"smooth-{workers}-{k}.jsonl")]
        wall, cpu = timed_command(client, argv, log)
        fixed, _ = timed_command(client, argv + ["--resume"], log)
        row = {"items": args.inputs}
    else:
        out = tmp / f"vnncomp-{workers}-{k}.csv"
        argv = ["--threads", "1", "vnncomp", str(SHARED / "vnncomp" / args.vnncomp), "--every", str(args.every),
                "--ground-truth", str(SHARED / "vnncomp" / "ground_truth.csv"), "--out", str(out)]
        wall, cpu = timed_command(client, argv, log)
        fixed, _ = timed_command(client, argv, log)        # a rerun resumes every row
        s = summarize(read_csv_rows(out))
        row = {"items": s["instances"], "solved": s["solved"], "wrong": s["wrong"]}
    return {"measure": measure, "workers": workers, "repeat": k, **row, "seconds": round(wall, 2),
            "per_s": round(row["items"] / wall, 4), "fixed_s": round(fixed, 2),
            "net_per_s": round(row["items"] / max(wall - fixed, 1e-9), 4), "worker_cpu_s": round(cpu, 2),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def measure_all(args, model: Path, tmp: Path) -> list[dict]:
    """Both clusters up at once, the runs of 1 and 2 workers interleaved ``--repeats`` times (so a
    change of the machine's load hits both), then the no-op tasks on 1 worker."""
    rows = []
    with connect("local:1") as one, connect("local:2") as two:
        for c in (one, two):
            c.run(warm)
        for measure in ("smooth", "vnncomp"):
            for k in range(args.repeats):
                for w, c in ((1, one), (2, two)):
                    rows.append(run_once(measure, w, c, args, model, tmp, k))
                    print(f"  {measure} {w} worker(s), run {k + 1}: {rows[-1]['seconds']} s", flush=True)
        t0 = time.perf_counter()
        run_units(list(range(args.noop_tasks)), noop, one, lambda u, r: None)
        secs = time.perf_counter() - t0
        rows.append({"measure": "overhead", "workers": 1, "repeat": 0, "items": args.noop_tasks,
                     "seconds": round(secs, 3), "per_s": round(args.noop_tasks / secs, 2),
                     "loadavg_1min": round(os.getloadavg()[0], 2)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=12, help="MNIST test images for smoothing (default 12)")
    p.add_argument("--samples", type=int, default=10_000, help="smoothing's N (default 10000)")
    p.add_argument("--vnncomp", default="acasxu", help="VNN-COMP benchmark of ../shared/vnncomp (default acasxu)")
    p.add_argument("--every", type=int, default=12, help="its every K-th instance (default 12)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each configuration (default 2)")
    p.add_argument("--noop-tasks", type=int, default=200, help="tasks of the overhead measurement (default 200)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "scale"), help="results folder")
    args = p.parse_args(argv)
    if not (SHARED / "data" / "mnist").is_dir() or not (SHARED / "vnncomp" / args.vnncomp).is_dir():
        print(f"error: needs {SHARED}/data/mnist and {SHARED}/vnncomp/{args.vnncomp}", file=sys.stderr)
        return 2
    start = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = measure_all(args, lenet_onnx(tmp), tmp)
    end = os.getloadavg()

    def best(measure: str, w: int) -> dict:
        return min((r for r in rows if r["measure"] == measure and r["workers"] == w), key=lambda r: r["seconds"])

    sm1, sm2, vn1, vn2, ov = best("smooth", 1), best("smooth", 2), best("vnncomp", 1), best("vnncomp", 2), \
        best("overhead", 1)
    smooth_task_s = 1 / sm1["net_per_s"]
    overhead_s = ov["seconds"] / ov["items"]
    summary = {
        "smooth": {"model": "LeNet conv20-conv50-fc500 (random weights)", "N": args.samples, "inputs": args.inputs,
                   "inputs_per_s_1_worker": sm1["per_s"], "inputs_per_s_2_workers": sm2["per_s"],
                   "speedup_2_vs_1": round(sm2["per_s"] / sm1["per_s"], 3), "target": 1.8,
                   "net_inputs_per_s_1_worker": sm1["net_per_s"], "net_inputs_per_s_2_workers": sm2["net_per_s"],
                   "net_speedup_2_vs_1": round(sm2["net_per_s"] / sm1["net_per_s"], 3),
                   "fixed_s": [sm1["fixed_s"], sm2["fixed_s"]],
                   "cpu_s_per_input_1_worker": round(sm1["worker_cpu_s"] / sm1["items"], 3),
                   "cpu_s_per_input_2_workers": round(sm2["worker_cpu_s"] / sm2["items"], 3),
                   "cores_used_1_worker": round(sm1["worker_cpu_s"] / sm1["seconds"], 3),
                   "cores_used_2_workers": round(sm2["worker_cpu_s"] / sm2["seconds"], 3)},
        "vnncomp": {"benchmark": args.vnncomp, "every": args.every, "instances": vn1["items"],
                    "instances_per_s_1_worker": vn1["per_s"], "instances_per_s_2_workers": vn2["per_s"],
                    "speedup_2_vs_1": round(vn2["per_s"] / vn1["per_s"], 3),
                    "net_speedup_2_vs_1": round(vn2["net_per_s"] / vn1["net_per_s"], 3),
                    "wrong": max(r.get("wrong", 0) for r in rows)},
        "overhead": {"seconds_per_task": round(overhead_s, 5), "typical_task_s": round(smooth_task_s, 4),
                     "fraction_of_typical_task": round(overhead_s / smooth_task_s, 5), "target": 0.05},
        "note": "best (shortest) of the interleaved repeats of each configuration; loadavg in machine.json",
    }
    print(f"{'measure':<10}{'workers':>8}{'items':>7}{'best s':>10}{'per s':>10}{'fixed s':>10}{'net per s':>10}")
    for r in (sm1, sm2, vn1, vn2, ov):
        print(f"{r['measure']:<10}{r['workers']:>8}{r['items']:>7}{r['seconds']:>10}{r['per_s']:>10}"
              f"{r.get('fixed_s', '-'):>10}{r.get('net_per_s', '-'):>10}")
    print(f"smoothing: 2 workers {summary['smooth']['speedup_2_vs_1']}x one, {summary['smooth']['net_speedup_2_vs_1']}x "
          f"net of the fixed cost (target 1.8x); vnncomp {summary['vnncomp']['speedup_2_vs_1']}x, "
          f"{summary['vnncomp']['net_speedup_2_vs_1']}x net; per-task overhead {overhead_s * 1e3:.1f} ms = "
          f"{summary['overhead']['fraction_of_typical_task']:.2%} of a smoothing task (target < 5%)")
    sm = summary["smooth"]
    print(f"smoothing workers' CPU: {sm['cpu_s_per_input_1_worker']} / {sm['cpu_s_per_input_2_workers']} CPU s per "
          f"input, {sm['cores_used_1_worker']} / {sm['cores_used_2_workers']} cores used (1 / 2 workers)")
    print(f"load average (1, 5, 15 min): start {start}, end {end}")
    out = Path(args.out)
    write_results_folder(out, summary, None, [command_line()],
                         machine_info(threads_per_worker=1, loadavg={"start": start, "end": end}))
    fields = ["measure", "workers", "repeat", "items", "seconds", "per_s", "fixed_s", "net_per_s", "worker_cpu_s",
              "loadavg_1min", "solved", "wrong"]
    with open(out / "rows.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}/summary.json, rows.csv, command.txt, machine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
