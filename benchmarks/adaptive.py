"""Sequential sampling (``Smooth.certify_adaptive``) against Cohen et al.'s fixed-N CERTIFY.

For each test input it runs CERTIFY with N samples once (its radius answers every target radius)
and, for every target radius R, ``certify_adaptive(radius=R, n_max=N)``, both with n0 selection
samples and the same per-input seed. It reports, per R, the certified accuracy at R (correct with
radius >= R) of both, the mean number of noise samples per input (n0 + estimation samples; the
fixed run always uses n0 + N), their ratio, the inputs where the two answers at R differ, and the
seconds per input (noisy on a shared machine; the sample counts are what is machine independent).

Each run's records go to ``--work`` as JSON lines, written as they finish, so an interrupted run
resumes (``--work`` keeps a config.json: a different configuration there is refused). The
summary goes to ``--results``: summary.json, rows.jsonl (one row per input and method),
command.txt and machine.json.

    python benchmarks/adaptive.py --model benchmarks/out/runs/gaussian-lenet-sigma0.25-8ep/model.pt \\
        --data mnist --data-dir ../shared/data --skip 100 --max 100 --radii 0.25 0.5 --n 100000
    python benchmarks/adaptive.py --quick ...       # N = 10000, 20 inputs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from certify.data import fit_input_shape, select  # noqa: E402
from certify.models import load_model  # noqa: E402
from certify.report.smooth_records import input_seed, make_record  # noqa: E402
from certify.errors import CertifyError  # noqa: E402
from certify.report.records import ResultWriter  # noqa: E402
from smoothing import Smooth  # noqa: E402


def run_method(name: str, work: Path, idx, X, y, certify_one) -> dict:
    """Records of one method keyed by input index (resuming from ``work/name.jsonl``)."""
    writer = ResultWriter(str(work / f"{name}.jsonl"), resume=True)
    try:
        for k, i in enumerate(idx):
            if i in writer.done:
                continue
            t0 = time.perf_counter()
            res = certify_one(X[k], input_seed(0, i))
            writer.write(make_record(i, int(y[k]), res, time.perf_counter() - t0))
            print(f"  {name} input {i}: radius {res.radius:.3f}, samples {res.samples}", flush=True)
        return dict(writer.done)
    finally:
        writer.close()


def certified_at(rec, r: float) -> bool:
    return rec.predict == rec.label and rec.predict != -1 and rec.radius >= r


def summarize(idx, fixed: dict, adaptive: dict, radii, n_fixed: int) -> tuple[list[dict], list[dict]]:
    rows, summary = [], []
    for i in idx:
        f = fixed[i]
        rows.append({"idx": i, "method": "fixed", "label": f.label, "predict": f.predict, "radius": f.radius,
                     "samples": n_fixed, "seconds": f.seconds})
    for r in radii:
        recs = adaptive[r]
        samples = [recs[i].evidence["samples"] for i in idx]
        for i in idx:
            a = recs[i]
            rows.append({"idx": i, "method": f"adaptive R={r}", "label": a.label, "predict": a.predict,
                         "radius": a.radius, "samples": a.evidence["samples"], "stop": a.evidence["stop"],
                         "seconds": a.seconds})
        acc_f = sum(certified_at(fixed[i], r) for i in idx) / len(idx)
        acc_a = sum(certified_at(recs[i], r) for i in idx) / len(idx)
        summary.append({
            "radius": r, "inputs": len(idx),
            "certified_acc_fixed": acc_f, "certified_acc_adaptive": acc_a,
            "mean_samples_fixed": float(n_fixed), "mean_samples_adaptive": sum(samples) / len(idx),
            "sample_ratio": n_fixed * len(idx) / sum(samples),
            "max_samples_adaptive": max(samples),
            "differ": [i for i in idx if certified_at(fixed[i], r) != certified_at(recs[i], r)],
            "stops": {s: sum(recs[i].evidence["stop"] == s for i in idx)
                      for s in sorted({recs[i].evidence["stop"] for i in idx})},
            "seconds_per_input_fixed": sum(fixed[i].seconds for i in idx) / len(idx),
            "seconds_per_input_adaptive": sum(recs[i].seconds for i in idx) / len(idx),
        })
    return rows, summary


def machine(threads: int) -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_at_start": list(os.getloadavg())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "benchmarks/out/runs/gaussian-lenet-sigma0.25-8ep/model.pt"))
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--skip", type=int, default=100, help="every SKIP-th test image (default 100)")
    p.add_argument("--max", dest="max_inputs", type=int, default=None, help="inputs (default 100; quick 20)")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--n", type=int, default=None, help="N, the fixed run's samples = the budget (default 100000; "
                                                       "quick 10000)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", default=None, help="records folder (default benchmarks/out/adaptive[-quick])")
    p.add_argument("--results", default=None, help="summary folder (default benchmarks/results/adaptive[-quick])")
    args = p.parse_args(argv)
    tag = "adaptive-quick" if args.quick else "adaptive"
    n = args.n or (10_000 if args.quick else 100_000)
    count = args.max_inputs or (20 if args.quick else 100)
    work = Path(args.work or REPO / "benchmarks" / "out" / tag)
    results = Path(args.results or REPO / "benchmarks" / "results" / tag)
    torch.set_num_threads(args.threads)

    model = os.path.abspath(args.model)
    config = {"model": os.path.relpath(model, REPO) if model.startswith(str(REPO) + os.sep) else model,
              "data": args.data, "skip": args.skip, "inputs": count, "sigma": args.sigma, "n": n, "n0": args.n0,
              "alpha": args.alpha, "batch": args.batch, "seed": 0}
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != config:
        raise CertifyError(f"{cfg_path} holds another configuration; use another --work folder")
    cfg_path.write_text(json.dumps(config, indent=1))
    mach = machine(args.threads)

    net = load_model(args.model)
    idx, X, y = select(args.data, "test", args.data_dir, start=0, skip=args.skip, count=count)
    X = fit_input_shape(X, net.input_shape, args.data, net.name)
    smooth = Smooth(net, net.output_shape[0], "gaussian", args.sigma, batch=args.batch)
    adaptive = {}
    for r in args.radii:
        adaptive[r] = run_method(f"adaptive-r{r:g}", work, idx, X, y, lambda x, s, r=r: smooth.certify_adaptive(
            x, radius=r, n0=args.n0, n_max=n, alpha=args.alpha, seed=s))
    fixed = run_method("fixed", work, idx, X, y, lambda x, s: smooth.certify(
        x, n0=args.n0, n=n, alpha=args.alpha, seed=s))
    rows, summary = summarize(idx, fixed, adaptive, args.radii, args.n0 + n)

    print(f"\nsequential vs fixed-N smoothing: {net.name}, {len(idx)} {args.data} test inputs, sigma {args.sigma}, "
          f"N {n}, n0 {args.n0}, alpha {args.alpha}")
    print(f"{'R':>5s} {'cert fixed':>10s} {'cert adapt':>10s} {'samples fixed':>13s} {'samples adapt':>13s} "
          f"{'ratio':>7s} {'differ':>6s} {'s/in fixed':>10s} {'s/in adapt':>10s}")
    for s in summary:
        print(f"{s['radius']:5.2f} {s['certified_acc_fixed']:10.3f} {s['certified_acc_adaptive']:10.3f} "
              f"{s['mean_samples_fixed']:13.0f} {s['mean_samples_adaptive']:13.0f} {s['sample_ratio']:7.1f} "
              f"{len(s['differ']):6d} {s['seconds_per_input_fixed']:10.2f} {s['seconds_per_input_adaptive']:10.2f}")
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps({"config": config, "results": summary}, indent=1))
    (results / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (results / "command.txt").write_text("OMP_WAIT_POLICY=PASSIVE python benchmarks/adaptive.py "
                                         + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])) + "\n")
    (results / "machine.json").write_text(json.dumps(mach, indent=1))
    print(f"wrote {results}/summary.json, rows.jsonl, command.txt, machine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
