"""One result record for every engine, and a JSON-lines writer that resumes interrupted runs.

A record says, for one input: its id and label, the prediction, which engine and method ran,
the perturbation set (norm and eps), the certified radius or the verdict, the time taken, and
the engine's own evidence (bound values; pA lower bound and counts; solver status).

Verdicts: ``certified`` (the property is proved at ``eps``), ``not_certified`` (the method
could not prove it; says nothing about whether it holds), ``falsified`` (a counterexample was
found and checked), ``abstain`` (smoothing), ``misclassified`` (clean prediction wrong, nothing
to certify), ``unknown`` (a solver or check failed: never counted as certified).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from certify.errors import CertifyError

VERDICTS = ("certified", "not_certified", "falsified", "abstain", "misclassified", "unknown")


@dataclass
class Record:
    """One input's result. ``radius`` is the certified radius (0.0 when nothing is certified,
    None when the run used a fixed eps and no radius search); ``predict`` is -1 on abstain."""

    idx: int
    label: int | None
    predict: int
    engine: str
    method: str
    verdict: str
    norm: str | None = None
    eps: float | None = None
    radius: float | None = None
    seconds: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; expected one of {VERDICTS}")

    @property
    def correct(self) -> bool:
        return self.label is not None and self.predict == self.label

    @property
    def certified(self) -> bool:
        return self.verdict == "certified" and self.correct

    def to_json(self) -> str:
        d = asdict(self)
        d["correct"] = self.correct
        return json.dumps(d, default=_jsonable, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        d = dict(d)
        d.pop("correct", None)
        return cls(**d)


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def read_records(path: str) -> list[Record]:
    """All records of a JSON-lines result file. A torn last line (interrupted write) is ignored."""
    out = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CertifyError(f"cannot read result file {path}: {e.strerror}") from None
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(Record.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            if k == len(lines) - 1:
                break  # torn last line of an interrupted run
            raise CertifyError(f"{path}:{k + 1}: not a result record ({e})") from None
    return out


class ResultWriter:
    """Appends records to a JSON-lines file, flushing each one, so an interrupted run resumes.

    ``resume=True`` keeps the records already in ``path`` (``done`` holds their ids) and
    appends; ``resume=False`` refuses to touch an existing non-empty file unless
    ``overwrite=True``: nothing a user wrote is lost by accident.
    """

    def __init__(self, path: str, resume: bool = True, overwrite: bool = False):
        self.path = path
        self.done: dict[int, Record] = {}
        exists = os.path.exists(path) and os.path.getsize(path) > 0
        if exists and not resume and not overwrite:
            raise CertifyError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
        if exists and resume:
            for r in read_records(path):
                self.done[r.idx] = r
            self._truncate_torn_tail()
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
            self._f = open(path, "a" if resume else "w")
        except OSError as e:
            raise CertifyError(f"cannot write result file {path}: {e.strerror}") from None

    def _truncate_torn_tail(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                f.truncate(cut)

    def write(self, record: Record) -> None:
        self._f.write(record.to_json() + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[record.idx] = record

    def records(self) -> Iterator[Record]:
        return iter(self.done.values())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
