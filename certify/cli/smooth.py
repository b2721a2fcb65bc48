"""``certify smooth`` (randomized-smoothing certification of a data set, one record per input) and
``certify curve`` (certified-accuracy tables, ACR, CSV and PNG from result files).

Threads: the CLI keeps ``OMP_WAIT_POLICY=PASSIVE`` (set in ``certify.cli.main``): with the
default ACTIVE policy, idle OpenMP workers spin and a loaded 2-core machine collapses; passive
waiting costs nothing measurable on a quiet one. ``--threads`` sets torch's intra-op threads.
"""
from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

from certify.errors import CertifyError
from certify.report.smooth_records import input_seed, make_record

SMOOTH_HELP = """\
Certify every selected input with randomized smoothing (Cohen, Rosenfeld & Kolter 2019):
n0 noise samples select the top class, n fresh samples lower-bound its probability pA with a
one-sided Clopper-Pearson bound at level 1 - alpha (n is --samples, the number of inputs
--count, or --max as Cohen et al.'s script calls it); the smoothed classifier abstains when that
bound is below 1/2, else the certified radius is the noise family's formula (Gaussian: L2 radius
sigma * Phi^-1(pA); laplace/uniform: L1). Each answer is wrong with probability at most alpha.

Writes one JSON-lines record per input (engine 'smoothing', method = the noise, radius, verdict
certified / abstain / misclassified, evidence: pa_lower, counts, sigma, n, n0, alpha). An
interrupted run resumes with --resume (inputs already in --out are skipped; each input's noise
is seeded by --seed and its index, so resumed answers equal uninterrupted ones).

example: certify smooth model.onnx --data mnist --sigma 0.25 --samples 100000 --skip 20 --count 500 --out r.jsonl
"""

CURVE_HELP = """\
Certified accuracy vs radius of one or more result files (our JSON lines, or Cohen et al.'s
tab-separated 'idx label predict radius correct time'): a table (best value per radius marked),
the average certified radius (ACR), a CSV and a PNG plot with one line per file.
An input counts at radius r when it is correctly classified with certified radius >= r.
"""


