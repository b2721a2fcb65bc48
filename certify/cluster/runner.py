"""``run_units``: one function over many work units, in this process or on a Dask cluster, each
result handed to the caller (the only writer of the result file) as its unit finishes.

On a cluster: a unit whose worker dies is run again elsewhere by Dask (up to the scheduler's
``distributed.scheduler.allowed-failures``, 3 by default); a unit whose function raises is tried
once more (``retries``) and then reported to ``on_failure`` with the error, as is one that ran out
of workers to kill or past its ``timeout``. Every wait is bounded: no scheduler, or no worker that
can take the units, for ``LOST_AFTER`` s is a ``CertifyError`` (finished results stay delivered).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from typing import Callable, Sequence, TypeVar

from certify.errors import CertifyError

U = TypeVar("U")
R = TypeVar("R")

START_TOPIC = "certify-task-start"
POLL = 0.5                  # seconds between timeout checks while no result arrives
CHECK = 5.0                 # seconds between checks that the scheduler and a worker are there
LOST_AFTER = 60.0           # seconds without a scheduler or an eligible worker before giving up
RESULT_TIMEOUT = 300.0      # seconds to fetch a finished unit's result from its worker


def task_resources(device: str) -> dict[str, float] | None:
    """The worker resources a unit computed on ``device`` asks for: one ``GPU`` for a CUDA device
    (``cuda``, ``cuda:1``), none on the CPU. Workers offer it with ``dask worker ... --resources GPU=1``."""
    return {"GPU": 1} if str(device).startswith("cuda") else None


def _execute(fn: Callable, unit, threads: int, report_start: bool):
    """What a worker runs for one unit: torch set to ``threads`` intra-op threads, then ``fn(unit)``.
    With ``report_start`` the start is announced to the driver (the unit's timeout runs from it)."""
    import torch
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if report_start:
        from distributed import get_worker
        w = get_worker()
        w.log_event(START_TOPIC, {"key": str(w.get_current_task()), "worker": w.address})
    return fn(unit)


async def _end_process() -> None:
    """Run on a worker by ``Client.run``: end its process at once (its nanny starts a new one)."""
    os._exit(1)


def run_units(units: Sequence[U], fn: Callable[[U], R], client, on_result: Callable[[U, R], None],
              on_failure: Callable[[U, str], None] | None = None, *, threads: int = 1, device: str = "cpu",
              retries: int = 1, timeout: float | Callable[[U], float | None] | None = None,
              name: str = "certify") -> None:
    """Call ``on_result(unit, fn(unit))`` for every unit, in this thread, as units finish.

    ``client`` None: in this process, in order, exceptions propagating (a local run). A
    ``distributed.Client``: every unit is a task (``fn`` and the unit are pickled to the worker;
    ``fn`` should be a module-level function or a ``functools.partial`` of one) run with torch at
    ``threads`` threads, needing the resources of ``device`` (``task_resources``); a unit that fails
    (its function raised ``retries + 1`` times, its workers kept dying, or it ran longer than
    ``timeout`` s, a number or a function of the unit) goes to ``on_failure(unit, message)``
    (without ``on_failure`` the error is raised). Each unit is delivered exactly once."""
    if client is None:
        for u in units:
            on_result(u, fn(u))
        return
    _Run(units, fn, client, on_result, on_failure, threads, device, retries, timeout, name).wait()


class _Run:
    """The driver side of one ``run_units`` call on a cluster."""

    def __init__(self, units, fn, client, on_result, on_failure, threads, device, retries, timeout, name):
        self.client, self.on_result, self.on_failure = client, on_result, on_failure
        self.resources = task_resources(device)
        self.timeout = timeout if callable(timeout) or timeout is None else (lambda u, t=float(timeout): t)
        self.done: queue.Queue = queue.Queue()
        self.started: dict[str, tuple[float, str]] = {}
        self.lock = threading.Lock()
        if self.timeout is not None:
            client.subscribe_topic(START_TOPIC, self._started)
        token = uuid.uuid4().hex[:10]
        self.pending: dict[str, tuple[object, U]] = {}
        keys = [f"{name}-{token}-{i}" for i in range(len(units))]
        futures = client.map(_execute, [fn] * len(units), list(units), threads=threads,
                             report_start=self.timeout is not None, key=keys, retries=retries,
                             resources=self.resources, pure=False) if units else []
        for k, f, u in zip(keys, futures, units):
            self.pending[k] = (f, u)
            f.add_done_callback(self.done.put)

    def _started(self, event) -> None:
        msg = event[1]
        with self.lock:
            self.started[msg["key"]] = (time.monotonic(), msg["worker"])

    def wait(self) -> None:
        last_seen = next_poll = next_check = time.monotonic()
        try:
            while self.pending:
                try:
                    f = self.done.get(timeout=POLL)
                except queue.Empty:
                    f = None
                now = time.monotonic()
                if f is not None:
                    self._finish(f)
                    last_seen = now
                if now >= next_poll:
                    next_poll = now + POLL
                    self._check_timeouts()
                if f is not None or now < next_check:
                    continue
                next_check = now + CHECK
                if self._can_progress():
                    last_seen = now
                elif now - last_seen > LOST_AFTER:
                    raise CertifyError(f"--cluster: {self._why_stuck()} for {LOST_AFTER:g} s, "
                                       f"{len(self.pending)} task(s) unfinished; finished results are kept, rerun "
                                       "with --resume to continue")
        finally:
            if self.pending:
                self.client.cancel([f for f, _ in self.pending.values()])
            if self.timeout is not None:
                self.client.unsubscribe_topic(START_TOPIC)

    def _finish(self, f) -> None:
        entry = self.pending.pop(f.key, None)
        if entry is None:
            return                      # given up on before it finished (timeout)
        _, unit = entry
        if f.status == "finished":
            try:
                result = f.result(timeout=RESULT_TIMEOUT)
            except Exception as e:      # its worker died before the result was fetched and it failed again
                return self._failed(unit, f"{type(e).__name__}: {e}")
            f.release()
            self.on_result(unit, result)
        elif f.status == "error":
            e = f.exception(timeout=RESULT_TIMEOUT)
            self._failed(unit, f"{type(e).__name__}: {' '.join(str(e).split())}")
        else:
            why = "lost the scheduler" if self.client.status != "running" else f"the scheduler dropped task {f.key}"
            raise CertifyError(f"--cluster: {why} ({f.status}); finished results are kept, rerun with --resume to "
                               "continue")

    def _failed(self, unit, message: str) -> None:
        if self.on_failure is None:
            raise CertifyError(f"--cluster: a task failed: {message}")
        self.on_failure(unit, message)

    def _check_timeouts(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        with self.lock:
            started = dict(self.started)
        for key, (t0, worker) in started.items():
            if key not in self.pending:
                continue
            f, unit = self.pending[key]
            limit = self.timeout(unit)
            if limit is None or now - t0 <= limit:
                continue
            del self.pending[key]
            self.client.cancel([f])
            self._restart(worker)       # stops the abandoned computation where a nanny can restart it
            self._failed(unit, f"timed out: still running after {limit:g} s on worker {worker}")

    def _restart(self, worker: str) -> None:
        """End the worker process of an abandoned unit when a nanny will start it again (a
        graceful restart would wait for the computation); a worker without one is left alone."""
        try:
            info = self.client.scheduler_info(n_workers=-1)["workers"].get(worker, {})
            if info.get("nanny"):
                self.client.run(_end_process, workers=[worker], wait=False)
        except OSError:
            pass                        # it is gone already

    def _can_progress(self) -> bool:
        """Is the scheduler reachable, with a worker that can take the pending units?"""
        if self.client.status != "running":
            return False
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        except (OSError, TimeoutError):
            return False
        if self.resources is None:
            return bool(workers)
        return any(all(w.get("resources", {}).get(r, 0) >= v for r, v in self.resources.items()) for w in workers)

    def _why_stuck(self) -> str:
        if self.client.status != "running":
            return "lost the scheduler"
        if self.resources:
            return f"no worker offers the resources {self.resources}"
        return "no workers"
