"""Randomized-smoothing throughput: ``Smooth.certify`` vs the network's raw batched forward pass and
vs a re-implementation of Cohen et al.'s ``core.py`` sampling loop, all measured in the same run.

For each network (MLP 784-256-256-10, the small CNN ``dm-small`` and LeNet conv20-conv50-fc500,
random weights, 1x28x28 inputs) it reports seconds per certified input (n0 + N samples) and
``ratio = certify throughput / raw throughput`` where raw = the same IR network's forward pass
alone on a batch of the same size, no noise, same thread setting; throughputs count all n0 + N
forward samples. Methods:

* ``ours``: ``Smooth.certify`` with default settings (fused in-place noise, bincount; Gaussian
  noise pushed through a first Linear layer when that is exact and cheaper: the MLP);
* ``ours-module``: ``Smooth.certify`` given the torch module instead of the IR network (traced to
  the IR for the pushforward when it applies, else the module's own forward);
* ``ours-nopush``: the same without the first-layer pushforward (MLP only);
* ``ours-serial``: no prefetch thread (noise filled between forward passes) and no pushforward;
* ``cohen``: Cohen's loop re-implemented: per batch ``x.repeat``, ``randn_like * sigma``, add,
  forward, argmax, ``np.bincount`` on a host copy.

Threads: ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads (busy-waiting OpenMP workers make
a loaded 2-core machine collapse) and torch uses ``--threads`` intra-op threads (default 1, the
setting of docs/benchmarks.md's numbers; with 1 thread on a multi-core machine the
default ``prefetch="auto"`` fills noise in a helper thread). Methods are interleaved and repeated;
ratios use the best (minimum) time of each method, the robust estimate on a shared machine
(medians are in the JSON too). ``cpu`` columns: the same ratio in process CPU time (all threads),
which load on a shared machine disturbs much less; it charges the prefetch thread's work, so it
shows the cost of the noise rather than how well it is hidden.

    python benchmarks/smoothing.py --quick            # N = 10k, seconds
    python benchmarks/smoothing.py                    # N = 100k
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from certify.frontends.torch import from_module  # noqa: E402
from certify.models.zoo import build  # noqa: E402
from certify.report.results_folder import command_line, machine_info, write_results_folder  # noqa: E402
from smoothing import Smooth  # noqa: E402

NETWORKS = {"mlp": "MLP 784-256-256-10", "dm-small": "small CNN (dm-small)", "lenet": "LeNet conv20-conv50-fc500"}


def cohen_counts(model, x, num, batch, sigma, K):
    """Cohen et al.'s ``Smooth._sample_noise`` loop (our re-implementation, CPU)."""
    counts = np.zeros(K, dtype=int)
    with torch.no_grad():
        remaining = num
        while remaining > 0:
            b = min(batch, remaining)
            remaining -= b
            xb = x.unsqueeze(0).repeat((b, 1, 1, 1))
            noise = torch.randn_like(xb) * sigma
            pred = model(xb + noise).argmax(1)
            counts += np.bincount(pred.numpy(), minlength=K)
    return counts


def cohen_certify(model, x, n0, n, batch, sigma, K):
    sel = cohen_counts(model, x, n0, batch, sigma, K)
    est = cohen_counts(model, x, n, batch, sigma, K)
    return int(sel.argmax()), est


