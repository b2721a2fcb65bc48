"""CPU against CUDA: the same engines on both devices, timed side by side, their answers compared.

Sections (each on every device of ``--devices``; default cpu, plus cuda when torch sees a GPU):

* ``bounds``: IBP, CROWN and alpha-CROWN (``--alpha-iterations`` steps) lower bounds of the robustness margins, in
  float64, of the VNN-COMP mnistfc network mnist-net_256x2 on MNIST test images (L-inf eps 0.02)
  and of the zoo's ``--cnn`` on the CIFAR-10 sample of ../shared/data (eps 2/255, random weights
  of seed 0); seconds of one call after an untimed warm-up call;
* ``bab``: ``bounds.bab.verify`` on a few ACAS Xu and mnistfc instances (evenly spaced rows of
  each instances.csv), ``--bab-timeout`` seconds each;
* ``smoothing``: Cohen et al.'s CERTIFY (``Smooth.certify``, Gaussian sigma 0.25, n0 100,
  N ``--smooth-n``) of ``--cnn`` on CIFAR images, and the raw batched forward pass of the same
  module on as many samples: ``ratio`` = certify throughput / raw throughput;
* ``training``: one epoch (``--train-batches`` batches of 100 MNIST training images; 600 = the
  whole set) of dm-small with the standard objective, and on CUDA also with ``--amp``.

Checks across devices: bound lower bounds equal to 1e-6 (absolute, float64); BaB verdicts never
contradict (sat on one device, unsat on the other; a timeout beside a verdict is listed, not a
failure); smoothing predictions compared (the devices draw different noise streams, so an input
near a decision threshold may differ: listed). Without CUDA only the CPU column runs and the
summary says CUDA is unavailable.

Writes the results folder ``--out`` (summary.json with the table and the checks, rows.jsonl with
one row per case and device, command.txt, machine.json). On a CUDA machine see
``benchmarks/device_gpu.sh``.

    python benchmarks/device.py --quick          # small setting: minutes on a CPU
    python benchmarks/device.py                  # N = 100k, whole epoch, 60 s BaB timeouts
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import bounds  # noqa: E402
from bounds.bab.verify import verify  # noqa: E402
from certify.data import fit_input_shape, load_dataset  # noqa: E402
from certify.frontends.torch import from_module  # noqa: E402
from certify.models import load_model  # noqa: E402
from certify.models.zoo import build  # noqa: E402
from certify.report.results_folder import command_line, machine_info, write_results_folder  # noqa: E402
from certify.spec import ball, robustness_matrix, vnnlib  # noqa: E402
from certify.train.loop import TrainConfig, train  # noqa: E402
from smoothing import Smooth  # noqa: E402

BOUND_TOL = 1e-6


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(fn(), seconds), the device's queue drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------ sections
def bound_cases(args) -> list[tuple[str, object, torch.Tensor, torch.Tensor, float]]:
    """(name, float64 network, inputs, labels, eps) of the bounds section."""
    mn = load_model(str(args.shared / "vnncomp" / "mnistfc" / "mnist-net_256x2.onnx")).to(torch.float64)
    X, y = load_dataset("mnist", "test", str(args.shared / "data"))
    X = fit_input_shape(X[:args.bound_inputs], mn.input_shape, "mnist", mn.name).to(torch.float64)
    torch.manual_seed(0)
    cnn = from_module(build(args.cnn, (3, 32, 32), 10), (3, 32, 32)).to(torch.float64)
    Xc, yc = load_dataset("cifar10", "test", str(args.shared / "data"))
    return [("mnist-net_256x2", mn, X, y[:args.bound_inputs], 0.02),
            (f"cifar-{args.cnn}", cnn, Xc[:args.bound_inputs].to(torch.float64), yc[:args.bound_inputs], 2 / 255)]


def run_bounds(args, device: torch.device) -> list[dict]:
    rows = []
    for name, net, X, y, eps in bound_cases(args):
        net_d, X_d, y_d = net.to(device=device), X.to(device), y.to(device)
        C = robustness_matrix(y_d, net.output_size, dtype=torch.float64)
        s = ball(X_d, eps, "inf", (0.0, 1.0))
        for method, opts in (("ibp", {}), ("crown", {}), ("alpha", {"iterations": args.alpha_iterations})):
            def call():
                with torch.no_grad() if method != "alpha" else torch.enable_grad():
                    return bounds.compute_bounds(net_d, s, C, method=method, upper=False, **opts).lower.detach()
            call()
            low, secs = timed(call, device)
            rows.append({"section": "bounds", "case": f"{name} {method}", "device": str(device), "seconds": secs,
                         "inputs": len(y), "certified": int((low.min(1).values > 0).sum()),
                         "lower": low.cpu().tolist()})
    return rows


def bab_instances(args) -> list[tuple[str, str, str]]:
    out = []
    for bench in ("acasxu", "mnistfc"):
        folder = args.shared / "vnncomp" / bench
        with open(folder / "instances.csv") as f:
            rows = [r for r in csv.reader(f) if r]
        step = max(1, len(rows) // args.bab_instances)
        out += [(bench, r[0], r[1]) for r in rows[::step][:args.bab_instances]]
    return out


def run_bab(args, device: torch.device) -> list[dict]:
    rows = []
    for bench, onnx, prop_file in bab_instances(args):
        folder = args.shared / "vnncomp" / bench
        net = load_model(str(folder / onnx)).to(device=device)
        prop = vnnlib.load(str(folder / prop_file), net.input_size, net.output_size)
        res, secs = timed(lambda: verify(net, prop, timeout=args.bab_timeout), device)
        rows.append({"section": "bab", "case": f"{bench} {onnx} {prop_file}", "device": str(device),
                     "seconds": secs, "verdict": res.status, "domains": res.stats.get("domains", 0)})
    return rows


def run_smoothing(args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = build(args.cnn, (3, 32, 32), 10).to(device).eval()
    X, y = load_dataset("cifar10", "test", str(args.shared / "data"))
    smooth = Smooth(model, 10, sigma=0.25, seed=0, batch=args.smooth_batch)
    rows = []
    batch = torch.rand((args.smooth_batch, 3, 32, 32), device=device)
    total = 100 + args.smooth_n
    with torch.inference_mode():
        model(batch)
        _, raw = timed(lambda: [model(batch).argmax(1) for _ in range(-(-total // args.smooth_batch))], device)
    raw_rate = args.smooth_batch * -(-total // args.smooth_batch) / raw
    for k in range(args.smooth_inputs):
        res, secs = timed(lambda: smooth.certify(X[k].to(device), n0=100, n=args.smooth_n, alpha=0.001, seed=k),
                          device)
        rows.append({"section": "smoothing", "case": f"cifar {k}", "device": str(device), "seconds": secs,
                     "prediction": res.prediction, "radius": res.radius, "label": int(y[k]),
                     "raw_samples_per_s": raw_rate, "ratio": (total / secs) / raw_rate})
    return rows


def run_training(args, device: torch.device) -> list[dict]:
    X, y = load_dataset("mnist", "train", str(args.shared / "data"))
    rows = []
    for amp in (False, True) if device.type == "cuda" else (False,):
        torch.manual_seed(0)
        model = build("dm-small", (1, 28, 28), 10)
        cfg = TrainConfig(objective="standard", epochs=1, batch_size=100, amp=amp)
        hist, secs = timed(lambda: train(model, X, y, cfg, max_batches=args.train_batches, device=device), device)
        rows.append({"section": "training", "case": "dm-small standard" + (" amp" if amp else ""),
                     "device": str(device), "seconds": secs, "batches": min(args.train_batches, 600),
                     "loss": hist[-1]["loss"], "acc": hist[-1]["acc"]})
    return rows


SECTIONS = {"bounds": run_bounds, "bab": run_bab, "smoothing": run_smoothing, "training": run_training}


# ------------------------------------------------------------------------------ comparison
def compare(rows: list[dict], devices: list[str]) -> list[dict]:
    """Per case present on two or more devices: what differs between them (see module doc)."""
    by_case: dict[tuple, dict] = {}
    for r in rows:
        by_case.setdefault((r["section"], r["case"]), {})[r["device"]] = r
    out = []
    for (section, case), per in by_case.items():
        if len(per) < 2:
            continue
        a, b = (per[d] for d in devices[:2])
        if section == "bounds":
            diff = max(abs(u - v) for ra, rb in zip(a["lower"], b["lower"]) for u, v in zip(ra, rb))
            out.append({"case": case, "max_abs_diff": diff, "ok": diff <= BOUND_TOL})
        elif section == "bab":
            va, vb = a["verdict"], b["verdict"]
            out.append({"case": case, "verdicts": [va, vb], "ok": {va, vb} != {"sat", "unsat"},
                        "same": va == vb})
        elif section == "smoothing":
            out.append({"case": case, "predictions": [a["prediction"], b["prediction"]],
                        "radius_diff": abs(a["radius"] - b["radius"]), "same": a["prediction"] == b["prediction"]})
    return out


def table(rows: list[dict], devices: list[str]) -> str:
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["section"], r["case"]), {})[r["device"]] = r
    head = f"{'section':<10} {'case':<60}" + "".join(f" {d + ' s':>12}" for d in devices) + "  answer"
    lines = [head]
    for (section, case), per in cases.items():
        secs = "".join(f" {per[d]['seconds']:>12.3f}" if d in per else f" {'-':>12}" for d in devices)
        first = per[next(d for d in devices if d in per)]
        answer = {"bounds": lambda r: f"certified {r['certified']}/{r['inputs']}",
                  "bab": lambda r: r["verdict"],
                  "smoothing": lambda r: f"pred {r['prediction']} radius {r['radius']:.3f} ratio {r['ratio']:.2f}",
                  "training": lambda r: f"loss {r['loss']:.4f} ({r['batches']} batches)"}[section]
        lines.append(f"{section:<10} {case[:60]:<60}{secs}  " + " | ".join(answer(per[d]) for d in devices if d in per))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small setting (see the defaults it changes below)")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--cnn", default="dm-small", help="zoo CNN of the CIFAR cases (default: dm-small)")
    p.add_argument("--bound-inputs", type=int, default=None, help="inputs per bounds case (default 32; quick 8)")
    p.add_argument("--alpha-iterations", type=int, default=None, help="alpha-CROWN steps (default 20; quick 3)")
    p.add_argument("--bab-instances", type=int, default=None, help="instances per benchmark (default 3; quick 1)")
    p.add_argument("--bab-timeout", type=float, default=None, help="seconds per instance (default 60; quick 10)")
    p.add_argument("--smooth-n", type=int, default=None, help="smoothing N (default 100000; quick 10000)")
    p.add_argument("--smooth-inputs", type=int, default=None, help="CIFAR inputs (default 4; quick 2)")
    p.add_argument("--smooth-batch", type=int, default=1000)
    p.add_argument("--train-batches", type=int, default=None, help="batches of the epoch (default 600; quick 20)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "device")
    args = p.parse_args(argv)
    for name, full, quick in (("bound_inputs", 32, 8), ("alpha_iterations", 20, 3), ("bab_instances", 3, 1),
                              ("bab_timeout", 60.0, 10.0),
                              ("smooth_n", 100_000, 10_000), ("smooth_inputs", 4, 2), ("train_batches", 600, 20)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    cuda_note = (torch.cuda.get_device_name(0) if cuda else
                 f"unavailable (torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})")
    devices = args.devices or (["cpu", "cuda"] if cuda else ["cpu"])
    print(f"devices: {', '.join(devices)}; cuda: {cuda_note}", flush=True)
    rows = []
    for section in args.sections:
        for d in devices:
            print(f"[{section} on {d}]", flush=True)
            rows += SECTIONS[section](args, torch.device(d))
    checks = compare(rows, devices)
    print(table(rows, devices))
    failed = [c for c in checks if c.get("ok") is False]
    for c in checks:
        print("check:", c)
    if len(devices) < 2:
        print("only one device ran: nothing compared across devices" + ("" if cuda else " (CUDA is unavailable here)"))
    settings = {k: (os.path.relpath(v, REPO) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k != "out"}
    summary = {"devices": devices, "cuda": cuda_note, "cpu_only": devices == ["cpu"], "settings": settings,
               "table": table(rows, devices).splitlines(), "checks": checks, "checks_failed": len(failed),
               "bound_tol": BOUND_TOL}
    write_results_folder(args.out, summary, rows, [command_line()],
                         machine_info(cuda=cuda_note, cuda_build=torch.version.cuda))
    print(f"results folder: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
