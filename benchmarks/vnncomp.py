"""VNN-COMP benchmarks with ``bounds.bab``: ../shared/vnncomp (acasxu 186, mnistfc 90, test 5) or
the general-network suite ../shared/vnncomp_general (``--shared``; 11 families, gzipped files).

For each benchmark: correct sat, correct unsat, wrong, unknown/timeout, median time and score
(+10 correct, -150 wrong, a sat whose counterexample fails onnxruntime counts as wrong), beside
alpha-beta-CROWN's columns from ground_truth.csv (its verdicts on the same instances, scored the
same way, and its median time minus start-up overhead, GPU machine). Timeouts are the
competition's times ``--timeout-scale``; ``--every K`` / ``--limit N`` pick a subset (every K-th
instance of each benchmark), ``--unsolved-in DIR`` the instances an earlier run left undecided,
``--known-truth`` those whose truth is known, ``--unknown-truth`` the others; ``--timeout-cap S``
caps every instance's timeout at S seconds.

Per benchmark the summary also counts the truth of the rows run, our sat with an
onnxruntime-confirmed counterexample (the only sat that counts), and lists the rows to
investigate: our unsat where the ground truth says sat (in the general suite that truth is tool
consensus without a validated counterexample, so such a row is a finding, not yet a verdict).

Writes the results folder ``--out`` (``certify.report.results_folder``): ``rows.csv`` (one row
per instance, every benchmark; rows already there are resumed on rerun, ``--fresh`` starts over),
``summary.json`` (the table over every row of the folder), ``command.txt`` (the commands that
filled it) and ``machine.json``.

    python benchmarks/vnncomp.py --quick                 # test + every 12th acasxu/mnistfc, x0.1 timeouts
    python benchmarks/vnncomp.py --timeout-scale 1       # the full competition run (hours on 2 CPU cores)
    python benchmarks/vnncomp.py --shared ../shared/vnncomp_general --benchmarks lsnc --every 5 \
        --timeout-cap 60 --out benchmarks/results/vnncomp_general
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from certify.report.results_folder import (command_line, commands_with, machine_info, read_csv_rows,  # noqa: E402
                                           write_results_folder)
from certify.cluster import connect  # noqa: E402
from certify.vnncomp import read_ground_truth, run_benchmark, summarize, truth_for  # noqa: E402


def counts(rows: list[dict], gt_rows: list[dict], keys: set[tuple[str, str]]) -> dict:
    """Our verdicts (sat only with a confirmed counterexample), the truth and alpha-beta-CROWN's
    verdicts over the same rows, and the rows to investigate (our unsat on a truth-sat row)."""
    gt = [r for r in gt_rows if (r["onnx"], r["vnnlib"]) in keys]
    tally = lambda vs: {v: sum(1 for x in vs if x == v) for v in ("sat", "unsat")}  # noqa: E731
    ours = {"sat_confirmed": sum(1 for r in rows if r["verdict"] == "sat" and r["ce_valid"] == "yes"),
            "sat_unconfirmed": sum(1 for r in rows if r["verdict"] == "sat" and r["ce_valid"] != "yes"),
            "unsat": sum(1 for r in rows if r["verdict"] == "unsat")}
    ours["undecided"] = len(rows) - sum(ours.values())
    return {"ours": ours, "truth": {**tally([r["truth"] for r in gt]), "unknown": sum(1 for r in gt if r["truth"]
                                                                                        not in ("sat", "unsat"))},
            "abcrown": tally([r.get("abcrown_result") for r in gt]),
            "investigate": [f"{r['onnx']} {r['vnnlib']}" for r in rows if r["verdict"] == "unsat" and r["truth"] == "sat"]}


def abcrown_columns(gt_rows: list[dict], keys: set[tuple[str, str]]) -> dict:
    rows = [r for r in gt_rows if (r["onnx"], r["vnnlib"]) in keys]
    fake = []
    for r in rows:
        v = r.get("abcrown_result") or "unknown"
        v = v if v in ("sat", "unsat", "timeout", "unknown", "error") else "unknown"
        fake.append({"verdict": v, "truth": r["truth"], "ce_valid": "-",
                     "seconds": r.get("abcrown_time_minus_overhead_s") or r.get("abcrown_time_s") or 0})
    s = summarize(fake) if fake else None
    return s


def run_all(args, shared: Path, gt: dict, gt_path: Path, rows_path: Path, client) -> int:
    """Run the selected instances of every benchmark of ``--benchmarks`` into ``rows_path``."""
    for name in args.benchmarks.split(","):
        bdir = shared / name
        unsolved = None
        if args.unsolved_in:
            prev = Path(args.unsolved_in) / "rows.csv"
            if not prev.exists():
                print(f"error: --unsolved-in: {prev} does not exist", file=sys.stderr)
                return 2
            unsolved = {(r["onnx"], r["vnnlib"]) for r in read_csv_rows(prev)
                        if r["benchmark"] == name and r["verdict"] not in ("sat", "unsat")}

        def select(k, onnx, vnn):
            if unsolved is not None and (onnx, vnn) not in unsolved:
                return False
            if args.known_truth or args.unknown_truth:
                known = (truth_for(gt, name, onnx, vnn) or {}).get("truth") in ("sat", "unsat")
                if known != args.known_truth:
                    return False
            return (k % args.every == 0 and (args.limit is None or k // args.every < args.limit))

        print(f"== {name} (timeout x{args.timeout_scale}, every {args.every})", flush=True)
        run_benchmark(bdir, rows_path, ground_truth=gt_path, timeout_scale=args.timeout_scale, select=select,
                      log=lambda m: print(m, flush=True), client=client, threads=args.threads,
                      timeout_cap=args.timeout_cap)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "vnncomp"), help="VNN-COMP folder")
    ap.add_argument("--benchmarks", default="test,acasxu,mnistfc", help="comma-separated benchmark names")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout")
    ap.add_argument("--timeout-cap", type=float, default=None, metavar="S",
                    help="at most S seconds per instance (after --timeout-scale)")
    ap.add_argument("--every", type=int, default=1, help="run every K-th instance of each benchmark")
    ap.add_argument("--limit", type=int, default=None, help="at most N instances per benchmark")
    ap.add_argument("--quick", action="store_true", help="--timeout-scale 0.1 --every 12")
    ap.add_argument("--unsolved-in", default=None, metavar="DIR",
                    help="only the instances without a sat/unsat verdict in DIR/rows.csv (an earlier run, e.g. "
                         "at scaled timeouts)")
    truth = ap.add_mutually_exclusive_group()
    truth.add_argument("--known-truth", action="store_true", help="only the instances whose truth is known")
    truth.add_argument("--unknown-truth", action="store_true",
                       help="only the instances whose truth is unknown (no tool has decided them)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (default 2; verify itself runs torch on one and uses the other core "
                         "through its own MILP or search threads)")
    ap.add_argument("--cluster", default=None, metavar="ADDRESS",
                    help="run the instances on a Dask cluster: local:N or tcp://HOST:PORT (docs/cluster.md)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "vnncomp"), help="output folder")
    ap.add_argument("--fresh", action="store_true", help="start the output folder afresh (drop its rows and commands)")
    args = ap.parse_args(argv)
    if args.quick:
        args.timeout_scale, args.every = 0.1, 12
    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    gt_path = shared / "ground_truth.csv"
    gt = read_ground_truth(gt_path)
    gt_rows = list(gt.values())
    out = Path(args.out)
    rows_path = out / "rows.csv"
    if args.fresh:
        for f in (rows_path, out / "command.txt"):
            f.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with connect(args.cluster) as client:
        status = run_all(args, shared, gt, gt_path, rows_path, client)
    if status:
        return status
    rows = read_csv_rows(rows_path)
    table = {}
    for name in dict.fromkeys(r["benchmark"] for r in rows):
        mine = [r for r in rows if r["benchmark"] == name]
        keys = {(f"{name}/{r['onnx']}", f"{name}/{r['vnnlib']}") for r in mine}
        table[name] = {"ours": summarize(mine), "abcrown": abcrown_columns(gt_rows, keys),
                       "counts": counts(mine, gt_rows, keys)}
    hdr = (f"{'benchmark':<10} {'tool':<8} {'inst':>4} {'sat ok':>6} {'unsat ok':>8} {'wrong':>5} "
           f"{'unk/to':>6} {'median s':>8} {'score':>6}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for name, cols in table.items():
        for tool in ("ours", "abcrown"):
            s = cols[tool]
            if s is None:
                continue
            bv = s["by_verdict"]
            print(f"{name:<10} {tool:<8} {s['instances']:>4} {s['correct_sat']:>6} {s['correct_unsat']:>8} "
                  f"{s['wrong']:>5} {bv['unknown'] + bv['timeout'] + bv['error']:>6} {s['median_s']:>8} {s['score']:>6}")
    print(f"\n{'benchmark':<30} {'ours sat/unsat/undecided':>24} {'truth sat/unsat/unk':>20} "
          f"{'abcrown sat/unsat':>17}  investigate")
    for name, cols in table.items():
        c = cols["counts"]
        o, t, a = c["ours"], c["truth"], c["abcrown"]
        print(f"{name:<30} {o['sat_confirmed']:>9}/{o['unsat']}/{o['undecided'] + o['sat_unconfirmed']:<8} "
              f"{t['sat']:>11}/{t['unsat']}/{t['unknown']:<4} {a['sat']:>11}/{a['unsat']:<4}  "
              + (", ".join(c["investigate"]) or "-"))
    summary = {"table": table, "note": "every row of rows.csv, by benchmark; abcrown columns: its verdicts of the "
                                       "ground truth's year on the same instances, times minus start-up, GPU; "
                                       "counts.ours.sat_confirmed: sat with an onnxruntime-confirmed counterexample; "
                                       "counts.investigate: our unsat where the truth says sat"}
    write_results_folder(out, summary, None, commands_with(out, command_line()), machine_info(threads=args.threads))
    print(f"\nwrote {out}/summary.json, rows.csv, command.txt, machine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
