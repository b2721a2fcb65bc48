"""Model zoo, certify checkpoints and the bundled tiny digits models (``digits-mlp``, ``digits-cnn``).

The bundled models were trained by ``certify/models/train_bundled.py`` on scikit-learn's 8x8
digits (train split of ``certify.data``); they are what ``certify demo`` and the tests use.
"""
from __future__ import annotations

from pathlib import Path

from certify.errors import CertifyError
from certify.models.zoo import ZOO, build, load_checkpoint, register, save_checkpoint

BUNDLED_DIR = Path(__file__).parent
BUNDLED = {"digits-mlp": BUNDLED_DIR / "digits_mlp.pt", "digits-cnn": BUNDLED_DIR / "digits_cnn.pt"}


def load_network(path: str):
    """The IR ``Network`` of a certify checkpoint file."""
    from certify.frontends.torch import from_module
    module, info = load_checkpoint(path)
    net = from_module(module, tuple(info["input_shape"]))
    net.name = Path(path).name
    return net


def load_bundled(name: str):
    """The IR ``Network`` of a bundled model (``digits-mlp`` or ``digits-cnn``)."""
    if name not in BUNDLED:
        raise CertifyError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    net = load_network(str(BUNDLED[name]))
    net.name = name
    return net


def model_file(path_or_name: str) -> Path:
    """The file behind a model argument (a bundled name's own checkpoint file)."""
    if path_or_name in BUNDLED:
        return BUNDLED[path_or_name]
    p = Path(path_or_name)
    if not p.exists():
        raise CertifyError(f"model file {path_or_name} does not exist (bundled models: {', '.join(BUNDLED)})")
    if p.is_dir():
        raise CertifyError(f"model path {path_or_name} is a directory, not a model file")
    return p


def load_model(path_or_name: str):
    """The IR ``Network`` of a model file or bundled model name."""
    if path_or_name in BUNDLED:
        return load_bundled(path_or_name)
    p = model_file(path_or_name)
    name = p.name.lower()
    if name.endswith(".onnx") or name.endswith(".onnx.gz"):
        from certify.frontends.onnx import load
        return load(str(p))
    if name.endswith(".pt") or name.endswith(".pth"):
        return load_network(str(p))
    raise CertifyError(f"{path_or_name}: unknown model format (expected .onnx, .onnx.gz or a certify .pt checkpoint)")


__all__ = ["ZOO", "build", "register", "save_checkpoint", "load_checkpoint", "load_network", "load_bundled",
           "load_model", "model_file", "BUNDLED"]
