"""Model zoo, certify checkpoints, the bundled tiny digits models (``digits-mlp``, ``digits-cnn``),
and ``load_model``: the IR network of anything a command takes as MODEL.

MODEL is one of: a bundled name; an ``.onnx`` / ``.onnx.gz`` file; a certify checkpoint ``.pt``
(``save_checkpoint``; also a ``certify train`` run's ``checkpoint.pt``, whose architecture is in
the run's ``config.json``, or the run folder itself); a torch.export ``.pt2`` file
(``certify.frontends.exported``); or ``module:Class``, a ``torch.nn.Module`` subclass importable
from the current directory, built with ``model_args`` (JSON: an object of keyword arguments or a
list of positional ones), its weights from a state_dict file loaded with
``torch.load(weights_only=True)``. No model file is ever unpickled beyond torch's tensor-only
loader.

The bundled models were trained by ``certify/models/train_bundled.py`` on scikit-learn's 8x8
digits (train split of ``certify.data``); they are what ``certify demo`` and the tests use.
"""
from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

from certify.errors import CertifyError
from certify.models.zoo import TRAIN_FORMAT, ZOO, build, load_checkpoint, register, save_checkpoint

BUNDLED_DIR = Path(__file__).parent
BUNDLED = {"digits-mlp": BUNDLED_DIR / "digits_mlp.pt", "digits-cnn": BUNDLED_DIR / "digits_cnn.pt"}


CLASS_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
RUN_CONFIG = "config.json"       # written by certify train beside its checkpoint.pt


def load_network(path: str):
    """The IR ``Network`` of a certify checkpoint file (or a certify train ``checkpoint.pt``)."""
    from certify.frontends.torch import from_module
    module, info = load_checkpoint(path, run_config=_run_config(path))
    net = from_module(module, tuple(info["input_shape"]))
    net.name = Path(path).name
    return net


def _run_config(path: str) -> dict | None:
    """The architecture (model, input_shape, num_classes) of a train run's folder, from its
    ``config.json``, or None when the folder has none."""
    cfg = Path(path).parent / RUN_CONFIG
    if not cfg.is_file():
        return None
    try:
        c = json.loads(cfg.read_text())
        return {"model": c["model"], "input_shape": list(c["input_shape"]),
                "num_classes": int(c["train"]["num_classes"])}
    except (ValueError, KeyError, TypeError) as e:
        raise CertifyError(f"{cfg}: damaged run configuration ({type(e).__name__}: {e})") from None


def is_class_spec(text: str) -> bool:
    """Whether a MODEL argument names a torch module class (``package.module:Class``) rather than a file."""
    return bool(CLASS_SPEC.match(text)) and not Path(text).exists()


def load_class(spec: str, weights: str | None = None, model_args=None, input_shape=None):
    """The IR ``Network`` of ``module:Class`` (see the module doc); ``input_shape`` per sample."""
    import torch
    from certify.frontends.torch import from_module
    mod_name, cls_name = spec.split(":")
    if input_shape is None:
        raise CertifyError(f"model {spec}: a torch class needs the input shape (--input-shape C H W, or the "
                           "data set's, on commands that take --data)")
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise CertifyError(f"model {spec}: cannot import module {mod_name!r} from the current directory or the "
                           f"installed packages ({e})") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise CertifyError(f"model {spec}: {mod_name} has no torch.nn.Module subclass {cls_name!r}")
    args, kwargs = _model_args(spec, model_args)
    try:
        model = cls(*args, **kwargs)
    except Exception as e:   # the user's constructor: any exception is a mistake in the arguments
        raise CertifyError(f"model {spec}: {cls_name}(...) with --model-args {model_args or '{}'} failed "
                           f"({type(e).__name__}: {e})") from None
    if weights is not None:
        _load_weights(model, weights, spec)
    model.eval()
    return from_module(model, tuple(int(d) for d in input_shape), name=spec)