def register(sub) -> None:
    from certify.cli.argtypes import nonneg_float, nonneg_int, positive_float, positive_int
    from certify.cli.common import add_cluster_args, add_data_args, add_model_arg

    p = sub.add_parser("smooth", help="randomized-smoothing certificates (Cohen et al.) for a data set",
                       description=SMOOTH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    add_data_args(p, default_n=500, dest="max_inputs",
                  renamed_hint="use --samples for the Monte-Carlo sample count n, --count for the number of inputs")
    s = p.add_argument_group("smoothing")
    s.add_argument("--noise", default="gaussian", choices=["gaussian", "laplace", "uniform"],
                   help="noise family: gaussian (L2 radius), laplace or uniform (L1 radius) (default: gaussian)")
    s.add_argument("--sigma", type=positive_float, default=0.25,
                   help="noise scale: Gaussian std, Laplace scale b, uniform half-width (default: 0.25)")
    s.add_argument("--samples", dest="n_samples", type=positive_int, default=100_000, metavar="N",
                   help="Monte-Carlo samples n for the estimate of pA (with --adaptive: the most) (default: 100000)")
    s.add_argument("--n0", type=positive_int, default=100, help="samples to select the top class (default: 100)")
    s.add_argument("--alpha", type=float, default=0.001,
                   help="failure probability of each certificate (default: 0.001)")
    s.add_argument("--batch", type=positive_int, default=1000, help="noise samples per forward pass (default: 1000)")
    s.add_argument("--seed", type=int, default=0, help="random seed; input i uses seed*1000003+i (default: 0)")
    s.add_argument("--adaptive", action="store_true",
                   help="sequential sampling: draw the estimation samples in growing rounds (100, 200, 400, ... up to "
                        "--n, the budget) and stop once the answer is settled; same 1 - alpha guarantee (alpha "
                        "split over the rounds); each record's evidence says how many samples it used")
    s.add_argument("--radius", type=float, default=None,
                   help="with --adaptive: stop as soon as the input is certified at this radius or shown not to be "
                        "(default: stop when the radius cannot grow by more than --tol)")
    s.add_argument("--tol", type=float, default=None,
                   help="with --adaptive and no --radius: radius tolerance of the stopping rule (default: sigma/10)")
    s.add_argument("--pushforward", default="auto", choices=["auto", "on", "off"],
                   help="sample Gaussian noise after a first Linear layer (exact in distribution, faster for "
                        "MLPs): auto = when it applies (default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="JSON-lines result file, one record per input (default: print only)")
    o.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the records in --out and skip their inputs")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    o.add_argument("--format", default="jsonl", choices=["jsonl", "cohen"],
                   help="cohen: also write Cohen et al.'s tab-separated file (idx label predict radius correct "
                        "time) next to --out, with extension .tsv (default: jsonl only)")
    add_cluster_args(p)
    p.set_defaults(func=run_smooth)

    c = sub.add_parser("curve", help="certified-accuracy table, ACR, CSV and PNG from result files",
                       description=CURVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("files", metavar="FILE", nargs="+", help="result files (JSON lines or Cohen's format)")
    c.add_argument("--radii", type=nonneg_float, nargs="+", default=None,
                   help="radii for the table (default: 0 to the largest radius in round steps)")
    c.add_argument("--step", type=positive_float, default=None, help="radius step of the default radii")
    c.add_argument("--format", default="text", choices=["text", "markdown", "latex", "all"],
                   help="table format (default: text)")
    c.add_argument("--out", default=None, help="plot to write: .png, .pdf, .svg, ... (default: none)")
    c.add_argument("--csv", default=None, help="CSV to write (default: the --out path with .csv, if --out)")
    c.add_argument("--max-radius", type=positive_float, default=None, help="x-axis limit of the plot")
    c.add_argument("--title", default=None, help="plot title")
    c.add_argument("--label", action="append", default=None, metavar="LABEL",
                   help="label of a file's row and line, once per FILE in order (default: from each file's "
                        "provenance: model, method, eps or sigma; else the file name)")
    c.add_argument("--allow-mixed-norms", action="store_true",
                   help="put radii of different norms (e.g. L2 smoothing and L-inf bounds) on one axis")
    c.add_argument("--overwrite", action="store_true", help="replace existing PNG/CSV files")
    c.set_defaults(func=run_curve)


def _check_free(path: str, overwrite: bool, what: str) -> None:
    if os.path.exists(path) and not overwrite:
        raise CertifyError(f"{what} {path} exists; pass --overwrite to replace it")


def setup(args) -> SimpleNamespace:
    """The model, the selected inputs and the ``Smooth`` of a command line: what ``smooth_chunk``
    needs, built alike by a local run and by every worker."""
    from certify.cli.common import check_input_shape, check_labels, load_data, model_from
    from smoothing import Smooth

    if not 0 < args.alpha < 0.5:
        raise CertifyError(f"--alpha must be in (0, 0.5), got {args.alpha}")
    if not args.adaptive and (args.radius is not None or args.tol is not None):
        raise CertifyError("--radius and --tol set the stopping rule of --adaptive; add --adaptive")
    for flag, v in (("--radius", args.radius), ("--tol", args.tol)):
        if v is not None and not 0 <= v < float("inf"):
            raise CertifyError(f"{flag} must be a number >= 0, got {v}")
    net = model_from(args)
    if len(net.output_shape) != 1:
        raise CertifyError(f"model {net.name} has output shape {net.output_shape}; smoothing needs class logits (K,)")
    data_args = argparse.Namespace(data=args.data, data_dir=args.data_dir, split=args.split, n=args.max_inputs,
                                   skip=args.skip, start=args.start)
    idx, X, y = load_data(data_args)
    X = check_input_shape(net, X, args.data).to(net.dtype)
    check_labels(net, y, args.data)
    push = {"auto": "auto", "on": True, "off": False}[args.pushforward]
    smooth = Smooth(net, net.output_shape[0], noise=args.noise, sigma=args.sigma, seed=args.seed,
                    batch=args.batch, pushforward=push)
    return SimpleNamespace(args=args, idx=idx, X=X, y=y, smooth=smooth)


def smooth_chunk(ctx: SimpleNamespace, ks: list[int]) -> list:
    """The records of the inputs ``ks`` (positions in ``ctx.idx``), each seeded by its index."""
    args, records = ctx.args, []
    for k in ks:
        t0 = time.perf_counter()
        seed = input_seed(args.seed, ctx.idx[k])
        if args.adaptive:
            res = ctx.smooth.certify_adaptive(ctx.X[k], radius=args.radius, n0=args.n0, n_max=args.n_samples,
                                              alpha=args.alpha, tol=args.tol, seed=seed)
        else:
            res = ctx.smooth.certify(ctx.X[k], n0=args.n0, n=args.n_samples, alpha=args.alpha, seed=seed)
        records.append(make_record(ctx.idx[k], int(ctx.y[k]), res, time.perf_counter() - t0))
    return records


def run_smooth(args) -> int:
    from certify.cli.common import check_cluster_args, cluster_client, failed_records, open_results, run_chunks
    from certify.report.curve import default_radii, format_table, from_records, write_cohen

    check_cluster_args(args)
    if args.format == "cohen" and not args.out:
        raise CertifyError("--format cohen writes next to --out: give --out FILE.jsonl")
    cohen = os.path.splitext(args.out)[0] + ".tsv" if args.format == "cohen" else None
    if cohen is not None and os.path.abspath(cohen) == os.path.abspath(args.out):
        raise CertifyError(f"--format cohen writes {cohen}, which is --out itself: give --out FILE.jsonl")
    ctx = setup(args)
    idx, smooth = ctx.idx, ctx.smooth
    if cohen is not None and not args.resume:
        _check_free(cohen, args.overwrite, "Cohen-format file")

    def show(rec) -> None:
        if cohen:
            write_cohen(cohen, [rec], append=True)
        if writer is None:
            print(f"{rec.idx}\tlabel {rec.label}\tpredict {rec.predict}\tradius {rec.radius:.3f}\t"
                  f"pA>={rec.evidence.get('pa_lower', 0.0):.4f}\t{rec.seconds:.2f}s")

    def failed(ks, message):
        return failed_records(idx, ctx.y, ks, message, "smoothing", args.noise, smooth.norm, None, True)

    with cluster_client(args) as client:
        writer = open_results(args, "smoothing", args.noise, smooth.norm, sigma=args.sigma, n0=args.n0,
                              n=args.n_samples, alpha=args.alpha, seed=args.seed)
        records = list(writer.done.values()) if writer else []
        todo = [k for k, i in enumerate(idx) if writer is None or i not in writer.done]
        try:
            if cohen is not None:
                write_cohen(cohen, sorted(writer.done.values(), key=lambda r: r.idx))
            if writer is not None and len(todo) < len(idx):
                print(f"resuming {args.out}: {len(idx) - len(todo)} of {len(idx)} inputs already done")
            records += run_chunks(args, client, ctx, setup, smooth_chunk, [[k] for k in todo], writer, show, failed,
                                  "smooth")
        finally:
            if writer is not None:
                writer.close()
    sel = set(idx)
    res = from_records([r for r in records if r.idx in sel], args.out or "smooth")
    print(f"\n{args.noise} sigma={args.sigma} n={args.n_samples} alpha={args.alpha}: {len(res)} inputs"
          + (f", written to {args.out}" + (f" and {cohen}" if cohen else "") if args.out else ""))
    print(format_table([res], default_radii([res])))
    return 0


def _labels(args, results) -> None:
    """Each file's label: --label, else its provenance label; repeated labels get their file name."""
    if args.label is not None:
        if len(args.label) != len(args.files):
            raise CertifyError(f"--label given {len(args.label)} times for {len(args.files)} files: give one per FILE")
        for r, lab in zip(results, args.label):
            r.name = lab
        return
    names = [r.name for r in results]
    for r, f in zip(results, args.files):
        if names.count(r.name) > 1:
            r.name = f"{r.name} ({os.path.relpath(f)})" if r.provenance else os.path.relpath(f)


def _check_norms(args, results) -> None:
    from certify.report.curve import NORM_NAMES
    if args.allow_mixed_norms:
        return
    by_norm: dict[str, str] = {}
    for r, f in zip(results, args.files):
        for n in sorted(r.norms):
            by_norm.setdefault(n, f)
    if len(by_norm) > 1:
        parts = ", ".join(f"{NORM_NAMES.get(n, 'L' + n)} in {f}" for n, f in sorted(by_norm.items()))
        raise CertifyError(f"radii of different norms ({parts}) on one axis; pass --allow-mixed-norms to plot "
                           "them together anyway")


def run_curve(args) -> int:
    from certify.report.curve import check_plot_path, default_radii, format_table, load_results, plot, write_csv

    csv_path = args.csv or (os.path.splitext(args.out)[0] + ".csv" if args.out else None)
    if args.out:
        check_plot_path(args.out)
    for path, what in ((args.out, "plot"), (csv_path, "CSV file")):
        if path:
            if os.path.isdir(path):
                raise CertifyError(f"{what} {path} is a directory")
            _check_free(path, args.overwrite, what)
    if csv_path and args.out and os.path.abspath(csv_path) == os.path.abspath(args.out):
        raise CertifyError(f"--csv and --out are the same file {csv_path}")
    results = [load_results(f) for f in args.files]
    _labels(args, results)
    _check_norms(args, results)
    radii = args.radii if args.radii else default_radii(results, args.step)
    fmts = ["text", "markdown", "latex"] if args.format == "all" else [args.format]
    for f in fmts:
        print(format_table(results, radii, f))
        print()
    if csv_path:
        write_csv(csv_path, results, radii)
        print(f"wrote {csv_path}")
    if args.out:
        plot(args.out, results, args.max_radius, args.title)
        print(f"wrote {args.out}")
    return 0


def demo_section(net, X, y) -> list[str]:
    """Smoothing certificates (Gaussian, sigma 0.25, n0=100, n=2000, alpha=0.001) of up to 10 inputs."""
    from smoothing import Smooth

    X, y = X[:10], y[:10]
    smooth = Smooth(net, net.output_shape[0], noise="gaussian", sigma=0.25, seed=0, batch=2100)
    lines = ["randomized smoothing (Cohen et al.): Gaussian sigma=0.25, n0=100, n=2000, alpha=0.001, "
             "L2 radius with probability >= 0.999"]
    lines.append("  idx  label  predict  pA_lower  L2 radius  Linf radius (=L2/sqrt(d))")
    cert = 0
    for i in range(len(X)):
        r = smooth.certify(X[i].reshape(net.input_shape), n0=100, n=2000, alpha=0.001, seed=input_seed(0, i))
        ok = r.prediction == int(y[i])
        cert += ok and r.radius > 0
        pred = "abstain" if r.abstained else str(r.prediction)
        lines.append(f"  {i:3d}  {int(y[i]):5d}  {pred:>7s}  {r.pa_lower:8.4f}  {r.radius:9.3f}  {r.radius_in('inf'):11.4f}")
    lines.append(f"  certified (correct, radius > 0): {cert}/{len(X)}")
    return lines
