"""certify.data: every loader returns float32 images in [0, 1] and int64 labels; bad input errors."""
import gzip

import numpy as np
import pytest
import torch

from certify.data import load_dataset, read_idx
from certify.errors import CertifyError


def test_digits_split_is_fixed_and_disjoint():
    xtr, ytr = load_dataset("digits", "train")
    xte, yte = load_dataset("digits", "test")
    assert xtr.shape == (1437, 1, 8, 8) and xte.shape == (360, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert 0.0 <= float(xte.min()) and float(xte.max()) == 1.0
    assert set(yte.tolist()) == set(range(10))
    # no test image appears in train
    tr = {tuple(r) for r in xtr.flatten(1).numpy().round(4)}
    assert sum(tuple(r) in tr for r in xte.flatten(1).numpy().round(4)) < 5  # digits has a few exact duplicates
    assert torch.equal(load_dataset("digits", "test")[0], xte)


def _write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_idx_folder_round_trip(tmp_path):
    imgs = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", [7, 2, 1])
    x, y = load_dataset(str(tmp_path), "test")
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [7, 2, 1]
    assert torch.allclose(x[0, 0], torch.from_numpy(imgs[0].astype(np.float32) / 255))
    assert read_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz")).tolist() == [7, 2, 1]


def test_npz_hwc_is_transposed(tmp_path):
    imgs = np.random.RandomState(0).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    np.savez(tmp_path / "set_test.npz", images=imgs, labels=np.array([0, 1, 2, 3]))
    x, y = load_dataset(str(tmp_path / "set_test.npz"))
    assert x.shape == (4, 3, 32, 32)
    assert float(x[1, 2, 5, 7]) == pytest.approx(imgs[1, 5, 7, 2] / 255)


def test_bad_inputs_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("CERTIFY_DATA", raising=False)
    with pytest.raises(CertifyError, match="CERTIFY_DATA"):
        load_dataset("mnist")
    with pytest.raises(CertifyError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "bad-idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(CertifyError, match="bad magic"):
        read_idx(str(tmp_path / "bad-idx"))
    with pytest.raises(CertifyError, match="no test data"):
        load_dataset(str(tmp_path))
    with pytest.raises(CertifyError, match="split"):
        load_dataset("digits", "validation")


def test_shared_sets_have_standard_sizes(shared_dir):
    d = str(shared_dir / "data")
    x, y = load_dataset("mnist", "test", d)
    assert x.shape == (10000, 1, 28, 28)
    assert np.bincount(y.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, y = load_dataset("fashion-mnist", "test", d)
    assert np.bincount(y.numpy()).tolist() == [1000] * 10
    x, y = load_dataset("cifar10", "test", d)
    assert x.shape == (100, 3, 32, 32) and y[:4].tolist() == [3, 8, 8, 0]
    assert round(float(x[0, 0, 0, 0]) * 255) == 158
    with pytest.raises(CertifyError, match="no train data"):
        load_dataset("cifar10", "train", d)
