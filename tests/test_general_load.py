"""Every network of ../shared/vnncomp_general loads and computes what onnxruntime computes (to
1e-4 relative to max(1, |output|): float32 rounding of outputs of magnitude 1e4, at random points
of its first VNN-LIB input box). Default suite: the first network of each family; marked slow: all
of them."""
from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
import torch

from certify.frontends.onnx import load
from certify.spec import vnnlib

ort = pytest.importorskip("onnxruntime")
FAMILIES = ("cgan_2023", "cifar10_resnet", "dist_shift_2023", "linearizenn", "lsnc", "marabou-cifar10",
            "ml4acopf_2024", "oval21", "traffic_signs_recognition_2023", "verivital", "vit_2023")
def _networks(root, first_only: bool):
    """(relative onnx path, relative vnnlib path) of each network (its first instance)."""
    out = []
    for fam in FAMILIES:
        seen = {}
        with open(root / fam / "instances.csv") as f:
            for row in csv.reader(f):
                seen.setdefault(row[0].strip(), row[1].strip())
        items = list(seen.items())
        out += [(f"{fam}/{o}", f"{fam}/{v}") for o, v in (items[:1] if first_only else items)]
    return out


def _check(root, rel_onnx: str, rel_vnnlib: str):
    path = root / rel_onnx
    net = load(path)
    prop = vnnlib.load(root / rel_vnnlib, net.input_size, net.output_size)
    box = prop.regions[0]
    xs = np.random.default_rng(0).uniform(box.lower, box.upper, size=(3, net.input_size)).astype(np.float32)
    data = path.read_bytes()
    sess = ort.InferenceSession(gzip.decompress(data) if path.name.endswith(".gz") else data,
                                providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    with torch.no_grad():
        ys = net(torch.from_numpy(xs).reshape((3,) + net.input_shape).to(net.dtype)).numpy()
    for k in range(3):
        y = sess.run(None, {inp.name: xs[k].reshape(shape)})[0]
        err = np.abs(ys[k].reshape(-1) - y.reshape(-1)) / np.maximum(1.0, np.abs(y.reshape(-1)))
        assert err.max() < 1e-4, (rel_onnx, float(err.max()))
    return net


@pytest.fixture(scope="module")
def general(shared_dir):
    root = shared_dir / "vnncomp_general"
    if not root.is_dir():
        pytest.skip("vnncomp_general not present")
    return root


def test_first_network_of_each_family_loads_and_matches(general):
    nets = _networks(general, True)
    assert len(nets) == len(FAMILIES)
    for rel, v in nets:
        _check(general, rel, v)


@pytest.mark.slow
def test_every_network_loads_and_matches(general):
    nets = _networks(general, False)
    assert len(nets) == 44
    for rel, v in nets:
        _check(general, rel, v)
