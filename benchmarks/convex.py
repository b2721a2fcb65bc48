"""Convex certificates side by side: tightness and time of IBP, CROWN, alpha-CROWN, LP, LP-ALL,
SDP and MILP on MLPs of growing size, and the largest network each method finishes in 60 s.

Networks: a random toy MLP 2-16-16-10 (where the SDP is small enough to solve accurately and
beats the LP), the bundled digits MLP (64-24-24-10), MNIST MLPs 784-20-20-10 and 784-100-100-10
trained here with plain torch for two epochs (cached in benchmarks/out/), and the VNN-COMP 2021
mnistfc nets 784-256x{2,4,6}-10 (../shared/vnncomp). For every network, ``--n`` correctly
classified test inputs at a fixed L-inf eps; per method the mean over inputs of the smallest
margin lower bound, the number certified, and the mean seconds per input. LP, SDP and MILP use
alpha-CROWN pre-activation bounds. MILP runs in decision mode: its value is the bound proved at
the stop (not the exact minimum) or the margin of its checked counterexample. sdp-scs runs SCS
(matrix size <= 250), sdp-clarabel Clarabel (size <= 60), sdp-fo the first-order SDP-FO-style
solver (matrix-free Lanczos + Adam, 300 steps per margin row, capped at --budget / rows seconds
per row); every SDP bound is at least the one of the LP's multipliers. A last table gives, per
network, the mean gain (over inputs, smallest margin) of LP, LP-ALL and the SDPs over alpha-CROWN
and of the SDPs over the LP, and how many inputs each method certifies that alpha-CROWN does not.
A method whose time per input exceeded ``--budget`` seconds on a smaller network is skipped on
larger ones.
Last, the LP solver comparison: highspy (model passed once, warm start) vs scipy linprog.

    python benchmarks/convex.py --quick          # minutes: 2 inputs, the smaller networks
    python benchmarks/convex.py --n 10           # everything
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bounds  # noqa: E402
from certify import convex  # noqa: E402
from certify.data import load_dataset  # noqa: E402
from certify.ir import Flatten, Linear, ReLU, sequential  # noqa: E402
from certify.models import load_bundled  # noqa: E402
from certify.spec.output import robustness_matrix  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
SHARED = Path(os.environ.get("CERTIFY_SHARED", ROOT.parent / "shared"))
METHODS = ["ibp", "crown", "alpha", "lp", "lp-all", "sdp-clarabel", "sdp-scs", "sdp-fo", "milp"]
CLARABEL_MAX = 60     # Clarabel's memory grows steeply (1.7 GB at matrix size 101)
SCS_MAX = 250         # SCS only up to this PSD matrix size (inputs + hidden units + 1)
BOUNDS = "alpha"      # pre-activation bounds of the convex methods (alpha-CROWN)


def train_mnist_mlp(hidden: list[int], data_dir: Path, epochs: int = 2, seed: int = 0):
    """A plain MNIST MLP (cached): returns an IR network with input (1, 28, 28)."""
    path = OUT / f"mnist_mlp_{'x'.join(map(str, hidden))}.pt"
    sizes = [784] + hidden + [10]
    g = torch.Generator().manual_seed(seed)
    lins = [Linear(torch.randn(b, a, generator=g) * (2 / a) ** 0.5, torch.zeros(b)) for a, b in zip(sizes[:-1], sizes[1:])]
    if path.exists():
        state = torch.load(path, weights_only=True)
        for k, l in enumerate(lins):
            l.weight, l.bias = state[f"w{k}"], state[f"b{k}"]
    else:
        X, y = load_dataset("mnist", "train", str(data_dir))
        params = []
        for l in lins:
            l.weight.requires_grad_(True)
            l.bias.requires_grad_(True)
            params += [l.weight, l.bias]
        ops = [Flatten()] + [o for l in lins[:-1] for o in (l, ReLU())] + [lins[-1]]
        net = sequential((1, 28, 28), ops)
        opt = torch.optim.Adam(params, lr=1e-3)
        for _ in range(epochs):
            perm = torch.randperm(len(X), generator=g)
            for i in range(0, len(X), 128):
                idx = perm[i: i + 128]
                loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save({**{f"w{k}": l.weight.detach() for k, l in enumerate(lins)},
                    **{f"b{k}": l.bias.detach() for k, l in enumerate(lins)}}, path)
        for l in lins:
            l.weight, l.bias = l.weight.detach(), l.bias.detach()
    ops = [Flatten()] + [o for l in lins[:-1] for o in (l, ReLU())] + [lins[-1]]
    return sequential((1, 28, 28), ops, name=f"mnist-mlp-{'x'.join(map(str, hidden))}")


def networks(quick: bool):
    """(name, network, data name, eps) in growing size."""
    g = torch.Generator().manual_seed(0)
    toy = sequential((2,), [Linear(torch.randn(16, 2, generator=g), torch.randn(16, generator=g)), ReLU(),
                            Linear(torch.randn(16, 16, generator=g) / 4, torch.randn(16, generator=g)), ReLU(),
                            Linear(torch.randn(10, 16, generator=g) / 4, torch.randn(10, generator=g))], name="toy")
    out = [("toy 2-16-16", toy, "toy", 0.4), ("digits 64-24-24", load_bundled("digits-mlp"), "digits", 0.08)]
    data_dir = SHARED / "data"
    if (data_dir / "mnist").is_dir():
        out.append(("mnist 784-20-20", train_mnist_mlp([20, 20], data_dir), "mnist", 0.03))
        out.append(("mnist 784-100-100", train_mnist_mlp([100, 100], data_dir), "mnist", 0.02))
    mfc = SHARED / "vnncomp" / "mnistfc"
    if mfc.is_dir():
        from certify.frontends.onnx import load
        for k in ([2] if quick else [2, 4, 6]):
            out.append((f"mnistfc 256x{k}", load(str(mfc / f"mnist-net_256x{k}.onnx")), "mnist", 0.02))
    return out


def run_method(method: str, net, x, C, eps: float, time_limit: float):
    """(smallest margin lower bound, verdict, seconds) of one input."""
    t0 = time.perf_counter()
    if method in ("ibp", "crown", "alpha"):
        fn = getattr(bounds, method)
        low = fn(net, x, eps=eps, C=C).lower.detach()
        v = "certified" if bool((low > 0).all()) else "not_certified"
        return float(low.min()), v, time.perf_counter() - t0
    if method in ("lp", "lp-all"):
        r = convex.lp(net, x, eps=eps, C=C, refine="all" if method == "lp-all" else None, time_limit=time_limit,
                      bounds_method=BOUNDS)
    elif method.startswith("sdp-"):
        solver = {"sdp-scs": "SCS", "sdp-clarabel": "Clarabel", "sdp-fo": "first-order"}[method]
        r = convex.sdp(net, x, eps=eps, C=C, solver=solver, iters=300, time_limit=time_limit / C.shape[1],
                       bounds_method=BOUNDS)
    else:
        r = convex.milp(net, x, eps=eps, C=C, mode="decision", time_limit=time_limit / C.shape[1],
                        bounds_method=BOUNDS)
    if r.verdict[0] == "falsified":           # milp: the checked counterexample's margin
        return float(r.upper.min()), "falsified", time.perf_counter() - t0
    return float(r.lower.min()), r.verdict[0], time.perf_counter() - t0


def lp_solver_comparison(quick: bool) -> list[dict]:
    """Seconds of the same LPs (9 margin rows) with highspy and with scipy linprog(method='highs')."""
    out = []
    nets = [n for n in networks(quick) if n[0].startswith(("mnist 784-100", "mnistfc"))][:2]
    for name, net, data, eps in nets:
        X, y = load_dataset(data, "test", str(SHARED / "data"))
        x = X[:1].reshape((1,) + tuple(net.input_shape))
        C = robustness_matrix(net(x).argmax(1), 10)
        row = {"net": name, "eps": eps}
        for solver in ("highs", "scipy"):
            t0 = time.perf_counter()
            r = convex.lp(net, x, eps=eps, C=C, solver=solver)
            row[solver] = time.perf_counter() - t0
            row[f"{solver}_lower"] = float(r.lower.min())
        out.append(row)
        print(f"LP solvers on {name} eps={eps}: highspy {row['highs']:.2f} s, scipy linprog {row['scipy']:.2f} s "
              f"(same bound: {row['highs_lower']:.6f} vs {row['scipy_lower']:.6f})")
    return out


def gain_table(rows: list[dict], nets: list[str]) -> list[dict]:
    """Print and return, per network, the mean gain of each convex method over alpha-CROWN (and of
    the SDPs over the LP) in the smallest-margin lower bound, and the inputs it certifies that
    alpha-CROWN does not."""
    pairs = [(m, "alpha") for m in ("lp", "lp-all", "sdp-clarabel", "sdp-scs", "sdp-fo")] + \
        [(m, "lp") for m in ("sdp-clarabel", "sdp-scs", "sdp-fo")]
    out = []
    print("\nGain in the smallest-margin lower bound (mean over inputs; max; inputs newly certified)")
    for nm in nets:
        by = {r["method"]: r for r in rows if r["net"] == nm and not r.get("skipped")}
        cells = []
        for m, ref in pairs:
            if m not in by or ref not in by:
                continue
            d = [a - b for a, b in zip(by[m]["lowers"], by[ref]["lowers"])]
            new = sum(v == "certified" and w != "certified" for v, w in zip(by[m]["verdicts"], by[ref]["verdicts"]))
            out.append({"net": nm, "method": m, "vs": ref, "mean_gain": sum(d) / len(d), "max_gain": max(d),
                        "newly_certified": new})
            cells.append(f"{m}-{ref} {sum(d) / len(d):+.4f} (max {max(d):+.4f}, +{new})")
        print(f"{nm:<18} " + "; ".join(cells))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 inputs, networks up to mnistfc 256x2, SDP on small ones")
    p.add_argument("--n", type=int, default=None, help="inputs per network (default 3 quick, 10 full)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per input before a method is dropped")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--nets", default=None, help="only networks whose name contains one of these comma-separated strings")
    p.add_argument("--no-solvers", action="store_true", help="skip the highspy vs scipy LP timing")
    p.add_argument("--out", default=str(OUT / "convex.json"), help="JSON output path")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    n = args.n or (2 if args.quick else 10)
    methods = args.methods.split(",")
    rows, dropped, largest = [], set(), {}
    for name, net, data, eps in networks(args.quick):
        if args.nets and not any(k in name for k in args.nets.split(",")):
            continue
        if data == "toy":             # random inputs labelled by the network itself
            X = torch.rand(200, 2, generator=torch.Generator().manual_seed(1))
            y = net(X).argmax(1)
        else:
            X, y = load_dataset(data, "test", str(SHARED / "data") if data != "digits" else None)
        X = X.reshape((X.shape[0],) + tuple(net.input_shape))
        with torch.no_grad():
            ok = (net(X[:200]).argmax(1) == y[:200]).nonzero().flatten()[:n]
        for m in methods:
            size = 1 + int(math.prod(net.input_shape)) + net.num_relus()
            too_big = ((m == "sdp-scs" and size > (50 if args.quick else SCS_MAX))
                       or (m == "sdp-clarabel" and size > CLARABEL_MAX)
                       or (m == "sdp-fo" and args.quick and size > 1400))
            if m in dropped or too_big:
                rows.append({"net": name, "method": m, "eps": eps, "skipped": True})
                continue
            lows, certs, secs, verdicts = [], 0, [], []
            for i in ok.tolist():
                x = X[i: i + 1]
                C = robustness_matrix(y[i: i + 1], 10)
                low, v, s = run_method(m, net, x, C, eps, args.budget)
                lows.append(low)
                verdicts.append(v)
                certs += v == "certified"
                secs.append(s)
            row = {"net": name, "relus": net.num_relus(), "method": m, "eps": eps, "n": len(lows),
                   "mean_lower": sum(lows) / len(lows), "certified": certs, "seconds": sum(secs) / len(secs),
                   "lowers": lows, "verdicts": verdicts}
            rows.append(row)
            print(f"{name:<18} {m:<7} eps={eps:<5} mean lower {row['mean_lower']:>9.4f}  certified {certs}/{len(lows)}"
                  f"  {row['seconds']:>7.2f} s/input", flush=True)
            if row["seconds"] > args.budget:
                dropped.add(m)
            else:
                largest[m] = name
    print("\nTightness (mean smallest-margin lower bound; certified/n) and time (s per input)")
    nets = list(dict.fromkeys(r["net"] for r in rows))
    print(f"{'network':<18}" + "".join(f"{m:>20}" for m in methods))
    for nm in nets:
        cells = []
        for m in methods:
            r = next(r for r in rows if r["net"] == nm and r["method"] == m)
            cells.append("skipped" if r.get("skipped") else f"{r['mean_lower']:.3f} {r['certified']}/{r['n']} {r['seconds']:.1f}s")
        print(f"{nm:<18}" + "".join(f"{c:>20}" for c in cells))
    print(f"\nLargest network finished within {args.budget:.0f} s per input: "
          + ", ".join(f"{m}: {largest.get(m, 'none')}" for m in methods))
    gains = gain_table(rows, nets)
    solvers = [] if args.no_solvers else lp_solver_comparison(args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "largest_within_budget": largest, "budget_s": args.budget, "n": n,
                   "lp_solvers": solvers, "gains": gains}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
