"""HiGHS through ``highspy``: pass an ``Encoding`` once, swap objectives, and rebuild a
certified lower bound from the row duals (never the solver's objective value).

Weak duality, for min c^T z + c0 s.t. row_lo <= A z <= row_hi, col_lo <= z <= col_hi and any
row multipliers y (y_i > 0 uses row_lo_i, y_i < 0 uses row_hi_i; a multiplier whose bound is
infinite is dropped):
    c^T z + c0 >= c0 + sum_i (y_i > 0 ? y_i row_lo_i : y_i row_hi_i)
                 + sum_j min(r_j col_lo_j, r_j col_hi_j),   r = c - A^T y,
valid for every feasible z whatever y is, so solver tolerances cannot make it unsound. It is
computed in float64 and lowered by a bound on its own rounding error.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Callable

import highspy
import numpy as np
import scipy.sparse as sp

from certify.solvers.encode import Encoding

EPS64 = np.finfo(np.float64).eps
_first = threading.Lock()
_banner_done = False


def new_highs() -> highspy.Highs:
    """A quiet ``Highs`` instance. HiGHS writes its two-line banner to the process's stdout when
    the first instance is created, before ``output_flag`` can be set: that one creation runs
    with file descriptor 1 sent to /dev/null (C stdio flushed before it comes back)."""
    global _banner_done
    if not _banner_done:
        with _first:
            if not _banner_done:
                h = _silently(highspy.Highs)
                _banner_done = True
                h.setOptionValue("output_flag", False)
                return h
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


def _silently(make):
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):       # no usable stdout: nothing to protect
        return make()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        return make()
    finally:
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def row_terms(c: np.ndarray, enc: Encoding, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row multipliers ``y`` made dual-feasible in sign (a multiplier on an infinite row side is
    dropped), their contribution per row (y_i times the row's finite lower / upper side) and the
    reduced costs ``c - A^T y``: the shared part of every weak-duality bound here."""
    y = np.array(y, dtype=np.float64)
    y = np.where((y > 0) & ~np.isfinite(enc.row_lo), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(enc.row_hi), 0.0, y)
    rows = np.where(y > 0, y * np.where(np.isfinite(enc.row_lo), enc.row_lo, 0.0),
                    y * np.where(np.isfinite(enc.row_hi), enc.row_hi, 0.0))
    return y, rows, c - enc.A.T @ y


def dual_bound(c: np.ndarray, c0: float, enc: Encoding, y: np.ndarray) -> float:
    """The weak-duality lower bound of min c^T z + c0 over ``enc`` for row multipliers ``y``."""
    y, rows, r = row_terms(c, enc, y)
    cols = np.minimum(r * enc.col_lo, r * enc.col_hi)
    total = c0 + rows.sum() + cols.sum()
    # rounding: every product and sum is exact up to a relative EPS64 per operation
    mag = abs(c0) + np.abs(rows).sum() + np.abs(cols).sum() + (np.abs(enc.A.T) @ np.abs(y) + np.abs(c)) @ \
        np.maximum(np.abs(enc.col_lo), np.abs(enc.col_hi))
    n = enc.A.shape[0] + enc.A.shape[1] + 2
    return float(total - 4 * n * EPS64 * mag - 1e-12)


def status_name(h: highspy.Highs) -> str:
    """HiGHS model status as our status string: 'optimal' or the solver's own name."""
    st = h.getModelStatus()
    if st == highspy.HighsModelStatus.kOptimal:
        return "optimal"
    return h.modelStatusToString(st).lower().replace(" ", "_")


def make_highs(enc: Encoding, time_limit: float | None = None, options: dict | None = None) -> highspy.Highs:
    """A ``Highs`` instance holding ``enc`` (zero objective), quiet and single-threaded."""
    h = new_highs()
    h.setOptionValue("threads", 1)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    for k, v in (options or {}).items():
        h.setOptionValue(k, v)
    lp = highspy.HighsLp()
    m, N = enc.A.shape
    lp.num_col_, lp.num_row_ = N, m
    lp.col_cost_ = np.zeros(N)
    lp.col_lower_, lp.col_upper_ = enc.col_lo, enc.col_hi
    lp.row_lower_ = np.where(np.isfinite(enc.row_lo), enc.row_lo, -highspy.kHighsInf)
    lp.row_upper_ = np.where(np.isfinite(enc.row_hi), enc.row_hi, highspy.kHighsInf)
    A = sp.csc_matrix(enc.A)
    A.sort_indices()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(np.float64)
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = N, m
    if enc.integer.any():
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in enc.integer]
    h.passModel(lp)
    return h


def set_objective(h: highspy.Highs, c: np.ndarray, c0: float = 0.0) -> None:
    """Replace the objective by min c^T z + c0 (the model and its basis are kept: warm start)."""
    n = len(c)
    h.changeColsCost(n, np.arange(n, dtype=np.int32), np.asarray(c, np.float64))
    h.changeObjectiveOffset(float(c0))


def run_until_sign_known(h: highspy.Highs, margin: float, cancelled: Callable[[], bool] | None = None) -> None:
    """Run ``h``, interrupting a MIP as soon as the sign of its minimum is known (dual bound above
    ``margin`` or primal bound below ``-margin``) or ``cancelled()`` says so."""
    def stop(e):
        if (cancelled is not None and cancelled()) or e.data_out.mip_dual_bound > margin \
                or e.data_out.mip_primal_bound < -margin:
            e.interrupt()
    h.cbMipInterrupt.subscribe(stop)
    try:
        h.run()
    finally:
        h.cbMipInterrupt.unsubscribe(stop)
