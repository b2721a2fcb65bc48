"""Helpers shared by the commands: model and data loading, output-file flags, summaries."""
from __future__ import annotations

import argparse
import sys

import torch

from certify.cli.argtypes import finite_float, nonneg_int, positive_float, positive_int
from certify.errors import CertifyError
from certify.models import load_model, model_file  # noqa: F401  (the commands import them from here)

MODEL_HELP = ("a .onnx / .onnx.gz file, a certify .pt checkpoint or train run folder, a torch.export .pt2, "
              "a torch class module:Class (with --weights, --model-args), or a bundled model name "
              "(digits-mlp, digits-cnn)")
COUNT_HINT = "use --count for the number of inputs"


def add_model_arg(p: argparse.ArgumentParser, help: str = MODEL_HELP) -> None:
    """MODEL and the flags of a torch class model (``certify.models.load_model``)."""
    from certify.cli.argtypes import positive_int
    p.add_argument("model", metavar="MODEL", help=help)
    g = p.add_argument_group("torch class model (MODEL = module:Class, importable from the current directory)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="state_dict file of the class (torch.save(model.state_dict(), FILE); loaded with "
                        "torch.load(weights_only=True))")
    g.add_argument("--model-args", default=None, metavar="JSON",
                   help="constructor arguments: a JSON object of keyword arguments (or a list of positional ones)")
    g.add_argument("--input-shape", type=positive_int, nargs="+", default=None, metavar="D",
                   help="per-sample input shape, e.g. 1 28 28 (default: the data set's)")


def model_from(args):
    """The IR network of the model flags of ``add_model_arg`` (a class takes the data set's
    sample shape unless --input-shape is given)."""
    from certify.models import is_class_spec
    shape = args.input_shape
    if shape is None and is_class_spec(args.model) and getattr(args, "data", None):
        shape = data_shape(args.data, getattr(args, "data_dir", None))
    return load_model(args.model, args.weights, args.model_args, shape)


def data_shape(name: str, data_dir: str | None) -> tuple[int, ...]:
    """The per-sample image shape of a data set (a file is read for it)."""
    from certify.data import DATASETS, load_dataset
    key = name.lower().replace("_", "-")
    if key in DATASETS:
        return tuple(DATASETS[key][1])
    return tuple(load_dataset(name, "test", data_dir)[0].shape[1:])


def add_data_args(p: argparse.ArgumentParser, default_n: int = 100, count_flags: tuple[str, ...] = ("--count", "--max"),
                  dest: str = "n", renamed_hint: str = COUNT_HINT) -> None:
    """The data flags; the number of inputs goes to ``args.<dest>`` under ``count_flags``;
    ``--n`` is refused with ``renamed_hint``."""
    from certify.cli.config import add_renamed
    add_renamed(p, "--n", renamed_hint)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits",
                   help="data set: digits (built in), mnist, fashion-mnist, cifar10, or a path to idx/npz files "
                        "(default: digits)")
    g.add_argument("--data-dir", default=None,
                   help="folder holding mnist/, fashion_mnist/, cifar10/ (default: $CERTIFY_DATA)")
    g.add_argument("--split", default="test", choices=["train", "test"], help="which split (default: test)")
    g.add_argument(*count_flags, dest=dest, type=positive_int, default=default_n, metavar="N",
                   help=f"number of inputs to evaluate (default: {default_n})")
    g.add_argument("--skip", type=positive_int, default=1, help="take every SKIP-th input (default: 1)")
    g.add_argument("--start", type=nonneg_int, default=0, help="index of the first input (default: 0)")


def load_data(args) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(indices into the split, images (N, C, H, W), labels (N,)) as selected by the data flags."""
    from certify.data import select
    for dest, flag in (("n", "--count"), ("skip", "--skip")):
        if getattr(args, dest) < 1:
            raise CertifyError(f"{flag} must be at least 1, got {getattr(args, dest)}")
    if args.start < 0:
        raise CertifyError(f"--start must be >= 0, got {args.start}")
    return select(args.data, args.split, args.data_dir, args.start, args.skip, args.n)


def check_labels(net, y: torch.Tensor, data_name: str) -> None:
    """Refuse labels the network has no logit for."""
    if len(y) and int(y.max()) >= net.output_size:
        raise CertifyError(f"data {data_name} has label {int(y.max())} but model {net.name} has {net.output_size} "
                           f"outputs (classes 0 to {net.output_size - 1})")


def check_input_shape(net, x: torch.Tensor, data_name: str) -> torch.Tensor:
    """Reshape data (N, C, H, W) to the network's input shape when the sizes agree, else a clear error."""
    from certify.data import fit_input_shape
    return fit_input_shape(x, net.input_shape, data_name, net.name)


def add_domain_args(g) -> None:
    """--domain LO HI / --no-domain: the valid input range a perturbation ball is clipped to."""
    g.add_argument("--domain", type=finite_float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="valid input range the ball is clipped to (default: the data set's, [0, 1] for images)")
    g.add_argument("--no-domain", action="store_true", help="do not clip the ball to a domain")


