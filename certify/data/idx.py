"""MNIST-style idx files (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels), plain or gzipped."""
from __future__ import annotations

import gzip

import numpy as np

from certify.errors import CertifyError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """The array stored in an idx file (shape from its header)."""
    try:
        with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except OSError as e:
        raise CertifyError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise CertifyError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    need = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) < need:
        raise CertifyError(f"{path}: truncated idx file ({len(raw)} bytes, header promises {need})")
    return np.frombuffer(raw, dtype, count=int(np.prod(dims)), offset=4 + 4 * ndim).reshape(dims)
