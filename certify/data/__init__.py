"""Data sets as (images float32 in [0, 1] of shape (N, C, H, W), labels int64 (N,)), from files.
``domain(name)`` is the valid input range of a data set's images, the box a perturbation ball
around one of them is clipped to.

Names: ``digits`` (scikit-learn's embedded 8x8 digits, always available; a fixed 80/20 split),
``mnist``, ``fashion-mnist``, ``cifar10`` (found under ``data_dir``, else ``$CERTIFY_DATA``), or a
path: a folder of idx files, an ``.npz`` (images/labels), or a CIFAR-10 python batch. No downloads.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from certify.data.cifar import read_cifar_pickle, read_npz
from certify.data.idx import read_idx
from certify.errors import CertifyError

# name -> (sub-folder, per-sample shape, classes)
DATASETS = {
    "digits": (None, (1, 8, 8), 10),
    "mnist": ("mnist", (1, 28, 28), 10),
    "fashion-mnist": ("fashion_mnist", (1, 28, 28), 10),
    "cifar10": ("cifar10", (3, 32, 32), 10),
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
PIXEL_RANGE = (0.0, 1.0)      # every image load_dataset returns lies in it (checked there)


def domain(name_or_path: str) -> tuple[float, float]:
    """The valid input range (lo, hi) of the images of data set ``name_or_path``: pixels in
    [0, 1] for every data set and file ``load_dataset`` reads (it refuses any other range)."""
    return PIXEL_RANGE


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    perm = np.random.RandomState(0).permutation(len(x))
    test = perm[:360]
    train = perm[360:]
    idx = {"train": train, "test": np.sort(test)}[split]
    return x[idx], d.target[idx]


def _find_idx(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    p = _IDX_PREFIX[split]
    for ext in ("-ubyte.gz", "-ubyte", ".gz", ""):
        xi, yi = folder / f"{p}-images-idx3{ext}", folder / f"{p}-labels-idx1{ext}"
        if xi.exists() and yi.exists():
            return read_idx(str(xi)), read_idx(str(yi))
    return None


def _from_path(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise CertifyError(f"data set {str(path)!r} does not exist: it is neither a known data set "
                           f"({', '.join(DATASETS)}) nor an existing path to idx / .npz / CIFAR-10 files")
    if path.is_dir():
        found = _find_idx(path, split)
        if found is not None:
            x, y = found
            return (x[:, None] if x.ndim == 3 else x), y
        for name in ("test_batch",) if split == "test" else ():
            if (path / name).exists():
                return read_cifar_pickle(str(path / name))
        npz = sorted(path.glob(f"*{split}*.npz"))
        if npz:
            return read_npz(str(npz[0]))
        raise CertifyError(f"{path}: no {split} data found (expected idx files {_IDX_PREFIX[split]}-images-idx3-ubyte[.gz], "
                           "a CIFAR-10 test_batch or an .npz)")
    if path.suffix == ".npz":
        return read_npz(str(path))
    return read_cifar_pickle(str(path))


def data_root(data_dir: str | None = None) -> Path | None:
    d = data_dir or os.environ.get("CERTIFY_DATA")
    return Path(d) if d else None


def load_dataset(name_or_path: str, split: str = "test", data_dir: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 (N, C, H, W) in [0, 1] and labels int64 (N,)."""
    if split not in ("train", "test"):
        raise CertifyError(f"split must be 'train' or 'test', got {split!r}")
    key = name_or_path.lower().replace("_", "-")
    if key == "digits":
        x, y = _digits(split)
    elif key in DATASETS:
        root = data_root(data_dir)
        if root is None:
            raise CertifyError(f"data set {name_or_path!r} needs its files: pass --data-dir DIR or set "
                               "CERTIFY_DATA (e.g. to ../shared/data)")
        sub = root / DATASETS[key][0]
        folder = sub if sub.exists() else root
        x, y = _from_path(folder, split)
    else:
        x, y = _from_path(Path(name_or_path), split)
    if len(x) != len(y):
        raise CertifyError(f"{name_or_path}: {len(x)} images but {len(y)} labels")
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biu" or (len(y) and int(y.min()) < 0):
        raise CertifyError(f"{name_or_path}: images must be numbers and labels non-negative integers "
                           f"(got {x.dtype} images, {y.dtype} labels)")
    xt = torch.from_numpy(x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0))
    if len(xt) == 0:
        raise CertifyError(f"{name_or_path}: holds no {split} images")
    if not (float(xt.min()) >= PIXEL_RANGE[0] and float(xt.max()) <= PIXEL_RANGE[1]):
        raise CertifyError(f"{name_or_path}: pixel values outside [0, 1] after scaling")
    return xt.contiguous(), torch.from_numpy(np.asarray(y).astype(np.int64))


def select(name_or_path: str, split: str = "test", data_dir: str | None = None, start: int = 0, skip: int = 1,
           count: int | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(indices into the split, images (N, C, H, W), labels (N,)): every ``skip``-th sample from
    ``start``, at most ``count`` of them."""
    if skip < 1 or (count is not None and count < 1) or start < 0:
        raise CertifyError(f"bad input selection: start {start} (>= 0), skip {skip} (>= 1), count {count} (>= 1)")
    x, y = load_dataset(name_or_path, split, data_dir)
    idx = list(range(start, len(x), skip))[:count]
    if not idx:
        raise CertifyError(f"no inputs selected: {name_or_path} has {len(x)} {split} images, start {start}")
    sel = torch.tensor(idx)
    return idx, x[sel], y[sel]


def fit_input_shape(x: torch.Tensor, input_shape: tuple[int, ...], data_name: str, model_name: str) -> torch.Tensor:
    """Data (N, ...) reshaped to a network's per-sample ``input_shape`` when the sizes agree, else a clear error."""
    want = tuple(input_shape)
    if tuple(x.shape[1:]) == want:
        return x
    if x[0].numel() == torch.Size(want).numel():
        return x.reshape((x.shape[0],) + want)
    raise CertifyError(f"data {data_name} has samples of shape {tuple(x.shape[1:])} but model {model_name} expects "
                       f"input shape {want}")


__all__ = ["DATASETS", "PIXEL_RANGE", "domain", "load_dataset", "select", "fit_input_shape", "read_idx", "read_npz", "read_cifar_pickle", "data_root"]
