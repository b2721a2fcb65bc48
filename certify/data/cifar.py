"""CIFAR-10 from the python pickle batches (``test_batch``, ``data_batch_N``) or an npz."""
from __future__ import annotations

import pickle

import numpy as np

from certify.errors import CertifyError


def read_cifar_pickle(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels (N,)) from one pickled CIFAR-10 batch."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise CertifyError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise CertifyError(f"{path}: not a CIFAR-10 python batch (no b'data'/b'labels')")
    return np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[b"labels"])


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from an npz with keys images/labels (or x/y). Images HWC or CHW."""
    try:
        d = np.load(path)
    except (OSError, ValueError) as e:
        raise CertifyError(f"cannot read npz file {path}: {e}") from None
    xk = next((k for k in ("images", "x", "X", "data") if k in d), None)
    yk = next((k for k in ("labels", "y", "Y", "targets") if k in d), None)
    if xk is None or yk is None:
        raise CertifyError(f"{path}: npz needs arrays 'images' and 'labels' (or 'x' and 'y'), has {list(d.keys())}")
    x = d[xk]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # HWC -> CHW
    elif x.ndim == 3:
        x = x[:, None]
    return x, d[yk]
