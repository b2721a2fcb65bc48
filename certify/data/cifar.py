"""CIFAR-10 from the python pickle batches (``test_batch``, ``data_batch_N``) or an npz.

A batch is a pickled dict ``{b"batch_label": bytes, b"labels": [int], b"data": uint8 ndarray
(N, 3072), b"filenames": [bytes]}``. It is read by ``SafeUnpickler``, which builds only
dicts, lists, bytes, numbers and plain numeric numpy arrays: every other global a pickle names
(a function, a class: the way a pickle runs code) is refused before anything is called.
npz files are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np

from certify.errors import CertifyError

PICKLE_PROTO = b"\x80"          # first byte of a pickle of protocol 2 or newer (CIFAR-10's are 2)


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct``, for plain ndarrays only."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild an array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=False):
    """``numpy.dtype`` for numeric types only (an object dtype would hold arbitrary objects)."""
    dt = np.dtype(spec)
    if dt.hasobject or dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing array dtype {dt} (only numeric arrays are read)")
    return dt


def _frombuffer(buf, dtype, shape, order):
    """numpy's ``_frombuffer`` (protocol-5 pickles), numeric types only."""
    arr = np.frombuffer(buf, _dtype(dtype))
    return arr.reshape(shape, order=order)


def _codecs_encode(text, encoding="utf-8"):
    """``_codecs.encode`` as protocol-2 pickles of Python 3 bytes use it (latin-1 text only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than of latin-1 text")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy array constructors in ``_ALLOWED`` (each checked
    for plain numeric arrays) and refuses every other global, so loading runs no code."""

    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} (a data file must not run code)")
        return fn

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


def safe_load(data: bytes):
    """The object pickled in ``data``, built by ``SafeUnpickler`` (bytes kept as bytes)."""
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def read_cifar_pickle(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels (N,)) from one pickled CIFAR-10 batch."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CertifyError(f"cannot read data file {path}: {e.strerror}") from None
    if not data.startswith(PICKLE_PROTO):
        raise CertifyError(f"{path}: not a data file certify reads (idx files in a folder, an .npz with images and "
                           "labels, or a CIFAR-10 python batch)")
    try:
        d = safe_load(data)
    except pickle.UnpicklingError as e:
        raise CertifyError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    except Exception as e:  # a corrupt pickle fails inside the unpickler in many ways
        raise CertifyError(f"{path}: not a CIFAR-10 python batch (corrupt pickle: {type(e).__name__})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise CertifyError(f"{path}: not a CIFAR-10 python batch (no b'data'/b'labels')")
    try:
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise CertifyError(f"{path}: CIFAR-10 batch with bad data or labels ({e})") from None
    return x, y


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from an npz with keys images/labels (or x/y). Images HWC or CHW."""
    try:
        d = np.load(path, allow_pickle=False)
        if not isinstance(d, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        xk = next((k for k in ("images", "x", "X", "data") if k in d), None)
        yk = next((k for k in ("labels", "y", "Y", "targets") if k in d), None)
        if xk is None or yk is None:
            raise CertifyError(f"{path}: npz needs arrays 'images' and 'labels' (or 'x' and 'y'), has {list(d.keys())}")
        x, y = d[xk], d[yk]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CertifyError(f"cannot read npz file {path}: {' '.join(str(e).split())}") from None
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biu":
        raise CertifyError(f"{path}: images must be numbers and labels integers, got {x.dtype} and {y.dtype}")
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # HWC -> CHW
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise CertifyError(f"{path}: images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    if y.ndim != 1:
        raise CertifyError(f"{path}: labels must be a vector (N,), got shape {y.shape}")
    return x, y
