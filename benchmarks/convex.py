"""Convex certificates side by side: tightness and time of IBP, CROWN, alpha-CROWN, LP, LP-ALL,
SDP and MILP on MLPs of growing size, and the largest network each method finishes in 60 s.

Networks: a random toy MLP 2-16-16-10 (where the SDP is small enough to solve accurately and
beats the LP), the bundled digits MLP (64-24-24-10), MNIST MLPs 784-20-20-10 and 784-100-100-10
trained here by certify.train for two epochs (cached in benchmarks/out/), and the VNN-COMP 2021
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
    python benchmarks/convex.py --reproduce --n 30   # ~13 min: published reproduction (below)

``--reproduce`` PGD-trains (plain torch, ~2 min) a 784-100-100-10 MNIST MLP at eps 0.1 and
measures, on every 200th test image (``--n`` of them, default 50), the PGD-40 error, the MILP
error range (falsified .. not certified; time-limit unknowns make the range), and the verified
error of LP-ALL, LP, alpha-CROWN and CROWN, plus first-order SDP on ``--sdp-n`` inputs, beside
Salman et al. 2019 (Adv-MLP-B, eps 0.1) and Raghunathan et al. 2018 (PGD-NN, eps 0.1).

Each mode writes a results folder (``certify.report.results_folder``: summary.json, rows.jsonl,
command.txt, machine.json), by default benchmarks/out/convex/ and, with ``--reproduce``,
benchmarks/out/convex-reproduction/.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bounds  # noqa: E402
from certify import convex  # noqa: E402
from certify.cluster import connect, run_units  # noqa: E402
from certify.data import load_dataset  # noqa: E402
from certify.ir import Linear, ReLU, sequential  # noqa: E402
from certify.models import load_bundled  # noqa: E402
from certify.report.results_folder import command_line, machine_info, write_results_folder  # noqa: E402
from certify.spec.output import robustness_matrix  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
SHARED = Path(os.environ.get("CERTIFY_SHARED", ROOT.parent / "shared"))
METHODS = ["ibp", "crown", "alpha", "lp", "lp-all", "sdp-clarabel", "sdp-scs", "sdp-fo", "milp"]
CLARABEL_MAX = 60     # Clarabel's memory grows steeply (1.7 GB at matrix size 101)
SCS_MAX = 250         # SCS only up to this PSD matrix size (inputs + hidden units + 1)
BOUNDS = "alpha"      # pre-activation bounds of the convex methods (alpha-CROWN)


def train_mnist_mlp(hidden: list[int], data_dir: Path, epochs: int = 2, seed: int = 0):
    """A plain MNIST MLP, trained by ``certify.train`` (cross-entropy, Adam 1e-3, batch 128) and
    cached in benchmarks/out/: returns an IR network with input (1, 28, 28)."""
    from certify.frontends.torch import from_module
    from certify.train import TrainConfig, train
    sizes = [784] + hidden + [10]
    layers: list = [torch.nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*layers[:-1])
    path = OUT / f"mnist_mlp_{'x'.join(map(str, hidden))}_ep{epochs}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        X, y = load_dataset("mnist", "train", str(data_dir))
        train(model, X, y, TrainConfig(objective="standard", epochs=epochs, batch_size=128, lr=1e-3, seed=seed))
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    net = from_module(model, (1, 28, 28))
    net.name = f"mnist-mlp-{'x'.join(map(str, hidden))}"
    return net


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
                      bounds_method=BOUNDS, domain=(0.0, 1.0))
    elif method.startswith("sdp-"):
        solver = {"sdp-scs": "SCS", "sdp-clarabel": "Clarabel", "sdp-fo": "first-order"}[method]
        r = convex.sdp(net, x, eps=eps, C=C, solver=solver, iters=300, time_limit=time_limit / C.shape[1],
                       bounds_method=BOUNDS, domain=(0.0, 1.0))
    else:
        r = convex.milp(net, x, eps=eps, C=C, mode="decision", time_limit=time_limit / C.shape[1],
                        bounds_method=BOUNDS, domain=(0.0, 1.0))
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
            r = convex.lp(net, x, eps=eps, C=C, solver=solver, domain=(0.0, 1.0))
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


# ---------------------------------------------------------------------------------------------
# Published reproduction: Salman et al. 2019 and Raghunathan et al. 2018 at eps 0.1
# ---------------------------------------------------------------------------------------------
PUBLISHED = {
    "salman2019_adv_mlp_b_eps0.1": {"pgd_error": 0.159, "milp_error": [0.163, 0.344], "lp_all_error": 0.616,
                                    "source": "Salman et al. 2019, A Convex Relaxation Barrier, MNIST Adv-MLP-B, eps 0.1"},
    "raghunathan2018_pgd_nn_eps0.1": {"sdp_cert_error": 0.18, "lp_cert_error": 1.00,
                                      "source": "Raghunathan et al. 2018, Semidefinite relaxations, PGD-NN, eps 0.1"},
}


def train_pgd_mlp(data_dir: Path, eps: float = 0.1, hidden=(100, 100), epochs: int = 4, steps: int = 10,
                  seed: int = 0, budget_s: float = 420.0):
    """A 784-100-100-10 MNIST MLP PGD-trained (Madry et al.) at L-inf ``eps`` with plain torch:
    eps ramped linearly over the first epoch, ``epochs`` epochs, ``steps``-step PGD with random start and step
    2.5 eps / steps, Adam 1e-3, batch 128, stopped after ``budget_s`` seconds. Cached in
    benchmarks/out/ (weights are not results). Returns (IR network, training log dict)."""
    from certify.frontends.torch import from_module
    torch.manual_seed(seed)
    sizes = [784, *hidden, 10]
    layers: list = [torch.nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    path = OUT / f"mnist_pgd_mlp_{'x'.join(map(str, hidden))}_eps{eps}_ep{epochs}.pt"
    log = {"arch": "784-" + "-".join(map(str, hidden)) + "-10", "eps": eps, "pgd_steps": steps, "cached": path.exists()}
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        log.update(torch.load(path.with_suffix(".log.pt"), weights_only=True) if path.with_suffix(".log.pt").exists() else {})
    else:
        X, y = load_dataset("mnist", "train", str(data_dir))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        t0, nb, done = time.perf_counter(), (len(X) + 127) // 128, 0
        g = torch.Generator().manual_seed(seed)
        for ep in range(epochs):
            perm = torch.randperm(len(X), generator=g)
            for k in range(nb):
                idx = perm[k * 128: (k + 1) * 128]
                xb, yb = X[idx], y[idx]
                e = eps * min(1.0, (ep * nb + k + 1) / nb)
                delta = (torch.rand_like(xb) * 2 - 1) * e
                for _ in range(steps):
                    delta.requires_grad_(True)
                    loss = torch.nn.functional.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
                    (gd,) = torch.autograd.grad(loss, delta)
                    delta = (delta.detach() + 2.5 * e / steps * gd.sign()).clamp(-e, e)
                loss = torch.nn.functional.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                done += 1
                if time.perf_counter() - t0 > budget_s:
                    break
            print(f"  epoch {ep + 1}: adv loss {loss.item():.3f}, {time.perf_counter() - t0:.0f} s", flush=True)
            if time.perf_counter() - t0 > budget_s:
                break
        log.update({"epochs": done / nb, "train_seconds": time.perf_counter() - t0})
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        torch.save({k: v for k, v in log.items() if k in ("epochs", "train_seconds")}, path.with_suffix(".log.pt"))
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return from_module(model, (1, 28, 28)), log


REPRODUCE_ORDER = ["crown", "alpha", "lp", "lp-all", "milp"]


def reproduce_input(net, eps: float, restarts: int, milp_limit: float, unit) -> dict:
    """One input ``unit`` = (index, x (1, ...), label (1,)) of ``reproduce``: PGD-40, then the
    methods of ``REPRODUCE_ORDER`` in the sound cascade described there."""
    from certify.attack import pgd_margin
    from certify.spec.sets import ball
    i, x, lab = unit
    C = robustness_matrix(lab, 10)
    rec = {"idx": i, "label": int(lab), "verdict": {}, "inferred": {}, "seconds": {}}
    with torch.no_grad():
        pred = int(net(x).argmax(1))
    if pred != int(lab):
        rec["misclassified"] = True
        for m in ["pgd"] + REPRODUCE_ORDER:
            rec["verdict"][m] = "error"
        return rec
    t0 = time.perf_counter()
    _, v = pgd_margin(net, ball(x, eps, domain=(0.0, 1.0)), C, steps=40, restarts=restarts,
                      generator=torch.Generator().manual_seed(i))
    rec["seconds"]["pgd"] = time.perf_counter() - t0
    rec["pgd_margin"] = float(v)
    broken = float(v) <= 0
    rec["verdict"]["pgd"] = "error" if broken else "robust"
    certified_by = None
    for m in REPRODUCE_ORDER:
        if broken:
            rec["verdict"][m], rec["inferred"][m] = "falsified", "pgd"
            continue
        if certified_by is not None:
            rec["verdict"][m], rec["inferred"][m] = "certified", certified_by
            continue
        t0 = time.perf_counter()
        if m in ("crown", "alpha"):
            low = getattr(bounds, m)(net, x, eps=eps, C=C).lower.detach()
            verdict, lower = ("certified" if bool((low > 0).all()) else "not_certified"), float(low.min())
        elif m in ("lp", "lp-all"):
            r = convex.lp(net, x, eps=eps, C=C, refine="all" if m == "lp-all" else None, bounds_method=BOUNDS,
                          domain=(0.0, 1.0))
            verdict, lower = r.verdict[0], float(r.lower.min())
        else:
            r = convex.milp(net, x, eps=eps, C=C, mode="decision", time_limit=milp_limit / C.shape[1],
                            bounds_method=BOUNDS, domain=(0.0, 1.0))
            verdict, lower = r.verdict[0], float(r.lower.min())
            rec["milp_status"] = r.status[0]
        rec["seconds"][m] = time.perf_counter() - t0
        rec["verdict"][m] = verdict
        rec.setdefault("lower", {})[m] = lower
        if verdict == "certified":
            certified_by = m
    return rec


def reproduce(args) -> int:
    """Our PGD-trained MNIST MLP at eps 0.1 on every ``--stride``-th test image: PGD-40 error,
    MILP error range (decision mode: falsified = lower end, + unknown = upper end), LP-ALL, LP,
    alpha-CROWN, CROWN verified error, and first-order SDP on ``--sdp-n`` inputs; printed beside
    the published numbers. Methods are run in a sound cascade to save time: an input PGD breaks
    is an error for every method (no certificate can exist); an input a looser method certifies
    is certified by every tighter one (CROWN < alpha < LP < LP-ALL < MILP). Such inferred
    verdicts are marked in the JSON."""
    eps = args.eps
    net, trainlog = train_pgd_mlp(SHARED / "data", eps=eps, epochs=args.train_epochs, budget_s=args.train_budget)
    X, y = load_dataset("mnist", "test", str(SHARED / "data"))
    idx = list(range(0, len(X), args.stride))[: args.n or 50]
    with torch.no_grad():
        clean_ok = (net(X).argmax(1) == y).float().mean().item()
    print(f"network {trainlog['arch']} PGD-trained at eps {eps} ({trainlog.get('epochs', '?')} epochs); "
          f"clean test accuracy {clean_ok:.4f}; {len(idx)} test inputs (every {args.stride}th)")
    order = REPRODUCE_ORDER
    per = []
    t_all = time.perf_counter()

    def done(unit, rec: dict) -> None:
        per.append(rec)
        if not rec.get("misclassified"):
            print(f"  #{rec['idx']:<5} pgd {rec['verdict']['pgd']:<7} "
                  + " ".join(f"{m}={rec['verdict'][m][:5]}" for m in order)
                  + f"  ({sum(rec['seconds'].values()):.1f} s)", flush=True)

    with connect(args.cluster) as client:
        run_units([(i, X[i: i + 1].clone(), y[i: i + 1].clone()) for i in idx],     # a view would carry all of X
                  partial(reproduce_input, net, eps, args.restarts, args.milp_limit), client, done)
    per.sort(key=lambda r: r["idx"])
    # first-order SDP on a handful of inputs PGD does not break and LP-ALL does not certify (where it can matter)
    sdp_rows = []
    cand = [r for r in per if r["verdict"].get("pgd") == "robust" and r["verdict"]["lp-all"] != "certified"]
    cand += [r for r in per if r["verdict"].get("pgd") == "robust" and r["verdict"]["lp-all"] == "certified"]
    for r in cand[: args.sdp_n]:
        i = r["idx"]
        x, C = X[i: i + 1], robustness_matrix(y[i: i + 1], 10)
        t0 = time.perf_counter()
        s = convex.sdp(net, x, eps=eps, C=C, solver="first-order", iters=args.sdp_iters,
                       time_limit=args.sdp_limit / C.shape[1], bounds_method=BOUNDS, domain=(0.0, 1.0))
        sdp_rows.append({"idx": i, "verdict": s.verdict[0], "lower": float(s.lower.min()),
                         "lp_all_verdict": r["verdict"]["lp-all"], "lp_all_lower": r.get("lower", {}).get("lp-all"),
                         "milp_verdict": r["verdict"]["milp"], "seconds": time.perf_counter() - t0})
        print(f"  sdp-fo #{i}: {s.verdict[0]} lower {float(s.lower.min()):.4f} (LP-ALL {r['verdict']['lp-all']}, "
              f"{sdp_rows[-1]['seconds']:.0f} s)", flush=True)
    n = len(per)
    cnt = lambda m, vs: sum(r["verdict"][m] in vs for r in per)  # noqa: E731
    err = {"pgd": cnt("pgd", ("error",)) / n}
    for m in order[:-1]:
        err[m] = 1 - cnt(m, ("certified",)) / n
    milp_lo = cnt("milp", ("error", "falsified")) / n
    milp_hi = 1 - cnt("milp", ("certified",)) / n
    summary = {"n": n, "eps": eps, "clean_error": 1 - clean_ok, "pgd40_error": err["pgd"],
               "milp_error": [milp_lo, milp_hi], "milp_unknown": cnt("milp", ("unknown",)),
               "lp_all_error": err["lp-all"], "lp_error": err["lp"], "alpha_error": err["alpha"],
               "crown_error": err["crown"], "sdp_fo": sdp_rows, "seconds": time.perf_counter() - t_all}
    pub = PUBLISHED["salman2019_adv_mlp_b_eps0.1"]
    rag = PUBLISHED["raghunathan2018_pgd_nn_eps0.1"]
    print(f"\nPublished reproduction at L-inf eps {eps} (error = 1 - verified accuracy; n = {n} test inputs)")
    print(f"{'quantity':<28}{'ours':>16}{'Salman 2019 Adv-MLP-B':>24}{'Raghunathan 2018':>18}")
    rows = [("PGD error (lower bound)", f"{err['pgd']:.1%}", f"{pub['pgd_error']:.1%}", "-"),
            ("MILP error (range)", f"{milp_lo:.1%}-{milp_hi:.1%}", f"{pub['milp_error'][0]:.1%}-{pub['milp_error'][1]:.1%}", "-"),
            ("LP-ALL verified error", f"{err['lp-all']:.1%}", f"{pub['lp_all_error']:.1%}", "-"),
            ("LP verified error", f"{err['lp']:.1%}", "-", f"{rag['lp_cert_error']:.0%} (LP-cert)"),
            ("alpha-CROWN verified error", f"{err['alpha']:.1%}", "-", "-"),
            ("CROWN verified error", f"{err['crown']:.1%}", "-", "-")]
    if sdp_rows:
        k = sum(s["verdict"] == "certified" for s in sdp_rows)
        rows.append(("SDP-FO certified (subset)", f"{k}/{len(sdp_rows)}", "-", f"{1 - rag['sdp_cert_error']:.0%} cert."))
    for q, a, b, c in rows:
        print(f"{q:<28}{a:>16}{b:>24}{c:>18}")
    print(f"MILP unknown (time limit {args.milp_limit:.0f} s/input): {summary['milp_unknown']}; "
          f"total {summary['seconds']:.0f} s")
    out = {"published": PUBLISHED, "ours": summary, "network": trainlog,
           "settings": {"stride": args.stride, "milp_limit_s": args.milp_limit, "pgd_steps": 40,
                        "pgd_restarts": args.restarts, "pre_bounds": BOUNDS, "sdp_iters": args.sdp_iters,
                        "sdp_limit_s": args.sdp_limit}}
    path = Path(args.out or OUT / "convex-reproduction")
    write_results_folder(path, out, per, [command_line()], machine_info(threads=torch.get_num_threads()))
    print(f"wrote {path}/summary.json, rows.jsonl, command.txt, machine.json")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 inputs, networks up to mnistfc 256x2, SDP on small ones")
    p.add_argument("--n", type=int, default=None, help="inputs per network (default 3 quick, 10 full)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per input before a method is dropped")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--nets", default=None, help="only networks whose name contains one of these comma-separated strings")
    p.add_argument("--no-solvers", action="store_true", help="skip the highspy vs scipy LP timing")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/out/convex, or "
                                             "benchmarks/out/convex-reproduction with --reproduce)")
    r = p.add_argument_group("published reproduction (--reproduce)")
    r.add_argument("--reproduce", action="store_true",
                   help="PGD-train a 784-100-100-10 MNIST MLP at eps 0.1 and compare PGD/MILP/LP-ALL/LP/CROWN/SDP "
                        "errors with Salman et al. 2019 and Raghunathan et al. 2018")
    r.add_argument("--eps", type=float, default=0.1, help="L-inf radius of the reproduction (default 0.1)")
    r.add_argument("--stride", type=int, default=200, help="every stride-th MNIST test image (default 200)")
    r.add_argument("--milp-limit", type=float, default=20.0, help="MILP seconds per input (default 20)")
    r.add_argument("--restarts", type=int, default=5, help="PGD-40 restarts (default 5)")
    r.add_argument("--train-epochs", type=int, default=15, help="PGD training epochs (default 15)")
    r.add_argument("--train-budget", type=float, default=420.0, help="seconds of PGD training (default 420)")
    r.add_argument("--sdp-n", type=int, default=3, help="inputs for the first-order SDP (default 3)")
    r.add_argument("--sdp-iters", type=int, default=300, help="SDP-FO Adam steps per margin row")
    r.add_argument("--sdp-limit", type=float, default=90.0, help="SDP-FO seconds per input (default 90)")
    r.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="run the inputs on a Dask cluster: local:N or tcp://HOST:PORT (docs/cluster.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.reproduce:
        return reproduce(args)
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
    summary = {"largest_within_budget": largest, "budget_s": args.budget, "n": n, "lp_solvers": solvers,
               "gains": gains, "table": [{k: v for k, v in r.items() if k not in ("lowers", "verdicts")} for r in rows]}
    path = Path(args.out or OUT / "convex")
    write_results_folder(path, summary, rows, [command_line()], machine_info(threads=torch.get_num_threads()))
    print(f"wrote {path}/summary.json, rows.jsonl, command.txt, machine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
