"""``--cluster ADDRESS``: ``local:N`` starts N worker processes on this machine (bound to
127.0.0.1), ``tcp://HOST:PORT`` joins a running Dask scheduler. Every wait is bounded."""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Iterator

from certify.errors import CertifyError

CONNECT_TIMEOUT = 30.0      # seconds to reach a scheduler
WORKER_WAIT = 60.0          # seconds a scheduler may take to have its first worker
CLOSE_TIMEOUT = 30.0        # seconds to shut a local cluster down
USAGE = "--cluster expects local:N (N worker processes on this machine) or tcp://HOST:PORT (a Dask scheduler)"


def parse_address(address: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, ``("tcp", address)`` for ``tcp://HOST:PORT``; anything
    else is a ``CertifyError`` naming the expected forms."""
    m = re.fullmatch(r"local:(\d+)", address.strip())
    if m:
        n = int(m.group(1))
        if n < 1:
            raise CertifyError(f"{USAGE}; got {address!r} (N must be at least 1)")
        return "local", n
    m = re.fullmatch(r"tcp://([^\s:/]+|\[[0-9a-fA-F:]+\]):(\d+)", address.strip())
    if m and 0 < int(m.group(2)) < 65536:
        return "tcp", address.strip()
    raise CertifyError(f"{USAGE}; got {address!r}")


def _distributed():
    try:
        import distributed
    except ImportError:
        raise CertifyError("--cluster needs Dask: pip install 'dask[distributed]'") from None
    return distributed


@contextmanager
def connect(address: str | None, timeout: float = CONNECT_TIMEOUT) -> Iterator[object]:
    """None for ``address`` None (run here); else a ``distributed.Client`` for ``address`` (see
    ``parse_address``), closed on exit (a local
    cluster is shut down with it). ``local:N``: N processes of one thread each, on 127.0.0.1, no
    dashboard (the scheduler's HTTP endpoints on a free port of 127.0.0.1), ``OMP_WAIT_POLICY=PASSIVE``, the scheduler handing a worker no more tasks than it has
    threads (so a task's clock starts when it runs). A scheduler that does not answer within
    ``timeout`` s, or has no worker after ``WORKER_WAIT`` s, is a ``CertifyError``."""
    if address is None:
        yield None
        return
    kind, arg = parse_address(address)
    distributed = _distributed()
    import dask
    cluster = None
    if kind == "local":
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = distributed.LocalCluster(n_workers=int(arg), threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address=None,
                                               scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                               silence_logs=logging.CRITICAL,
                                               env={"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
        try:
            client = distributed.Client(cluster, timeout=timeout)
        except BaseException:
            cluster.close(timeout=CLOSE_TIMEOUT)
            raise
    else:
        try:
            client = distributed.Client(arg, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise CertifyError(f"--cluster {arg}: no Dask scheduler answered within {timeout:g} s "
                               f"({' '.join(str(e).split())[:200]})") from None
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT)
        except TimeoutError:
            client.close()
            raise CertifyError(f"--cluster {arg}: the scheduler has no workers after {WORKER_WAIT:g} s; start "
                               f"some with 'dask worker {arg}'") from None
    try:
        yield client
    finally:
        quiet = logging.getLogger("distributed.client")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)    # closing a client whose scheduler is gone logs its reconnect loop
        try:
            client.close(timeout=CLOSE_TIMEOUT)
        finally:
            quiet.setLevel(level)
            if cluster is not None:
                cluster.close(timeout=CLOSE_TIMEOUT)
