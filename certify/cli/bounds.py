"""``certify bounds``: certify a data set with bound propagation (IBP, CROWN, CROWN-IBP, alpha-CROWN).

Each selected input is classified; a correctly classified one is certified at ``--eps`` when
every margin ``logit[label] - logit[j]`` has a lower bound > 0 over the ``--norm`` ball
(clipped to the data set's domain or ``--domain``), or, with ``--radius``, gets the largest certified eps found by
bisection. One JSON-lines record per input (engine ``bounds``), resumable.
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from certify.cli.common import domain_from
from certify.errors import CertifyError

HELP = """\
Certify every selected input with linear-relaxation bound propagation:
  ibp        interval bound propagation (fastest, loosest)
  crown      backward linear relaxation with CROWN pre-activation bounds (default)
  crown-ibp  CROWN on the output with IBP pre-activation bounds (the training bound)
  alpha      alpha-CROWN: ReLU slopes optimized with Adam (--iterations, --lr); never looser than CROWN
(auto_LiRPA's names are accepted too: IBP, CROWN, CROWN-IBP, alpha-CROWN, CROWN-Optimized.)

An input is 'certified' when every margin logit[label] - logit[j] is proved > 0 for all
points of the ball of radius --eps (L-inf, L2 or L1) around it, clipped to the data set's
domain ([0, 1] for images; --domain LO HI or --no-domain to change it);
'not_certified' says only that the method could not prove it; misclassified inputs are
reported as such. --radius reports the largest certified eps (bisection to --tol) instead.
Each record's evidence holds the margin lower bounds.

examples:
  certify bounds digits-mlp --data digits --count 100 --eps 0.02
  certify bounds model.onnx --data mnist --count 100 --eps 0.1 --method alpha --out r.jsonl
  certify bounds model.onnx --data mnist --count 50 --radius --norm 2 --method crown
  certify bounds my_models:Net --weights net.pt --model-args '{"width": 64}' --data mnist --count 10
"""


def register(sub) -> None:
    from certify.cli.argtypes import nonneg_float, nonneg_int, positive_float, positive_int
    from bounds import METHODS
    from certify.cli.common import add_cluster_args, add_data_args, add_domain_args, add_model_arg, add_output_args, \
        add_radius_args

    p = sub.add_parser("bounds", help="bound propagation certificates (IBP / CROWN / alpha-CROWN) for a data set",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    add_data_args(p)
    g = p.add_argument_group("certificate")
    g.add_argument("--method", default="crown", choices=METHODS, type=_method,
                   help="bound method (default: crown; auto_LiRPA's spellings too)")
    g.add_argument("--eps", type=nonneg_float, default=0.02, help="perturbation radius to certify (default: 0.02)")
    g.add_argument("--norm", default="inf", choices=["inf", "2", "1"],
                   help="ball norm: inf, 2 or 1 (default: inf)")
    add_domain_args(g)
    add_radius_args(g, 1e-4, None, "a ball containing the whole domain: its width for inf, times sqrt(input size) "
                                   "for 2, times the input size for 1; without a domain it grows by doubling")
    g.add_argument("--iterations", type=nonneg_int, default=20, help="alpha-CROWN optimization steps (default: 20)")
    g.add_argument("--lr", type=positive_float, default=0.5, help="alpha-CROWN Adam learning rate (default: 0.5)")
    g.add_argument("--batch", type=positive_int, default=32, help="inputs bounded together (default: 32)")
    g.add_argument("--precision", default="float64", choices=["float64", "float32"],
                   help="arithmetic of the bound computation (default: float64, so that rounding cannot flip a "
                        "margin bound that is barely above 0; float32 is about 2x faster)")
    add_output_args(p)
    add_cluster_args(p)
    p.add_argument("--quiet", action="store_true", help="print only the summary, not one line per input")
    p.set_defaults(func=run)


def _method(text: str) -> str:
    """--method in our spelling or auto_LiRPA's (an unknown name is left for argparse to refuse)."""
    from bounds import method_name
    try:
        return method_name(text)
    except CertifyError:
        return text


def _check(args) -> None:
    if not args.eps >= 0:
        raise CertifyError(f"--eps must be >= 0, got {args.eps}")
    domain_from(args)   # validates --domain


def _opts(args) -> dict:
    return {"iterations": args.iterations, "lr": args.lr} if args.method == "alpha" else {}


def certify_batch(net, X: torch.Tensor, y: torch.Tensor, method: str, eps: float, norm: str, domain,
                  radius: bool = False, tol: float = 1e-4, max_radius: float | None = None, **opts):
    """Bound a batch of correctly classified inputs: (certified (B,) bool, radius (B,) or None,
    margin lower bounds (B, K-1))."""
    import bounds
    from certify.spec.output import robustness_matrix
    from certify.spec.sets import ball

    if radius:
        r, b = bounds.radius(net, X, y, norm=norm, method=method, hi=max_radius, tol=tol, domain=domain, **opts)
        return b.lower.min(1).values > 0, r, b.lower
    C = robustness_matrix(y, net.output_size, dtype=X.dtype)
    b = bounds.compute_bounds(net, ball(X, eps, norm, domain), C, method=method, upper=False, **opts)
    lower = b.lower.detach()
    return lower.min(1).values > 0, None, lower


def setup(args) -> SimpleNamespace:
    """The model (float64 unless --precision float32), the selected inputs and the domain of a
    command line: what ``bounds_chunk`` needs, built alike by a local run and by every worker."""
    from certify.cli.common import check_input_shape, check_labels, load_data, model_from

    _check(args)
    net = model_from(args)
    if args.precision == "float64":
        net = net.to(torch.float64)
    if len(net.output_shape) != 1 or net.output_size < 2:
        raise CertifyError(f"model {net.name} has output shape {net.output_shape}; certify bounds needs class "
                           "logits (K,) with K >= 2")
    idx, X, y = load_data(args)
    X = check_input_shape(net, X, args.data).to(net.dtype)
    check_labels(net, y, args.data)
    return SimpleNamespace(args=args, net=net, idx=idx, X=X, y=y, domain=domain_from(args))


def bounds_chunk(ctx: SimpleNamespace, sel: list[int]) -> list:
    """The records of the inputs ``sel`` (positions in ``ctx.idx``), bounded as one batch."""
    from certify.report.records import Record

    args, net = ctx.args, ctx.net
    t0 = time.perf_counter()
    xb, yb = ctx.X[sel], ctx.y[sel]
    with torch.no_grad():
        pred = net(xb).argmax(1)
    ok = pred == yb
    cert = torch.zeros(len(sel), dtype=torch.bool)
    rad = torch.zeros(len(sel), dtype=ctx.X.dtype)
    low = [None] * len(sel)
    if bool(ok.any()):
        c, r, lower = certify_batch(net, xb[ok], yb[ok], args.method, args.eps, args.norm, ctx.domain,
                                    args.radius, args.tol, args.max_radius, **_opts(args))
        pos = ok.nonzero().flatten()
        cert[pos] = c
        if r is not None:
            rad[pos] = r.to(ctx.X.dtype)
        for j, p in enumerate(pos.tolist()):
            low[p] = lower[j]
    secs = (time.perf_counter() - t0) / len(sel)
    records = []
    for j, k in enumerate(sel):
        if not bool(ok[j]):
            verdict = "misclassified"
        else:
            verdict = "certified" if bool(cert[j]) else "not_certified"
        ev = {} if low[j] is None else {"margin_lower": [float(v) for v in low[j]],
                                        "min_margin_lower": float(low[j].min()),
                                        "domain": list(ctx.domain) if ctx.domain else None}
        records.append(Record(idx=int(ctx.idx[k]), label=int(ctx.y[k]), predict=int(pred[j]), engine="bounds",
                              method=args.method, verdict=verdict, norm=args.norm,
                              eps=None if args.radius else float(args.eps),
                              radius=(float(rad[j]) if args.radius else None), seconds=float(secs), evidence=ev))
    return records


def run(args) -> int:
    from certify.cli.common import check_cluster_args, cluster_client, failed_records, open_results, run_chunks, \
        summary_lines

    check_cluster_args(args)
    ctx = setup(args)
    eps = None if args.radius else float(args.eps)

    def show(rec) -> None:
        if not args.quiet:
            extra = f" radius {rec.radius:.5f}" if args.radius else ""
            m = f" min margin lb {rec.evidence['min_margin_lower']:+.4f}" if "min_margin_lower" in rec.evidence else ""
            print(f"input {rec.idx}: label {rec.label} predict {rec.predict} {rec.verdict}{extra}{m}")

    def failed(sel, message):
        return failed_records(ctx.idx, ctx.y, sel, message, "bounds", args.method, args.norm, eps, args.radius)

    with cluster_client(args) as client:
        writer = open_results(args, "bounds", args.method, args.norm, eps=eps)
        todo = [k for k, i in enumerate(ctx.idx) if writer is None or i not in writer.done]
        records = [writer.done[i] for i in ctx.idx if writer is not None and i in writer.done]
        t_all = time.perf_counter()
        batches = [todo[s:s + args.batch] for s in range(0, len(todo), args.batch)]
        try:
            records += run_chunks(args, client, ctx, setup, bounds_chunk, batches, writer, show, failed,
                                  f"bounds {args.method}")
        finally:
            if writer is not None:
                writer.close()
    elapsed = time.perf_counter() - t_all
    what = (f"{args.norm}-radius search" if args.radius else f"eps {args.eps:g} ({args.norm})")
    for line in summary_lines(records, args.method, what, elapsed, len(todo), args.radius):
        print(line)
    if writer is not None:
        print(f"records written to {args.out}")
    return 0


def demo_section(net, X: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Lines for ``certify demo``: certified accuracy of IBP / CROWN / alpha-CROWN at a small eps."""
    from certify.data import PIXEL_RANGE
    eps = 0.05
    lines = [f"bound propagation (L-inf eps {eps}, {len(y)} inputs): certified accuracy"]
    X = X.to(net.dtype)
    with torch.no_grad():
        ok = net(X).argmax(1) == y
    for method in ("ibp", "crown", "alpha"):
        t0 = time.perf_counter()
        opts = {"iterations": 10} if method == "alpha" else {}
        cert, _, _ = certify_batch(net, X[ok], y[ok], method, eps, "inf", PIXEL_RANGE, **opts)
        frac = int(cert.sum()) / len(y)
        lines.append(f"  {method:6s} {frac:.2f}  ({time.perf_counter() - t0:.2f} s)")
    return lines
