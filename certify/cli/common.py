"""Helpers shared by the commands: model and data loading, output-file flags, summaries."""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

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
                    "print_config", "cluster", "task_timeout"}


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


CLUSTER_HELP = ("run the work on a Dask cluster: local:N starts N worker processes on this machine, "
                "tcp://HOST:PORT joins a running scheduler (workers must see the model and data files at the same "
                "paths); records are the same as without it, and only this process writes --out (default: run here)")


def add_cluster_args(p: argparse.ArgumentParser, task_timeout: bool = True) -> None:
    """``--cluster ADDRESS`` and (with ``task_timeout``) ``--task-timeout SECONDS``."""
    from certify.cli.argtypes import positive_float
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", default=None, metavar="ADDRESS", help=CLUSTER_HELP)
    if task_timeout:
        g.add_argument("--task-timeout", type=positive_float, default=None, metavar="SECONDS",
                       help="with --cluster: a task (a chunk of inputs) still running after SECONDS is given up and "
                            "its inputs are recorded unknown (default: no limit)")


def check_cluster_args(args) -> None:
    """Refuse a malformed ``--cluster`` (before anything is loaded) and cluster flags without it."""
    if getattr(args, "cluster", None) is not None:
        from certify.cluster import parse_address
        parse_address(args.cluster)
    elif getattr(args, "task_timeout", None) is not None:
        raise CertifyError("--task-timeout applies to --cluster runs: give --cluster ADDRESS too")


@contextmanager
def cluster_client(args) -> Iterator[object]:
    """The Dask client of ``--cluster`` (None without it), closed on exit."""
    from certify.cluster import connect
    with connect(getattr(args, "cluster", None)) as client:
        yield client


def cluster_job(args) -> argparse.Namespace:
    """What the workers get of a command line: ``args`` with the model, data and data folder as
    absolute paths, the model file's sha256 and a token naming this run."""
    from certify.data import DATASETS
    from certify.models import BUNDLED
    from certify.report.provenance import file_sha256
    job = argparse.Namespace(**vars(args))
    named = {"model": lambda v: v in BUNDLED, "data": lambda v: v.lower().replace("_", "-") in DATASETS,
             "data_dir": lambda v: False}          # the names that are not paths, as the loaders read them
    for k, is_name in named.items():
        v = getattr(job, k, None)
        if isinstance(v, str) and not is_name(v) and os.path.exists(v):
            setattr(job, k, os.path.abspath(v))
    if hasattr(job, "data_dir") and job.data_dir is None:
        job.data_dir = os.environ.get("CERTIFY_DATA")
    model = getattr(job, "model", None)
    job._model_sha256 = file_sha256(str(model_file(model))) if model else None
    job._token = uuid.uuid4().hex
    return job


def _worker_setup(setup: Callable, job):
    if job._model_sha256 is not None:
        from certify.report.provenance import file_sha256
        have = file_sha256(str(model_file(job.model)))
        if have != job._model_sha256:
            raise CertifyError(f"model {job.model} on this worker is not the driver's file (sha256 {have[:12]} != "
                               f"{job._model_sha256[:12]})")
    return setup(job)


def remote_chunk(setup: Callable, chunk_fn: Callable, job, chunk: list[int]) -> list:
    """A task on a worker: ``chunk_fn(setup(job), chunk)``, ``setup(job)`` built once per worker
    process and run (the model file checked against the driver's sha256 first)."""
    from certify.cluster import cached
    return chunk_fn(cached(job._token, lambda: _worker_setup(setup, job)), chunk)


def failed_records(idx: list[int], y, chunk: list[int], message: str, engine: str, method: str, norm: str | None,
                   eps: float | None, radius: bool) -> list:
    """``unknown`` records of the inputs ``chunk`` (positions in ``idx`` / labels ``y``) of a task
    that failed: no prediction (-1), nothing certified, the error as evidence."""
    from certify.report.records import Record
    return [Record(idx=int(idx[k]), label=int(y[k]), predict=-1, engine=engine, method=method, verdict="unknown",
                   norm=norm, eps=eps, radius=0.0 if radius else None, seconds=0.0, evidence={"error": message})
            for k in chunk]


def run_chunks(args, client, ctx, setup: Callable, chunk_fn: Callable, chunks: list[list[int]], writer,
               show: Callable, failed: Callable[[list[int], str], list], desc: str) -> list:
    """Every chunk's records, ``chunk_fn(ctx, chunk)``, computed here (``client`` None) or on the
    cluster (``setup(job)`` rebuilds ``ctx`` on each worker), in the order they finish: each is
    written to ``writer`` once, passed to ``show`` and returned. A chunk whose task failed gets
    ``failed(chunk, message)`` instead (``unknown`` records)."""
    from certify.cluster import run_units
    from certify.report.progress import progress_bar
    out = []
    bar = progress_bar(sum(map(len, chunks)), desc)

    def on_records(chunk, records):
        for rec in records:
            if writer is not None:
                if rec.idx in writer.done:
                    continue
                writer.write(rec)
            out.append(rec)
            show(rec)
        bar.update(len(chunk))

    def on_failure(chunk, message):
        print(f"certify {args.command}: the task of input(s) {', '.join(str(ctx.idx[k]) for k in chunk)} failed "
              f"({message}); recorded as unknown", file=sys.stderr)
        on_records(chunk, failed(chunk, message))

    fn = partial(chunk_fn, ctx) if client is None else partial(remote_chunk, setup, chunk_fn, cluster_job(args))
    try:
        run_units(chunks, fn, client, on_records, on_failure, threads=getattr(args, "threads", None) or 1,
                  device=getattr(args, "device", "cpu"), timeout=getattr(args, "task_timeout", None),
                  name=f"certify-{args.command}")
    finally:
        bar.close()
    return out