def raw_forward(model, xb, total, batch):
    with torch.inference_mode():
        left = total
        while left > 0:
            b = min(batch, left)
            left -= b
            model(xb[:b]).argmax(1)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def bench_network(name, n, n0, batch, sigma, repeats):
    torch.manual_seed(0)
    module = build(name, (1, 28, 28), 10).eval()
    net = from_module(module, (1, 28, 28))
    x = torch.rand(1, 28, 28)
    xb = (x + sigma * torch.randn(batch, 1, 28, 28)).contiguous()
    total = n0 + n
    ours = Smooth(net, 10, sigma=sigma, seed=0, batch=batch)
    mod = Smooth(module, 10, sigma=sigma, seed=0, batch=batch)
    nopush = Smooth(net, 10, sigma=sigma, seed=0, batch=batch, pushforward=False)
    serial = Smooth(net, 10, sigma=sigma, seed=0, batch=batch, pushforward=False, prefetch=False)
    methods = {
        "raw": lambda: raw_forward(net, xb, total, batch),
        "ours": lambda: ours.certify(x, n0=n0, n=n, batch=batch),
        "ours-module": lambda: mod.certify(x, n0=n0, n=n, batch=batch),
        "ours-nopush": lambda: nopush.certify(x, n0=n0, n=n, batch=batch),
        "ours-serial": lambda: serial.certify(x, n0=n0, n=n, batch=batch),
        "cohen": lambda: cohen_certify(net, x, n0, n, batch, sigma, 10),
    }
    if not ours.counter((1, 28, 28)).uses_pushforward:
        methods.pop("ours-nopush")
    for f in methods.values():                       # warm-up (allocations, kernels)
        f() if f is not methods["ours"] else ours.certify(x, n0=n0, n=min(n, 5 * batch), batch=batch)
    times = {k: [] for k in methods}
    cpu = {k: [] for k in methods}
    for _ in range(repeats):
        for k, f in methods.items():
            w, c = timed(f)
            times[k].append(w)
            cpu[k].append(c)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    cbest = {k: min(v) for k, v in cpu.items()}
    row = {"network": name, "description": NETWORKS[name], "samples": total,
           "raw_samples_per_s": total / best["raw"],
           "pushforward": ours.counter((1, 28, 28)).uses_pushforward,
           "module_pushforward": mod.counter((1, 28, 28)).uses_pushforward,
           "prefetch": ours.counter((1, 28, 28)).uses_prefetch()}
    for k in methods:
        if k == "raw":
            continue
        row[f"{k}_s_per_input"] = best[k]
        row[f"{k}_ratio"] = best["raw"] / best[k]
        row[f"{k}_ratio_median"] = med["raw"] / med[k]
        row[f"{k}_ratio_cpu"] = cbest["raw"] / cbest[k]
    row["times"] = times
    row["cpu_times"] = cpu
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 10000, 5 repeats (about a minute)")
    p.add_argument("--n", type=int, default=None, help="estimation samples N (default 100000; quick 10000)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; quick 5)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "smoothing"), help="results folder")
    args = p.parse_args(argv)
    n = args.n or (10_000 if args.quick else 100_000)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 3)
    rows = [bench_network(k, n, args.n0, args.batch, args.sigma, repeats) for k in args.networks]

    print(f"randomized smoothing certify, N={n}, n0={args.n0}, batch={args.batch}, threads={args.threads}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; ratio = throughput / raw forward throughput")
    print("wall-clock ratios (cpu-time ratios in brackets)")
    print(f"{'network':28s} {'raw samp/s':>10s} {'ours s/in':>9s} {'ours':>12s} {'module':>12s} {'nopush':>12s} "
          f"{'serial':>12s} {'cohen s/in':>10s} {'cohen':>12s}")

    def pair(r, k):
        return f"{r[k + '_ratio']:5.2f} [{r[k + '_ratio_cpu']:4.2f}]" if k + "_ratio" in r else f"{'-':>12s}"

    for r in rows:
        print(f"{r['description']:28s} {r['raw_samples_per_s']:10.0f} {r['ours_s_per_input']:9.3f} {pair(r, 'ours')} "
              f"{pair(r, 'ours-module')} {pair(r, 'ours-nopush')} {pair(r, 'ours-serial')} "
              f"{r['cohen_s_per_input']:10.3f} {pair(r, 'cohen')}")
    summary = {"n": n, "n0": args.n0, "repeats": repeats, "batch": args.batch, "sigma": args.sigma,
               "networks": {r["network"]: {k: v for k, v in r.items() if k not in ("times", "cpu_times")}
                            for r in rows}}
    write_results_folder(Path(args.out), summary, rows, [command_line()], machine_info(threads=args.threads))
    print(f"wrote {args.out}/summary.json, rows.jsonl, command.txt, machine.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
