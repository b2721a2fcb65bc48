"""``certify`` entry point: builds the argument parser from the command modules and turns user
mistakes (``CertifyError`` and friends) into one line on stderr and exit status 2.

A command module defines ``register(subparsers)``, which adds its sub-parser(s) and sets
``func`` (called with the parsed args, returns an exit status).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Threads: OpenMP busy-waiting collapses torch on a loaded 2-core machine; be passive by default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMANDS = [
    "certify.cli.info",      # certify info MODEL
    "certify.cli.demo",      # certify demo
    "certify.cli.bounds",    # certify bounds MODEL --eps E --method ibp|crown|alpha
    "certify.cli.convex",    # certify lp|sdp|milp MODEL --eps E
    "certify.cli.smooth",    # certify smooth MODEL, certify curve FILE...
    "certify.cli.vnn",       # certify vnnlib MODEL PROP / certify vnncomp DIR
    "certify.cli.train",     # certify train --model M --objective O --out RUN
]

DESCRIPTION = """\
certify: prove that no perturbation inside a set changes a network's decision.

Engines: bound propagation (IBP, CROWN, alpha-CROWN, branch-and-bound), convex certificates
(LP, SDP, MILP) and randomized smoothing. Models are .onnx files or certify .pt checkpoints;
data sets are 'digits' (built in), 'mnist', 'fashion-mnist', 'cifar10' (from $CERTIFY_DATA or
--data-dir) or a path to idx/npz files.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="certify", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, at most the core count)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from certify.errors import CertifyError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("certify: interrupted (finished results are saved; rerun to resume)", file=sys.stderr)
        return 130
    except (CertifyError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        msg = str(e) if isinstance(e, CertifyError) else f"{e.strerror}: {e.filename}"
        print(f"certify {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
