"""argparse ``type=`` functions that refuse bad numbers (NaN, a negative count, ...) with a message
naming the value; argparse prefixes the flag (``argument --eps: must be >= 0, got nan``)."""
from __future__ import annotations

import argparse
import math


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def positive_int_or_auto(text: str) -> int | None:
    """An integer >= 1, or ``auto`` (None: the program chooses)."""
    return None if text.strip().lower() == "auto" else positive_int(text)


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def finite_float(text: str) -> float:
    """A finite number."""
    v = _float(text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def nonneg_float(text: str) -> float:
    """A number >= 0 (inf allowed: e.g. a ball covering the whole domain)."""
    v = _float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0."""
    v = _float(text)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v
