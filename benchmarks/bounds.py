"""Bound propagation vs auto_LiRPA 0.7.1 on the anchor networks of ../shared/anchors/bounds.

Replicates reference.json's runs exactly: L-inf ball of radius eps (0.01, 0.03) around the
first ``batch`` (1, 32) inputs of ``<net>_inputs.npz``, clipped to [0, 1] for the image nets
(mlp, cnn, resnet), unclipped for acas / acasxu_1_1; spec ``logits`` (bounds of every output,
gap_mean = mean(ub - lb)) or ``margin`` (C = e_y - e_j, y = the network's own clean
prediction; margin_lb_mean = mean lower bound; lower bounds only, as the reference). Methods
IBP, CROWN, alpha-CROWN (20 iterations, lr 0.5, as auto_LiRPA's defaults). Time = median wall
seconds of ``--repeats`` runs after a warm-up (a call under 20 ms is repeated within a run and
the time divided), with 2 threads and OMP_WAIT_POLICY=PASSIVE.
The reference times were taken on a loaded machine: compare ratios, and batch-1 margin times
against reference_quiet_batch1.json too. ``fwd`` is one forward pass of the same batch
(IBP's target: within 3x of it).

    python benchmarks/bounds.py --quick           # batch 1 and 32 at eps 0.01, margin spec, no resnet alpha
    python benchmarks/bounds.py                   # every configuration of reference.json
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bounds  # noqa: E402
from certify.report.results_folder import command_line, machine_info, write_results_folder  # noqa: E402
from certify.spec.output import robustness_matrix  # noqa: E402
from certify.spec.sets import ball  # noqa: E402

SHARED = Path(os.environ.get("CERTIFY_SHARED", ROOT.parent / "shared"))
NETS = ["mlp", "cnn", "resnet", "acas", "acasxu_1_1"]
METHODS = {"IBP": "ibp", "CROWN": "crown", "alpha-CROWN": "alpha"}


def _timed(fn, repeats: int, min_sample_s: float = 0.02):
    """Median wall / CPU seconds per call over ``repeats`` samples, after a warm-up. A call
    shorter than ``min_sample_s`` is repeated within each sample (and the time divided), so
    sub-millisecond calls (IBP, a forward pass) are not timed at the clock's noise level."""
    t = time.perf_counter()
    fn()                                       # warm-up
    inner = max(1, int(min_sample_s / max(time.perf_counter() - t, 1e-7)))
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(inner):
            out = fn()
        walls.append((time.perf_counter() - t) / inner)
        cpus.append((time.process_time() - c) / inner)
    return statistics.median(walls), statistics.median(cpus), out


def run_one(net, x, eps, spec, method, clip, repeats):
    s = ball(x, eps, "inf", (0.0, 1.0) if clip else None)
    C = robustness_matrix(net(x).argmax(1), net.output_size) if spec == "margin" else None
    opts = {} if method == "ibp" else {"upper": spec == "logits"}
    wall, cpu, b = _timed(lambda: bounds.compute_bounds(net, s, C, method=method, **opts), repeats)
    with torch.no_grad():
        fwd, _, _ = _timed(lambda: net(x), max(repeats, 5))
    row = {"time_median_s": wall, "cpu_median_s": cpu, "forward_s": fwd,
           "lb_mean": float(b.lower.mean())}
    if spec == "logits" or method == "ibp":
        row["gap_mean"] = float((b.upper - b.lower).mean())
    if spec == "margin":
        row["margin_lb_mean"] = float(b.lower.mean())
        row["verified_frac"] = float(b.verified().float().mean())
    return row


