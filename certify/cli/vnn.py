"""``certify vnnlib`` (one VNN-COMP instance -> result file) and ``certify vnncomp`` (a benchmark
folder -> results.csv with a summary and the VNN-COMP score); the runner is ``certify.vnncomp``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from certify.errors import CertifyError
from certify.vnncomp import format_result, format_summary, run_benchmark, run_instance


def _write_new(path: Path, text: str, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CertifyError(f"{path} already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ certify vnnlib
class VerifyProgress:
    """``verify``'s ``progress`` callback and a bar polling its live stats: time elapsed of the
    timeout, domains bounded, and the worst open domain's lower bound (the best bound proved so far)."""

    def __init__(self, timeout: float, started: float):
        self.timeout, self.started, self.stats = timeout, started, None

    def __call__(self, stats: dict) -> None:
        self.stats = stats

    def refresh(self, bar) -> None:
        st = self.stats or {}
        bar.n = round(min(time.monotonic() - self.started, self.timeout), 1)
        low = st.get("worst_open_lower")
        bar.set_postfix_str(f"{st.get('method') or 'attack'}, {st.get('domains', 0)} domains"
                            + (f", bound {low:+.4g}" if low is not None else ""), refresh=True)


def _found_by(st: dict) -> str:
    """How a verdict was reached, for the closing line."""
    if st.get("method") is None:      # decided before any bounding: by the attack (or an empty property)
        how = st.get("found_by")
        return f"counterexample found by {'sampling' if how == 'sample' else 'the PGD attack'} before bounding" \
            if how else "decided before bounding"
    if st["method"] == "root":
        return f"proved by the root bound, {st['bound_calls']} bound calls"
    found = f", counterexample found by {st['found_by']}" if st.get("found_by") else ""
    return f"method {st['method']}, {st['domains']} domains, {st['bound_calls']} bound calls{found}"


def _cmd_vnnlib(args) -> int:
    from certify.cli.common import model_from
    from certify.report.progress import Poller, bar
    started = time.monotonic()
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise CertifyError(f"--out {out} is a directory; give the result file's name")
    if out is not None and out.exists() and not args.overwrite:
        raise CertifyError(f"{out} already exists (pass --overwrite to replace it)")
    net = model_from(args)
    if args.parse_only:
        from certify.spec import vnnlib
        prop = vnnlib.load(args.property, net.input_size, net.output_size)
        print(f"{args.model}: {net.input_size} inputs, {net.output_size} outputs; {args.property}: "
              f"{len(prop.regions)} input region(s)")
        return 0
    watch = VerifyProgress(args.timeout, started)
    with Poller(bar(total=args.timeout, desc="vnnlib", unit="s",
                    bar_format="{desc}: {n:.0f}/{total:.0f} s |{bar}| {postfix}"), watch.refresh):
        res, prop = run_instance(net, args.model, args.property, args.timeout, args.method, started, args.seed,
                                 progress=watch)
    text = format_result(res.status, res.counterexample)
    if out is not None:
        _write_new(out, text, overwrite=True)
    print(text.splitlines()[0])
    st = res.stats
    print(f"{_found_by(st)}, {st['time_total']:.2f} s", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ certify vnncomp
def _cmd_vnncomp(args) -> int:
    from certify.cli.common import check_cluster_args, cluster_client, resolve_device
    limit = args.limit
    device = str(resolve_device(args.device))

    def select(k, onnx, vnn):
        return k % args.every == 0 and (limit is None or k // args.every < limit)

    check_cluster_args(args)
    if not Path(args.dir).is_dir():
        raise CertifyError(f"benchmark folder {args.dir} does not exist")
    with cluster_client(args) as client:
        s = run_benchmark(Path(args.dir), Path(args.out), Path(args.instances) if args.instances else None,
                          Path(args.ground_truth) if args.ground_truth else None, args.timeout_scale, args.method,
                          args.overwrite, select, client=client, threads=args.threads or 1, device=device)
    print(format_summary(Path(args.dir).name, s))
    return 0


# ------------------------------------------------------------------------------ registration
def register(sub) -> None:
    from certify.cli.argtypes import positive_float, positive_int
    from certify.cli.common import add_cluster_args, add_device_arg, add_model_arg
    p = sub.add_parser("vnnlib", help="verify one VNN-LIB property (VNN-COMP result file)",
                       description="Decide a VNN-LIB property on an ONNX network by branch and bound with "
                                   "falsification: 'sat' (a counterexample exists, checked in float64), 'unsat' "
                                   "(proved), 'timeout' or 'unknown'. Writes the VNN-COMP result file.")
    add_model_arg(p, help="network: .onnx / .onnx.gz, or any model certify loads (a module:Class needs "
                          "--input-shape)")
    p.add_argument("property", metavar="PROP", help="property: .vnnlib or .vnnlib.gz (describes the violation)")
    p.add_argument("--timeout", type=positive_float, default=120.0, help="seconds, loading included (default 120)")
    p.add_argument("--out", default=None, help="result file to write (first line the verdict, then the "
                                               "counterexample after sat)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--method", choices=["auto", "input", "relu", "both"], default="auto",
                   help="branching: input splits (low-dim inputs), ReLU (activation) splits, both in turns, or auto "
                        "(default: chosen from the root bound)")
    p.add_argument("--seed", type=int, default=0, help="seed of the PGD falsifier (default 0)")
    p.add_argument("--parse-only", action="store_true", help="only check that the network loads and the property "
                                                             "parses for it (exit 0), no verification")
    add_device_arg(p)
    p.set_defaults(func=_cmd_vnnlib)

    q = sub.add_parser("vnncomp", help="run a VNN-COMP benchmark folder and score it",
                       description="Run every instance of a VNN-COMP benchmark folder (instances.csv: onnx,vnnlib,"
                                   "timeout), one CSV row per instance (verdict, seconds, domains), resuming rows "
                                   "already in --out, then print solved / by verdict / wrong vs the ground truth / "
                                   "total and median time / score (+10 correct, -150 wrong).")
    q.add_argument("dir", metavar="DIR", help="benchmark folder (holds the .onnx, .vnnlib and instances.csv)")
    q.add_argument("--instances", default=None, help="instances file (default DIR/instances.csv)")
    q.add_argument("--ground-truth", default=None, help="CSV with columns onnx, vnnlib, truth (paths relative to "
                                                        "DIR's parent or to DIR)")
    q.add_argument("--out", required=True, help="results CSV (appended to; rerun to resume)")
    q.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming")
    q.add_argument("--timeout-scale", type=positive_float, default=1.0, help="multiply every timeout (e.g. 0.1 for a "
                                                                    "quick run; default 1)")
    q.add_argument("--method", choices=["auto", "input", "relu", "both"], default="auto", help="branching (default auto)")
    q.add_argument("--every", type=positive_int, default=1, help="run every EVERY-th instance only (default 1)")
    q.add_argument("--limit", type=positive_int, default=None, help="run at most LIMIT instances")
    add_device_arg(q)
    add_cluster_args(q, task_timeout=False)
    q.set_defaults(func=_cmd_vnncomp)
