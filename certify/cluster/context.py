"""A worker process's setup per run (model, data, engine objects), built once by the first task
of that run the process executes and reused by its later tasks."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, TypeVar

T = TypeVar("T")

KEEP = 2                   # runs whose setup a worker process keeps (a cluster may serve several)
_LOCK = threading.Lock()
_CACHE: OrderedDict[str, object] = OrderedDict()


def cached(key: str, build: Callable[[], T]) -> T:
    """``build()`` once per process for ``key`` (a run's token); later calls return that value.
    Builds are serialized; only the ``KEEP`` most recently used keys are kept."""
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]          # type: ignore[return-value]
        value = build()
        _CACHE[key] = value
        while len(_CACHE) > KEEP:
            _CACHE.popitem(last=False)
        return value
