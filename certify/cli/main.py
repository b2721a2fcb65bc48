"""``certify`` entry point: builds the argument parser from the command modules and turns user
mistakes (``CertifyError``, OS errors on the user's files, bad flags) into one line on stderr and
exit status 2.

A command module defines ``register(subparsers)``, which adds its sub-parser(s) and sets
``func`` (called with the parsed args, returns an exit status). Every command also takes
``--config FILE`` / ``--print-config`` (``certify.cli.config``) and ``--debug`` / ``--threads``
after its name.
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
    "certify.cli.check",     # certify check MODEL
]

DESCRIPTION = """\
certify: prove that no perturbation inside a set changes a network's decision.

Engines: bound propagation (IBP, CROWN, alpha-CROWN, branch-and-bound), convex certificates
(LP, SDP, MILP) and randomized smoothing. Models are .onnx files, certify .pt checkpoints or
train runs, torch.export .pt2 files or a torch class module:Class with --weights; data sets are
'digits' (built in), 'mnist', 'fashion-mnist', 'cifar10' (from $CERTIFY_DATA or --data-dir) or
a path to idx/npz files. Every command takes --config FILE (YAML or TOML: keys are the long
flags) and --print-config.
"""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``certify CMD: error: ... (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    from certify.cli.argtypes import positive_int
    p = Parser(prog="certify", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads, at least 1 (default: torch's choice, at most the core count)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    from certify.cli.config import add_shared_flags
    for cmd in sub.choices.values():
        add_shared_flags(cmd)
    p.commands = sub.choices
    return p


def _command_index(argv: list[str], commands) -> int | None:
    """Position of the command name in ``argv`` (after the global flags), or None."""
    k = 0
    while k < len(argv):
        tok = argv[k]
        if tok == "--threads":
            k += 2
            continue
        if tok.startswith("-"):
            k += 1
            continue
        return k if tok in commands else None
    return None


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag a user types for it (``--eps``; a positional argument's own name)."""
    out = {}
    for a in parser._actions:
        if a.dest != argparse.SUPPRESS and a.dest not in out:
            out[a.dest] = a.option_strings[0] if a.option_strings else a.dest
    return out


def _interrupted(args) -> str:
    out = getattr(args, "out", None)
    if args.command == "vnncomp":
        return f"finished rows are in {out}; rerun the same command to continue"
    if args.command == "train":
        return f"the last finished epoch is checkpointed in {out}; rerun with --resume to continue"
    if out and hasattr(args, "resume"):
        return f"finished records are in {out}; rerun with --resume to continue"
    return "nothing was saved"


def _silence_stdout() -> None:
    """After a closed pipe (``certify info ... | head -1``): send the rest of stdout nowhere, so
    the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (2 for a
    user mistake, bad flags included). ``--help`` exits through ``SystemExit(0)`` as argparse does."""
    from certify.errors import CertifyError

    from certify.cli.config import apply_config, dump_config, effective_config, find_config, relax_required

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    k = _command_index(argv, parser.commands)
    if k is not None:
        cmd, rest = argv[k], argv[k + 1:]
        path = find_config(rest)
        try:
            if path is not None:
                apply_config(parser.commands[cmd], cmd, path)
        except CertifyError as e:
            print(f"certify {cmd}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        if "--print-config" in rest:
            relax_required(parser.commands[cmd])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if not e.code:
            raise
        return int(e.code) if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args._argv = argv
    args._flags = flag_names(parser.commands[args.command])
    args._config = effective_config(parser.commands[args.command], args, args.command)
    if args.print_config:
        print(dump_config(args._config), end="")
        return 0
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()      # a closed pipe shows here, not in the interpreter's last flush
        return status
    except KeyboardInterrupt:
        print(f"certify {args.command}: interrupted ({_interrupted(args)})", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except (CertifyError, OSError) as e:
        if args.debug:
            raise
        if isinstance(e, CertifyError):
            msg = str(e)
        else:
            msg = e.strerror or str(e) or type(e).__name__
            if e.filename is not None:
                msg += f": {e.filename}"
        print(f"certify {args.command}: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
