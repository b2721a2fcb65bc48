"""Every network of ../shared/vnncomp_general loads and computes what onnxruntime computes (to
1e-4, at random points of its first VNN-LIB input box), or is refused at load time naming an op
listed in ``NEEDS`` (nonlinear ops outside the data-movement set). Default suite: the first
network of each family; marked slow: all of them."""
from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
import torch

from certify.errors import CertifyError
from certify.frontends.onnx import load
from certify.spec import vnnlib

ort = pytest.importorskip("onnxruntime")
FAMILIES = ("cgan_2023", "cifar10_resnet", "dist_shift_2023", "linearizenn", "lsnc", "marabou-cifar10",
            "ml4acopf_2024", "oval21", "traffic_signs_recognition_2023", "verivital", "vit_2023")
NEEDS = {
    "lsnc/onnx/quadrotor2d_state.onnx.gz": "Sin",
    "lsnc/onnx/quadrotor2d_output.onnx.gz": "Cos",
    "traffic_signs_recognition_2023/onnx/3_30_30_QConv_16_3_QConv_32_2_Dense_43_ep_30.onnx.gz": "Sign",
    "vit_2023/onnx/pgd_2_3_16.onnx.gz": "product of two network tensors",
    "vit_2023/onnx/ibp_3_3_8.onnx.gz": "product of two network tensors",
}
"""Networks refused until their nonlinear ops exist, and the op named by the refusal (the
other networks of these families follow the same pattern; see ``_need``)."""


def _need(rel: str) -> str | None:
    if rel in NEEDS:
        return NEEDS[rel]
    if rel.startswith("traffic_signs_recognition_2023/"):
        return "Sign"
    if rel.startswith("ml4acopf_2024/"):
        return "Mul of two network tensors" if "linear" in rel else "Pow"
    return None


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
    need = _need(rel_onnx)
    try:
        net = load(path)
    except CertifyError as e:
        assert need is not None and need in str(e), str(e)
        return None
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
        assert np.abs(ys[k].reshape(-1) - y.reshape(-1)).max() < 1e-4, rel_onnx
    return net


@pytest.fixture(scope="module")
def general(shared_dir):
    root = shared_dir / "vnncomp_general"
    if not root.is_dir():
        pytest.skip("vnncomp_general not present")
    return root


def test_first_network_of_each_family_loads_and_matches(general):
    loaded = [rel for rel, v in _networks(general, True) if _check(general, rel, v) is not None]
    assert len(loaded) >= 7        # cgan, resnet, dist_shift, linearizenn, marabou, oval21, verivital


@pytest.mark.slow
def test_every_network_loads_and_matches_or_names_its_op(general):
    nets = _networks(general, False)
    assert len(nets) == 44
    loaded = [rel for rel, v in nets if _check(general, rel, v) is not None]
    assert set(loaded) >= {rel for rel, _ in nets if _need(rel) is None}
