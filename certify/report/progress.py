"""Progress bars for long loops (commands, evaluation, solvers): tqdm on stderr, shown only when
stderr is a terminal."""
from __future__ import annotations

import sys
import threading
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str | None = None,
             size: Callable[[T], int] | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm progress bar over ``iterable``; with ``size`` each item advances the bar by
    ``size(item)`` (e.g. a batch of inputs by its length, ``total`` then counts inputs)."""
    from tqdm import tqdm
    if size is None:
        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=None, leave=False, unit=unit)
    return _sized(iterable, total, desc, size, unit)


def _sized(iterable, total, desc, size, unit):
    from tqdm import tqdm
    with tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update(size(item))


def bar(total: float | None = None, desc: str | None = None, unit: str = "it", **kw):
    """A bare tqdm bar (``update``, ``set_postfix_str``; a context manager)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False, unit=unit, **kw)


class Poller:
    """Refreshes a bar from a callable every ``interval`` seconds on a daemon thread while the
    ``with`` block runs: ``update(bar)`` reads whatever state it watches (e.g. a live stats dict)."""

    def __init__(self, bar, update: Callable, interval: float = 0.5):
        self.bar, self.update, self.interval = bar, update, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.update(self.bar)
            except Exception:        # a display problem never stops the work it shows
                return

    def __enter__(self):
        if not self.bar.disable:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.close()


def progress_bar(total: int, desc: str | None = None):
    """The bar of ``progress`` advanced by hand (``.update(n)``, ``.close()``), for work that
    finishes out of order."""
    return progress(None, total=total, desc=desc)
