"""``certify lp|sdp|milp MODEL --data DATASET --count 50 --eps 0.02``: convex certificates per input.

Same output and result file as ``certify bounds``: one line per input (label, prediction,
verdict, smallest margin lower bound) and a summary line; with ``--out`` one JSON-lines
``Record`` per input (engine "convex", method "lp" / "lp-all" / "sdp" / "milp"; evidence: the
margin lower bounds, solver and per-row statuses, a checked counterexample for MILP),
resumable with ``--resume``. ``--radius`` finds the certified radius by bisection.
``demo_section`` is the ``certify demo`` part.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from certify.cli.argtypes import nonneg_float, positive_float, positive_int
from certify.cli.common import (add_cluster_args, add_data_args, add_domain_args, add_model_arg, add_output_args,
                                add_radius_args, check_cluster_args, check_input_shape, check_labels, cluster_client,
                                domain_from, failed_records, load_data, model_from, open_results, run_chunks,
                                summary_lines)
from certify.errors import CertifyError
from certify.report.records import Record
from certify.spec.output import robustness_matrix

HELP = {
    "lp": ("certify by the triangle LP relaxation (HiGHS; L2 balls as a cone program)",
           "Lower-bound every robustness margin by the LP (triangle) relaxation of each unstable ReLU, with "
           "pre-activation bounds from CROWN (or alpha-CROWN); the bound is rebuilt from the LP dual, so solver "
           "tolerances cannot make it unsound. Sound, incomplete; tighter than CROWN. L2 balls (--norm 2) become a "
           "second-order cone program."),
    "sdp": ("certify by the SDP relaxation of Raghunathan et al. 2018",
            "Lower-bound every margin by the semidefinite relaxation of Raghunathan et al. 2018 on ReLU MLPs; the "
            "PSD matrix has N + 1 = inputs + hidden units + 1 rows. The bound comes from a dual point with a "
            "minimum-eigenvalue correction, so it is valid even when the solver stops early, and it is never "
            "below the triangle LP's. Solvers (--solver): SCS up to 400 rows (each iteration eigendecomposes the "
            "whole matrix: a 600-row problem takes minutes per margin), Clarabel (interior point) for small "
            "problems only (its memory grows fast: 2.4 GB at 113 rows), first-order (matrix-free Lanczos + Adam) for any "
            "size, e.g. 784-input MLPs; auto (default) takes SCS up to 400 rows and first-order above."),
    "milp": ("exact verification by mixed-integer programming (HiGHS)",
             "Decide robustness exactly with the big-M MILP encoding of Tjeng et al. 2019 (big-M from CROWN or "
             "alpha-CROWN bounds) on L-inf balls. Verdicts: certified, falsified (a counterexample re-checked in "
             "float64), or unknown at the time limit."),
}
NORM_HELP = {
    "lp": "ball norm: inf or 2 (default: inf); 2 makes the LP a second-order cone program solved by cvxpy "
          "(Clarabel, or --solver scs)",
    "sdp": "ball norm: inf or 2 (default: inf); an L2 ball adds the constraint ||x - x0||^2 <= eps^2",
    "milp": "ball norm (default: inf); MILP takes L-inf balls only (an L2 ball is a second-order-cone "
            "constraint, which HiGHS's MILP does not take: use lp --norm 2 or bounds --norm 2)",
}
TIME_HELP = {
    "lp": "HiGHS time limit per margin row in seconds (default: none)",
    "sdp": "solver time limit per margin row in seconds (default: none); the bound stays valid when it stops",
    "milp": "time limit per margin row in seconds (default: 60); a row stopped there is unknown",
}


def register(sub) -> None:
    for name, (short, long) in HELP.items():
        p = sub.add_parser(name, help=short, description=long)
        add_model_arg(p)
        add_data_args(p, default_n=50)
        g = p.add_argument_group("certificate")
        g.add_argument("--eps", type=nonneg_float, default=0.02, help="perturbation radius to certify (default: 0.02)")
        g.add_argument("--norm", default="inf", choices=["inf", "2"] if name != "milp" else ["inf", "2", "1"],
                       help=NORM_HELP[name])
        add_domain_args(g)
        add_radius_args(g, 1e-3, None, "a ball containing the whole domain (its width for inf, times "
                                       "sqrt(input size) for 2); the search starts at 0.5 and doubles its upper end "
                                       "while the input stays certified")
        g.add_argument("--bounds-method", default="crown", choices=["crown", "alpha"],
                       help="pre-activation bounds from CROWN (default) or alpha-CROWN")
        g.add_argument("--time-limit", type=positive_float, default=None, help=TIME_HELP[name])
        if name == "lp":
            g.add_argument("--refine", choices=["all"], default=None,
                           help="'all': tighten every layer's pre-activation bounds by LP first (LP-ALL, slower)")
            g.add_argument("--solver", default="highs", choices=["highs", "scipy", "clarabel", "scs"],
                           help="highspy (default, warm-started) or scipy.optimize.linprog; for --norm 2 the "
                                "cone solver: clarabel (default) or scs")
        elif name == "sdp":
            from certify.convex.sdp import SOLVERS
            g.add_argument("--solver", default="auto", choices=SOLVERS,
                           help="auto (default: SCS up to a 400-row PSD matrix, first-order above), SCS, Clarabel "
                                "(small problems) or first-order (any size; --iters, --time-limit per row)")
            g.add_argument("--max-iters", type=positive_int, default=None, help="SCS/Clarabel iteration cap (bound stays valid)")
            g.add_argument("--refine", choices=["all"], default=None,
                           help="'all': tighten every layer's pre-activation bounds by LP first (LP-ALL)")
            g.add_argument("--iters", type=positive_int, default=300,
                           help="first-order solver: Adam steps per margin row (default: 300)")
        else:
            g.add_argument("--mode", default="decision", choices=["decision", "full"],
                           help="decision: stop at the first proof or counterexample (default); "
                                "full: exact minimum of every margin")
        add_output_args(p)
        add_cluster_args(p)
        p.add_argument("--quiet", action="store_true", help="print only the summary, not one line per input")
        p.set_defaults(func=run, convex_method=name)


def _method_kwargs(method: str, args) -> dict:
    kw = dict(bounds_method=args.bounds_method, domain=domain_from(args))
    if method == "milp" and args.norm != "inf":
        from certify.convex.milp import NOT_POLYHEDRAL
        raise CertifyError(f"milp takes L-inf balls only, not --norm {args.norm}: {NOT_POLYHEDRAL[args.norm]}")
    if method == "lp":
        kw.update(norm=args.norm, refine=args.refine, solver=args.solver, time_limit=args.time_limit)
    elif method == "sdp":
        kw.update(norm=args.norm, solver=args.solver, max_iters=args.max_iters, time_limit=args.time_limit,
                  iters=args.iters, refine=args.refine)
    else:
        kw.update(mode=args.mode, time_limit=args.time_limit or 60.0)
    return kw


def _check(args) -> None:
    if not args.eps >= 0:
        raise CertifyError(f"--eps must be >= 0, got {args.eps}")
    domain_from(args)   # validates --domain
    if args.time_limit is not None and args.time_limit <= 0:
        raise CertifyError(f"--time-limit must be > 0, got {args.time_limit}")


def certify_one(method: str, net, x: torch.Tensor, label: int, eps: float, radius: bool = False,
                tol: float = 1e-3, max_radius: float | None = None, **kw) -> tuple[str, float | None, dict]:
    """(verdict, radius or None, evidence) of one correctly classified input ``x`` (1, *shape);
    ``max_radius``: the largest radius searched (default: the domain's extent)."""
    from certify import convex
    fn = {"lp": convex.lp, "sdp": convex.sdp, "milp": convex.milp}[method]
    K = int(torch.tensor(net.output_shape).prod())
    lab = torch.tensor([int(label)])
    if radius:
        hi = 0.5 if max_radius is None else min(0.5, max_radius)
        r = float(convex.certified_radius(fn, net, x, lab, hi=hi, tol=tol, num_classes=K, limit=max_radius,
                                          **kw)[0])
        if r > 0:
            res = fn(net, x, eps=r, C=robustness_matrix(lab, K), **kw)
            return "certified", r, res.evidence(0) | {"eps_checked": r}
        return "not_certified", 0.0, {}
    res = fn(net, x, eps=eps, C=robustness_matrix(lab, K), **kw)
    return res.verdict[0], None, res.evidence(0)


def setup(args) -> SimpleNamespace:
    """The model, the selected inputs and the solver options of a command line: what
    ``convex_chunk`` needs, built alike by a local run and by every worker."""
    _check(args)
    method = args.convex_method
    net = model_from(args)
    if len(net.output_shape) != 1 or int(net.output_shape[0]) < 2:
        raise CertifyError(f"model {net.name} has output shape {net.output_shape}; certify {method} needs class "
                           "logits (K,) with K >= 2")
    idx, X, y = load_data(args)
    X = check_input_shape(net, X, args.data).to(net.dtype)
    check_labels(net, y, args.data)
    kw = _method_kwargs(method, args)
    if method == "sdp":
        kw["solver"] = _announce_sdp_solver(net, args.solver)
        kw["progress"] = RowProgress()
    name = "lp-all" if method == "lp" and args.refine == "all" else method
    return SimpleNamespace(args=args, net=net, idx=idx, X=X, y=y, kw=kw, norm=kw.get("norm", "inf"), method=name)


def convex_chunk(ctx: SimpleNamespace, ks: list[int]) -> list[Record]:
    """The records of the inputs ``ks`` (positions in ``ctx.idx``), one after the other."""
    args, net = ctx.args, ctx.net
    records = []
    for k in ks:
        x, lab = ctx.X[k], int(ctx.y[k])
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = int(net(x[None]).argmax(1))
        if pred != lab:
            verdict, rad, ev = "misclassified", (0.0 if args.radius else None), {}
        else:
            verdict, rad, ev = certify_one(args.convex_method, net, x[None], lab, args.eps, args.radius, args.tol,
                                           args.max_radius, **ctx.kw)
        if ev.get("lower"):
            low = [float(v) for v in ev["lower"]]
            ev = {"margin_lower": low, "min_margin_lower": min(low)} | ev
        if verdict != "misclassified":
            ev["domain"] = list(ctx.kw["domain"]) if ctx.kw["domain"] else None
        records.append(Record(idx=int(ctx.idx[k]), label=lab, predict=pred, engine="convex", method=ctx.method,
                              verdict=verdict, norm=ctx.norm, eps=None if args.radius else float(args.eps),
                              radius=rad, seconds=time.perf_counter() - t0, evidence=ev))
    return records


def run(args) -> int:
    check_cluster_args(args)
    ctx = setup(args)
    eps = None if args.radius else float(args.eps)

    def show(rec) -> None:
        if args.quiet:
            return
        ev = rec.evidence
        extra = f" radius {rec.radius:.5f}" if args.radius else ""
        m = f" min margin lb {ev['min_margin_lower']:+.4f}" if "min_margin_lower" in ev else ""
        if rec.verdict == "falsified":
            m = f" counterexample margin {min(float(v) for v in ev['upper']):+.6f}"
        print(f"input {rec.idx}: label {rec.label} predict {rec.predict} {rec.verdict}{extra}{m}", flush=True)

    def failed(ks, message):
        return failed_records(ctx.idx, ctx.y, ks, message, "convex", ctx.method, ctx.norm, eps, args.radius)

    with cluster_client(args) as client:
        writer = open_results(args, "convex", ctx.method, ctx.norm, eps=eps)
        records: list[Record] = [writer.done[i] for i in ctx.idx if writer is not None and i in writer.done]
        todo = [k for k, i in enumerate(ctx.idx) if writer is None or i not in writer.done]
        t_all = time.perf_counter()
        try:
            records += run_chunks(args, client, ctx, setup, convex_chunk, [[k] for k in todo], writer, show, failed,
                                  args.convex_method)
        finally:
            if writer is not None:
                writer.close()
    elapsed = time.perf_counter() - t_all
    what = f"{ctx.norm}-radius search" if args.radius else f"eps {args.eps:g} ({ctx.norm})"
    for line in summary_lines(records, ctx.method, what, elapsed, len(todo), args.radius):
        print(line)
    if writer is not None:
        print(f"records written to {args.out}")
    return 0


class RowProgress:
    """``sdp``'s ``progress`` callback: a bar over the margin rows of one input (on a terminal)."""

    def __init__(self):
        self.bar = None

    def __call__(self, b: int, row: int, rows: int, bound: float) -> None:
        from certify.report.progress import bar
        if self.bar is None:
            self.bar = bar(total=rows, desc="sdp margin rows", unit="row")
        self.bar.update(1)
        self.bar.set_postfix_str(f"last bound {bound:+.4f}")
        if row == rows - 1:
            self.bar.close()
            self.bar = None


def _announce_sdp_solver(net, solver: str) -> str:
    """The SDP solver to run (``auto`` resolved by the matrix size), said on stderr."""
    import sys
    from certify.convex.sdp import SCS_MAX_DIM, choose_solver, matrix_dim
    dim = matrix_dim(net)
    chosen = choose_solver(dim) if solver == "auto" else solver
    why = (f"auto: SCS up to {SCS_MAX_DIM} rows, first-order above" if solver == "auto" else "--solver")
    print(f"certify sdp: PSD matrix {dim} x {dim} (inputs + hidden units + 1): solver {chosen} ({why})",
          file=sys.stderr, flush=True)
    return chosen


def demo_section(net, X, y, eps: float = 0.05, n: int = 5) -> list[str]:
    """Lines for ``certify demo``: LP and MILP verdicts on the first ``n`` inputs at ``eps``."""
    from certify import convex
    from certify.data import PIXEL_RANGE
    K = int(torch.tensor(net.output_shape).prod())
    lines = [f"convex certificates (L-inf eps={eps}, first {n} inputs): LP (triangle, CROWN bounds) and exact MILP"]
    lines.append(f"  {'idx':>4} {'label':>5}  {'lp':<14} {'lp lower':>9} {'s':>5}   {'milp':<14} {'s':>5}")
    for i in range(min(n, len(y))):
        x, lab = X[i: i + 1], y[i]
        pred = int(net(x).argmax(1))
        if pred != int(lab):
            lines.append(f"  {i:>4} {int(lab):>5}  misclassified (predicted {pred})")
            continue
        C = robustness_matrix(lab.reshape(1), K)
        r1 = convex.lp(net, x, eps=eps, C=C, domain=PIXEL_RANGE)
        r2 = convex.milp(net, x, eps=eps, C=C, time_limit=20.0, domain=PIXEL_RANGE)
        lines.append(f"  {i:>4} {int(lab):>5}  {r1.verdict[0]:<14} {float(r1.lower[0].min()):>9.3f} "
                     f"{r1.seconds[0]:>5.2f}   {r2.verdict[0]:<14} {r2.seconds[0]:>5.2f}")
    return lines
