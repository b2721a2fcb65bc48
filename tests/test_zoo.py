"""The model zoo: every architecture builds for MNIST and CIFAR shapes with the documented
parameter counts, checkpoints load back with weights_only=True, and models trace to the IR and
export to ONNX with the same outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from certify.errors import CertifyError
from certify.frontends.torch import from_module
from certify.models.zoo import ZOO, build, load_checkpoint, parameter_table, save_checkpoint

NEW = ["mlp", "dm-small", "dm-medium", "lenet", "cnn7"]
# parameter counts for (1, 28, 28) and (3, 32, 32) inputs, 10 classes (hand-derived layer by layer)
EXPECTED = {
    "mlp": (784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10, 3072 * 256 + 256 + 256 * 256 + 256 + 2570),
    "dm-small": (16 * 16 + 16 + 32 * 16 * 16 + 32 + 3200 * 100 + 100 + 1010,
                 16 * 48 + 16 + 32 * 16 * 16 + 32 + 32 * 12 * 12 * 100 + 100 + 1010),
    "lenet": (20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 5010,
              20 * 75 + 20 + 50 * 20 * 25 + 50 + 1250 * 500 + 500 + 5010),
}


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_builds_and_runs(name, shape):
    assert name in ZOO
    model = build(name, shape, 10)
    out = model(torch.rand((2,) + shape))
    assert out.shape == (2, 10)
    n = sum(p.numel() for p in model.parameters())
    if name in EXPECTED:
        assert n == EXPECTED[name][0 if shape[0] == 1 else 1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_parameter_table_lists_every_architecture():
    table = dict(parameter_table())
    assert set(table) == set(ZOO)
    assert table["mlp"]["1x28x28"] == EXPECTED["mlp"][0]
    assert table["dm-medium"]["3x32x32"] > table["dm-medium"]["1x28x28"] > table["dm-small"]["1x28x28"]


def test_too_small_input_is_a_clear_error():
    with pytest.raises(CertifyError, match="too small"):
        build("lenet", (1, 8, 8), 10)
    with pytest.raises(CertifyError, match="unknown model"):
        build("resnet-1000", (1, 28, 28), 10)


@pytest.mark.parametrize("name", ["mlp", "dm-small", "lenet"])
def test_checkpoint_roundtrip_ir_and_onnx(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build(name, (1, 28, 28), 10).eval()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(str(path), model, name, (1, 28, 28), 10, meta={"epochs": 1})
    raw = torch.load(path, weights_only=True)                  # plain tensors and dicts only
    assert raw["model"] == name
    loaded, info = load_checkpoint(str(path))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(loaded(x), ref)
        net = from_module(loaded, (1, 28, 28))
        assert torch.allclose(net(x), ref, atol=1e-5)
    onnx_path = tmp_path / f"{name}.onnx"
    net.to_onnx(str(onnx_path))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4)
