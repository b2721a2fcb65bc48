"""Threads for the searches: running work on threads, torch limited to one intra-op thread
meanwhile, and merging the threads' stats. torch releases the GIL inside its kernels, and at
these batch sizes searches on threads of one torch thread each use the cores better than one
search on several torch threads."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

import torch


@contextmanager
def one_torch_thread():
    """torch's intra-op threads set to 1 inside (restored after), for code that runs threads of
    its own: more torch threads beside them would oversubscribe the cores. Also a decorator
    (``@one_torch_thread()``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
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


# per-search values that describe one search rather than add up over threads
_FIRST, _LAST = ("root_lower",), ("open_domains", "worst_open_lower", "split_batch")


def merge_stats(stats: dict, parts: list[dict]) -> None:
    """Add the threads' own stats dicts ``parts`` into ``stats``: counts and seconds add up (so
    seconds are summed over the threads), ``root_lower`` keeps the first value seen, the open
    domains of a search and anything not a number take the last thread's."""
    for part in parts:
        for k, v in part.items():
            if k in _FIRST:
                stats.setdefault(k, v)
            elif k in _LAST or not isinstance(v, (int, float)):
                stats[k] = v
            else:
                stats[k] = stats.get(k, 0) + v