def _worst_vs_reference(rows: list[dict]) -> dict:
    """Per method and spec: the largest amount by which our bound is looser than the reference's
    (margin: ref - ours lower bound; logits: ours - ref gap; <= 0 means never looser)."""
    out: dict = {}
    for r in rows:
        looser = (r["ref_value"] - r["value"]) if r["value_key"] == "margin_lb_mean" else (r["value"] - r["ref_value"])
        key = f"{r['method']} {r['spec']}"
        out[key] = max(out.get(key, -float("inf")), looser)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="eps 0.01, margin spec, batch 1 and 32, no resnet alpha-CROWN")
    p.add_argument("--nets", nargs="+", default=NETS, choices=NETS, help="networks (default: all five)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median; default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bounds"), help="results folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = SHARED / "anchors" / "bounds"
    if not (d / "reference.json").exists():
        print(f"anchors not found at {d} (set CERTIFY_SHARED)", file=sys.stderr)
        return 2
    from certify.frontends.onnx import load
    ref = json.loads((d / "reference.json").read_text())["results"]
    quiet = json.loads((d / "reference_quiet_batch1.json").read_text())["results"]
    refkey = {(r["net"], r["eps"], r["batch"], r["spec"], r["method"]): r for r in ref}
    quietkey = {(r["net"], r["method"]): r for r in quiet}
    rows = []
    hdr = (f"{'net':10s} {'eps':>5s} {'B':>3s} {'spec':6s} {'method':11s} {'ours s':>8s} {'ref s':>8s} "
           f"{'quiet s':>8s} {'ratio':>6s} {'fwd x':>6s} {'ours bound':>12s} {'ref bound':>12s} {'diff':>9s}")
    print(hdr)
    print("-" * len(hdr))
    for name in args.nets:
        net = load(str(d / f"{name}.onnx"))
        X = torch.tensor(np.load(d / f"{name}_inputs.npz")["x"])
        clip = not name.startswith("acas")
        for eps in ([0.01] if args.quick else [0.01, 0.03]):
            for B in args.batches:
                x = X[:B].reshape((B,) + net.input_shape)
                for spec in (["margin"] if args.quick else ["logits", "margin"]):
                    for mname in args.methods:
                        r = refkey.get((name, eps, B, spec, mname))
                        if r is None:
                            continue       # the reference did not run it (e.g. resnet alpha at batch 32)
                        if args.quick and name == "resnet" and mname == "alpha-CROWN":
                            continue
                        row = run_one(net, x, eps, spec, METHODS[mname], clip, args.repeats)
                        key = "margin_lb_mean" if spec == "margin" else "gap_mean"
                        q = quietkey.get((name, mname)) if (B == 1 and spec == "margin" and eps == 0.01) else None
                        row.update(net=name, eps=eps, batch=B, spec=spec, method=mname, ref_time_s=r["time_median_s"],
                                   ref_cpu_s=r["cpu_median_s"], ref_quiet_time_s=q["time_median_s"] if q else None,
                                   ref_value=r[key], value=row.get(key), value_key=key)
                        rows.append(row)
                        ratio = row["time_median_s"] / r["time_median_s"]
                        print(f"{name:10s} {eps:5.2f} {B:3d} {spec:6s} {mname:11s} {row['time_median_s']:8.4f} "
                              f"{r['time_median_s']:8.4f} {(q['time_median_s'] if q else float('nan')):8.4f} "
                              f"{ratio:6.2f} {row['time_median_s'] / row['forward_s']:6.1f} {row[key]:12.5f} "
                              f"{r[key]:12.5f} {row[key] - r[key]:+9.2e}", flush=True)
    # Batch scaling: time(B=32) / time(B=1), ours and the reference's.
    print("\nbatch scaling, time(32) / time(1) (linear = 32 or less):")
    scaling = []
    for name in args.nets:
        for mname in args.methods:
            for spec in ("margin", "logits"):
                t = {b: r for b in (1, 32) for r in rows
                     if (r["net"], r["method"], r["spec"], r["eps"], r["batch"]) == (name, mname, spec, 0.01, b)}
                if len(t) == 2:
                    ours, ref = t[32]['time_median_s'] / t[1]['time_median_s'], t[32]['ref_time_s'] / t[1]['ref_time_s']
                    scaling.append({"net": name, "method": mname, "spec": spec, "ours": ours, "ref": ref})
                    print(f"  {name:10s} {mname:11s} {spec:6s} ours {ours:6.1f}   ref {ref:6.1f}")
    summary = {"quick": args.quick, "repeats": args.repeats, "batch_scaling": scaling,
               "worst_vs_reference": _worst_vs_reference(rows)}
    write_results_folder(Path(args.out), summary, rows, [command_line()], machine_info(threads=args.threads))
    print(f"\nwrote {args.out}/summary.json, rows.jsonl, command.txt, machine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
