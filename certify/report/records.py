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

import fcntl
import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from certify.errors import CertifyError
from certify.report.provenance import differences, is_header

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
        return json.dumps(_jsonable(d), allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        d.pop("correct", None)
        for k in ("eps", "radius"):
            if isinstance(d.get(k), str):
                d[k] = float(d[k])        # non-finite values are written as strings
        r = cls(**d)
        if not isinstance(r.idx, int) or isinstance(r.idx, bool):
            raise ValueError(f"idx must be an integer, got {r.idx!r}")
        return r


def _jsonable(v):
    """``v`` with tensors/arrays as lists and non-finite floats as the strings 'inf' / '-inf' /
    'nan' (JSON has no such numbers)."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CertifyError(f"cannot read result file {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CertifyError(f"{path}: not a result file (binary data, not JSON lines)") from None


def read_result_file(path: str) -> tuple[dict | None, list[Record]]:
    """(the provenance header or None for files without one, the records) of a JSON-lines result
    file. A torn last line (interrupted write) is ignored."""
    text = _read_text(path)
    lines = text.splitlines()
    header, out = None, []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if is_header(obj):
                if out or header is not None:
                    raise ValueError("a provenance header after the first line")
                header = obj["provenance"]
                continue
            out.append(Record.from_dict(obj))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            if k == len(lines) - 1 and not text.endswith("\n"):
                break  # torn last line of an interrupted run (every complete line ends with a newline)
            raise CertifyError(f"{path}:{k + 1}: not a result record ({e})") from None
    return header, out


def read_records(path: str) -> list[Record]:
    """All records of a JSON-lines result file (its provenance header skipped)."""
    return read_result_file(path)[1]


def read_provenance(path: str) -> dict | None:
    """The provenance header of a result file (None when it has none)."""
    return read_result_file(path)[0]


class ResultWriter:
    """Appends records to a JSON-lines file, one ``write`` call per line, synced, so an
    interrupted run resumes; holds an exclusive lock (``flock``) on the file while open, so a
    second writer is refused instead of interleaving.

    ``resume=True`` keeps the records already in ``path`` (``done`` holds their ids) and
    appends; ``resume=False`` refuses to touch an existing non-empty file unless
    ``overwrite=True``: nothing a user wrote is lost by accident. ``provenance`` (see
    ``certify.report.provenance``) is written as the first line of a new file; resuming a file
    whose header differs raises ``CertifyError`` naming the differences. ``unchecked`` is True
    when a resumed file has records but no header (nothing to compare with).
    """

    def __init__(self, path: str, resume: bool = True, overwrite: bool = False, provenance: dict | None = None):
        self.path = path
        self.done: dict[int, Record] = {}
        self.provenance = provenance
        self.unchecked = False
        self._fd = None
        if os.path.isdir(path):
            raise CertifyError(f"result file {path} is a directory; give a file name, e.g. {os.path.join(path, 'results.jsonl')}")
        if _nonempty(path) and not resume and not overwrite:
            raise CertifyError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise CertifyError(f"cannot write result file {path}: {e.strerror}") from None
        try:
            lock_file(fd, path)
            self._open_locked(fd, resume, overwrite)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _open_locked(self, fd: int, resume: bool, overwrite: bool) -> None:
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        self._regular = regular
        if regular and st.st_size > 0:
            if overwrite and not resume:
                os.ftruncate(fd, 0)
            elif not resume:        # it appeared since the check above
                raise CertifyError(f"{self.path} exists; pass --resume to continue it or --overwrite to replace it")
            else:
                header, records = read_result_file(self.path)
                if header is not None and self.provenance is not None:
                    diff = differences(header, self.provenance, self.path)
                    if diff:
                        raise CertifyError(f"--resume: {self.path} was written by another configuration: "
                                           + "; ".join(diff) + "; rerun with its settings, or use --overwrite or "
                                           "another --out")
                self.unchecked = header is None and bool(records)
                for r in records:
                    self.done[r.idx] = r
                self._truncate_torn_tail(fd)
        if self.provenance is not None and (not regular or os.fstat(fd).st_size == 0):
            self._write_line(fd, json.dumps({"provenance": _jsonable(self.provenance)}, allow_nan=False))

    def _truncate_torn_tail(self, fd: int) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            os.ftruncate(fd, data.rfind(b"\n") + 1)

    def _write_line(self, fd: int, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(fd, data):]
            if self._regular:
                os.fsync(fd)
        except OSError as e:
            raise CertifyError(f"cannot write result file {self.path}: {e.strerror}") from None

    def write(self, record: Record) -> None:
        if self._fd is None:
            raise CertifyError(f"result file {self.path} is closed")
        self._write_line(self._fd, record.to_json())
        self.done[record.idx] = record

    def records(self) -> Iterator[Record]:
        return iter(self.done.values())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)      # releases the lock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _nonempty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def lock_file(fd: int, path: str) -> None:
    """An exclusive, non-blocking lock on the open file ``fd`` (released when it is closed)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CertifyError(f"{path} is being written by another certify run (it holds the file's lock); wait for "
                           "that run to end or use another --out") from None
    except OSError as e:
        raise CertifyError(f"cannot lock result file {path}: {e.strerror}") from None