def _model_args(spec: str, text) -> tuple[list, dict]:
    if text is None:
        return [], {}
    try:
        v = json.loads(text) if isinstance(text, str) else text
    except ValueError as e:
        raise CertifyError(f"model {spec}: --model-args is not JSON ({e})") from None
    if isinstance(v, dict):
        return [], v
    if isinstance(v, list):
        return v, {}
    raise CertifyError(f"model {spec}: --model-args must be a JSON object (keyword arguments) or list, got {text!r}")


def _load_weights(model, path: str, spec: str) -> None:
    """Weights of a state_dict file (plain, ``{"state_dict": ...}``, or a certify checkpoint)."""
    import torch
    from certify.models.zoo import FORMAT, _load_error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CertifyError(f"weights file {path} does not exist") from None
    except IsADirectoryError:
        raise CertifyError(f"weights file {path} is a directory") from None
    except Exception as e:
        raise _load_error(path, e) from None
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        obj = obj.get("model")
    elif isinstance(obj, dict) and (obj.get("format") == FORMAT or "state_dict" in obj):
        obj = obj.get("state_dict")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CertifyError(f"weights file {path} is not a state_dict (a dict of tensors, as "
                           "torch.save(model.state_dict(), path) writes)")
    try:
        model.load_state_dict(obj)
    except RuntimeError as e:
        raise CertifyError(f"weights file {path} does not fit model {spec}: {' '.join(str(e).split())[:300]}") from None


def load_bundled(name: str):
    """The IR ``Network`` of a bundled model (``digits-mlp`` or ``digits-cnn``)."""
    if name not in BUNDLED:
        raise CertifyError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    net = load_network(str(BUNDLED[name]))
    net.name = name
    return net


def model_file(path_or_name: str, weights: str | None = None) -> Path | None:
    """The file behind a model argument: a bundled name's own checkpoint, a run folder's
    ``model.pt``, a class's ``weights`` file (None for a class without weights)."""
    if path_or_name in BUNDLED:
        return BUNDLED[path_or_name]
    if is_class_spec(path_or_name):
        return None if weights is None else Path(weights)
    p = Path(path_or_name)
    if not p.exists():
        raise CertifyError(f"model file {path_or_name} does not exist (bundled models: {', '.join(BUNDLED)}; "
                           "a torch class is written module:Class)")
    if p.is_dir():
        if (p / "model.pt").is_file():
            return p / "model.pt"
        raise CertifyError(f"model path {path_or_name} is a directory without a model.pt (not a certify train run)")
    return p


def load_model(path_or_name: str, weights: str | None = None, model_args=None, input_shape=None):
    """The IR ``Network`` of a MODEL argument (see the module doc). ``weights``, ``model_args``
    and ``input_shape`` apply to a ``module:Class`` model only."""
    if not is_class_spec(path_or_name) and (weights is not None or model_args is not None):
        raise CertifyError(f"--weights and --model-args apply to a torch class model (module:Class), not "
                           f"{path_or_name}")
    if path_or_name in BUNDLED:
        return load_bundled(path_or_name)
    if is_class_spec(path_or_name):
        return load_class(path_or_name, weights, model_args, input_shape)
    p = model_file(path_or_name)
    name = p.name.lower()
    if name.endswith(".onnx") or name.endswith(".onnx.gz"):
        from certify.frontends.onnx import load
        return load(str(p))
    if name.endswith(".pt") or name.endswith(".pth"):
        return load_network(str(p))
    if name.endswith(".pt2"):
        from certify.frontends.exported import load_exported
        return load_exported(str(p))
    raise CertifyError(f"{path_or_name}: unknown model format (expected .onnx, .onnx.gz, a certify .pt checkpoint, "
                       "a torch.export .pt2, a certify train run folder or module:Class)")


__all__ = ["ZOO", "build", "register", "save_checkpoint", "load_checkpoint", "load_network", "load_bundled",
           "load_model", "load_class", "is_class_spec", "model_file", "BUNDLED"]
