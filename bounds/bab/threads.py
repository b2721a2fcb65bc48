"""Threads for the searches: torch releases the GIL inside its kernels, so on the 2-core machine
two Python threads of one torch thread each bound 1.4-1.8x the domains of one thread, where one
search on two torch threads gains 1.2x (torch's kernels scale poorly at these batch sizes)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

import torch


@contextmanager
def one_torch_thread():
    """torch's intra-op threads set to 1 inside (restored after), for code that runs threads of
    its own: more torch threads beside them would oversubscribe the cores."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


def run_in_threads(work: Callable[[int], object], n: int) -> list:
    """``work(k)`` for k < n, each on its own thread; returns their results in order. The first
    exception a thread raises is re-raised here, after all threads have ended."""
    out, errors = [None] * n, []

    def run(k):
        try:
            out[k] = work(k)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return out
