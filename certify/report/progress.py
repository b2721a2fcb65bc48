"""Progress bars for long loops over inputs (commands, evaluation)."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str | None = None) -> Iterable[T]:
    """A tqdm progress bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=None, leave=False)


def progress_bar(total: int, desc: str | None = None):
    """The bar of ``progress`` advanced by hand (``.update(n)``, ``.close()``), for work that
    finishes out of order."""
    return progress(None, total=total, desc=desc)
