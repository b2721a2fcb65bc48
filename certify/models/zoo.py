"""Model zoo: torch architectures by name, and certify checkpoints (``torch.load(weights_only=True)``).

A checkpoint is a plain dict: ``{"format": "certify-checkpoint-v1", "model": zoo name,
"input_shape": [...], "num_classes": K, "state_dict": {...}, "meta": {...}}``; it holds no
pickled code, so loading it never runs anything.
"""
from __future__ import annotations

import pickle
from typing import Callable

import torch
from torch import nn

from certify.errors import CertifyError

FORMAT = "certify-checkpoint-v1"

# name -> builder(input_shape, num_classes) -> nn.Module
ZOO: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {}


def register(name: str):
    def deco(fn):
        ZOO[name] = fn
        return fn
    return deco


@register("digits-mlp")
def digits_mlp(input_shape=(1, 8, 8), num_classes=10) -> nn.Module:
    """Flatten - 24 - ReLU - 24 - ReLU - classes (about 2.4k parameters for 8x8 inputs)."""
    n = 1
    for d in input_shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, num_classes))


@register("digits-cnn")
def digits_cnn(input_shape=(1, 8, 8), num_classes=10) -> nn.Module:
    """conv4(3, p1) - ReLU - conv8(3, s2, p1) - ReLU - fc (about 1.6k parameters for 8x8 inputs)."""
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * ((h + 1) // 2) * ((w + 1) // 2), num_classes))


# ---------------------------------------------------------------- certified-training architectures
# For 1x28x28 (MNIST) and 3x32x32 (CIFAR-10) inputs (any (C, H, W) large enough works). No batch
# norm: training evaluates the same IR network the engines certify, and batch statistics have no
# IR counterpart. ``parameter_table()`` gives the parameter counts (benchmarks/training.py prints them).

def _flat(input_shape) -> int:
    n = 1
    for d in input_shape:
        n *= int(d)
    return n


def _conv_stack(input_shape, layers) -> tuple[list[nn.Module], int]:
    """Conv + ReLU layers from (out_channels, kernel, stride, padding) tuples, and the flat size after."""
    c, h, w = input_shape
    mods: list[nn.Module] = []
    for out, k, s, p in layers:
        mods += [nn.Conv2d(c, out, k, stride=s, padding=p), nn.ReLU()]
        c, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise CertifyError(f"input shape {tuple(input_shape)} is too small for this architecture")
    return mods, c * h * w


@register("mlp")
def mlp(input_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """Flatten - 256 - ReLU - 256 - ReLU - classes (784-256-256-10 on MNIST)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, num_classes))


@register("dm-small")
def dm_small(input_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """Gowal et al. 2018 'small': conv16(4, s2) - conv32(4, s1) - fc100 - classes (valid padding)."""
    convs, n = _conv_stack(input_shape, [(16, 4, 2, 0), (32, 4, 1, 0)])
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(n, 100), nn.ReLU(), nn.Linear(100, num_classes))


@register("dm-medium")
def dm_medium(input_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """Gowal et al. 2018 'medium': conv32(3) - conv32(4, s2) - conv64(3) - conv64(4, s2) - fc512 - fc512."""
    convs, n = _conv_stack(input_shape, [(32, 3, 1, 0), (32, 4, 2, 0), (64, 3, 1, 0), (64, 4, 2, 0)])
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, num_classes))


@register("lenet")
def lenet(input_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """LeNet: conv20(5) - maxpool2 - conv50(5) - maxpool2 - fc500 - classes (Caffe's MNIST LeNet)."""
    c, h, w = input_shape
    h2, w2 = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if h2 < 1 or w2 < 1:
        raise CertifyError(f"input shape {tuple(input_shape)} is too small for lenet")
    return nn.Sequential(nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(50 * h2 * w2, 500), nn.ReLU(),
                         nn.Linear(500, num_classes))


@register("cnn7")
def cnn7(input_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """Shi et al. 2021 CNN-7 without batch norm (the layout of Gowal et al.'s DM-large):
    conv64(3) x2 - conv128(3, s2) - conv128(3) x2 - fc512 - classes, padding 1."""
    convs, n = _conv_stack(input_shape, [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1),
                                         (128, 3, 1, 1)])
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, num_classes))


def parameter_table(shapes=((1, 28, 28), (3, 32, 32)), num_classes: int = 10) -> list[tuple[str, dict]]:
    """[(name, {"CxHxW": parameter count})] for every zoo architecture."""
    rows = []
    for name in ZOO:
        counts = {}
        for s in shapes:
            try:
                counts["x".join(map(str, s))] = sum(p.numel() for p in ZOO[name](tuple(s), num_classes).parameters())
            except CertifyError:
                counts["x".join(map(str, s))] = None
        rows.append((name, counts))
    return rows


def build(name: str, input_shape: tuple[int, ...], num_classes: int = 10) -> nn.Module:
    """A fresh module of zoo architecture ``name``."""
    if name not in ZOO:
        raise CertifyError(f"unknown model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    return ZOO[name](tuple(input_shape), num_classes)


def save_checkpoint(path: str, module: nn.Module, name: str, input_shape, num_classes: int,
                    meta: dict | None = None) -> None:
    """Write ``module``'s weights as a certify checkpoint (architecture by zoo ``name``, which must
    be registered and must build a module the weights fit: else the file could not be loaded)."""
    if name not in ZOO:
        raise CertifyError(f"save_checkpoint: {name!r} is not a zoo architecture ({', '.join(sorted(ZOO))}); "
                           "register its builder with certify.models.register, or export the model to ONNX")
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    try:
        build(name, tuple(input_shape), int(num_classes)).load_state_dict(state)
    except RuntimeError as e:
        raise CertifyError(f"save_checkpoint: the weights do not fit architecture {name!r} with input shape "
                           f"{tuple(input_shape)} and {num_classes} classes ({' '.join(str(e).split())[:300]})") from None
    torch.save({"format": FORMAT, "model": name, "input_shape": list(input_shape), "num_classes": int(num_classes),
                "state_dict": state, "meta": meta or {}}, path)


TRAIN_FORMAT = "certify-train-checkpoint-v1"      # certify.train.checkpoint's resumable training state


def _load_error(path: str, e: Exception) -> CertifyError:
    first = (str(e).splitlines() or [""])[0]
    if isinstance(e, pickle.UnpicklingError) and "GLOBAL " in str(e):     # the pickle names code to call
        return CertifyError(f"{path} holds pickled Python objects (such as a whole torch.nn.Module), which certify "
                            "never loads because unpickling runs code: export the model to ONNX "
                            "(torch.onnx.export) or with torch.export.save (.pt2), or save its state_dict and give "
                            "the class as MODEL module:Class with --weights FILE")
    return CertifyError(f"{path}: not a certify checkpoint or torch weights file ({type(e).__name__}: "
                        f"{first[:200]})")


def load_checkpoint(path: str, run_config: dict | None = None) -> tuple[nn.Module, dict]:
    """(module in eval mode, the checkpoint dict without its state_dict). A certify train
    ``checkpoint.pt`` (its resumable state) loads when ``run_config`` gives its architecture
    (model, input_shape, num_classes: the run folder's config.json)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CertifyError(f"model file {path} does not exist") from None
    except Exception as e:  # torch raises several types for non-checkpoint files
        raise _load_error(path, e) from None
    if isinstance(ck, dict) and ck.get("format") == TRAIN_FORMAT:
        if run_config is None:
            raise CertifyError(f"{path} is the training state of a certify train run, but its folder holds no "
                               "config.json naming the architecture; certify the run's model.pt or model.onnx")
        ck = dict(run_config, format=FORMAT, state_dict=ck.get("model"),
                  meta={"trained_by": "certify train", "epochs_done": ck.get("epoch")})
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CertifyError(f"{path}: not a certify checkpoint (expected a dict with format {FORMAT!r}); a "
                           "state_dict loads with its class: MODEL module:Class --weights FILE")
    try:
        name, shape, classes, state = ck["model"], tuple(ck["input_shape"]), int(ck["num_classes"]), ck["state_dict"]
    except (KeyError, TypeError, ValueError) as e:
        raise CertifyError(f"{path}: damaged certify checkpoint (field {e})") from None
    if name not in ZOO:
        raise CertifyError(f"{path}: architecture {name!r} is not in the zoo ({', '.join(sorted(ZOO))}); a "
                           "checkpoint of a registered custom architecture loads only where it is registered "
                           "(certify.models.register); export the model to ONNX for the command line")
    module = build(name, shape, classes)
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CertifyError(f"{path}: weights do not fit architecture {name!r}: {str(e)[:300]}") from None
    module.eval()
    info = {k: v for k, v in ck.items() if k != "state_dict"}
    return module, info