def domain_from(args) -> tuple[float, float] | None:
    """The (lo, hi) domain the flags of ``add_domain_args`` ask for: --domain, else the data
    set's (``certify.data.domain``); None with --no-domain (no clipping)."""
    from certify.data import domain
    if args.no_domain:
        if args.domain is not None:
            raise CertifyError("--domain and --no-domain exclude each other")
        return None
    if args.domain is None:
        return domain(args.data)
    if args.domain[0] >= args.domain[1]:
        raise CertifyError(f"--domain needs LO < HI, got {args.domain}")
    return tuple(args.domain)


def add_radius_args(g, tol: float, max_radius: float | None, max_radius_help: str) -> None:
    """``--radius`` (bisection on eps instead of testing --eps), its ``--tol`` and ``--max-radius``."""
    g.add_argument("--radius", action="store_true",
                   help="find each input's largest certified eps by bisection instead of testing --eps")
    g.add_argument("--tol", type=positive_float, default=tol, help=f"bisection tolerance of --radius (default: {tol:g})")
    g.add_argument("--max-radius", type=positive_float, default=max_radius,
                   help=f"upper end of the --radius search (default: {max_radius_help})")


def add_output_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default=default, help="JSON-lines result file, one record per input"
                   + (f" (default: {default})" if default else ""))
    g.add_argument("--resume", action="store_true", help="continue an interrupted run: keep the records in --out "
                   "and skip their inputs")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


# Flags that choose which inputs run or where results go, never what a record says: a resumed run
# may change them. Every other flag is part of a result file's provenance config.
NOT_RESULT_FLAGS = {"out", "resume", "overwrite", "quiet", "n", "max_inputs", "start", "skip", "data_dir", "threads",
                    "debug", "command", "func", "model", "data", "split", "format", "convex_method", "config",
                    "print_config"}


def run_provenance(args, engine: str, method: str | None, norm: str | None, **params) -> dict:
    """The provenance header (``certify.report.provenance``) of this command line's result file."""
    from certify.report import provenance
    flags = getattr(args, "_flags", {})
    config = {flags.get(k, "--" + k.replace("_", "-")): v for k, v in sorted(vars(args).items())
              if not k.startswith("_") and k not in NOT_RESULT_FLAGS and not callable(v)}
    model = getattr(args, "model", None)
    path = model_file(model, getattr(args, "weights", None)) if model else None
    sha = provenance.file_sha256(str(path)) if path else None
    return provenance.make(args.command, getattr(args, "_argv", []), model, sha, getattr(args, "data", None),
                           getattr(args, "split", None), engine, method, norm, config, **params)


def open_results(args, engine: str, method: str | None, norm: str | None, **params):
    """The ``ResultWriter`` of ``--out`` (None without ``--out``), its provenance header from
    ``run_provenance``; ``--resume`` refuses a file another configuration wrote."""
    from certify.report.records import ResultWriter
    if not args.out:
        if args.resume:
            raise CertifyError("--resume needs --out (the result file to continue)")
        return None
    if args.resume and args.overwrite:
        raise CertifyError("--resume and --overwrite exclude each other")
    w = ResultWriter(args.out, resume=args.resume, overwrite=args.overwrite,
                     provenance=run_provenance(args, engine, method, norm, **params))
    if w.unchecked:
        print(f"certify {args.command}: note: {args.out} has no provenance header; its records are kept, but "
              "whether they come from the same configuration cannot be checked", file=sys.stderr)
    return w


def summary_lines(records: list, method: str, what: str, elapsed: float, n_run: int, radius: bool) -> list[str]:
    """The closing summary of a certificate run: clean / certified accuracy, counts of the other
    verdicts (falsified, unknown, ...), time per input, and with ``radius`` the average certified
    radius (0 for misclassified inputs) and the median over correctly classified ones."""
    n = max(len(records), 1)
    correct = sum(r.correct for r in records)
    certified = sum(r.certified for r in records)
    others: dict[str, int] = {}
    for r in records:
        if r.verdict not in ("certified", "not_certified", "misclassified"):
            others[r.verdict] = others.get(r.verdict, 0) + 1
    lines = [f"{method} on {len(records)} inputs, {what}: clean accuracy {correct / n:.4f}, "
             f"certified accuracy {certified / n:.4f}" + "".join(f", {k} {v}" for k, v in sorted(others.items()))
             + f", {elapsed:.2f} s ({elapsed / max(n_run, 1):.4f} s/input)"]
    if radius and records:
        radii = sorted(r.radius or 0.0 for r in records if r.correct)
        mean = sum(r.radius or 0.0 for r in records if r.correct) / n
        med = radii[len(radii) // 2] if radii else 0.0
        lines.append(f"average certified radius {mean:.5f} (0 for misclassified), median over correct {med:.5f}")
    return lines
