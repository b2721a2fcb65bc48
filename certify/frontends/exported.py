"""torch.export front end: ``load_exported(path) -> Network`` for an ExportedProgram file (``.pt2``,
``torch.export.save``), and ``from_exported(ep)``.

The archive is checked before ``torch.export.load`` sees it, because that loader unpickles some
parts with ``weights_only=False`` (weights or constants marked ``use_pickle``, opaque and custom
objects, the sample inputs when the safe unpickler refuses them) and runs compiled AOTInductor
code: only the parts of a plain export are accepted (``ALLOWED``), every weight and constant
must be stored as raw tensor bytes, and the sample inputs must load with
``torch.load(weights_only=True)``. So loading a ``.pt2`` never runs code from the file.

The exported graph is in ATen ops; ``from_exported`` rewrites each op it knows into the
torch-level call with the same meaning (``aten.linear`` -> ``F.linear``, ``aten.conv2d`` ->
an ``nn.Conv2d`` holding the weights, ``aten.view`` with the batch size written out -> a view
by ``x.size(0)``, ...; ``TORCH_EQUIVALENTS``) and hands the result to the torch front end, which
traces it and checks the network against the exported module on random inputs. An ATen op
without an equivalent is an error naming it.
"""
from __future__ import annotations

import io
import json
import operator
import zipfile
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from certify.errors import CertifyError
from certify.ir import Network

aten = torch.ops.aten

# archive members (below the archive's root folder) a plain torch.export.save writes
ALLOWED = ("archive_format", "archive_version", "byteorder", ".data/", "models/", "data/weights/",
           "data/constants/", "data/sample_inputs/", "extra/")

# ATen overload -> the torch function with the same positional arguments
TORCH_EQUIVALENTS = {
    aten.linear.default: F.linear, aten.relu.default: torch.relu, aten.relu_.default: torch.relu_,
    aten.sigmoid.default: torch.sigmoid, aten.tanh.default: torch.tanh,
    aten.add.Tensor: torch.add, aten.sub.Tensor: torch.sub, aten.mul.Tensor: torch.mul, aten.div.Tensor: torch.div,
    aten.add.Scalar: torch.add, aten.sub.Scalar: torch.sub, aten.mul.Scalar: torch.mul, aten.div.Scalar: torch.div,
    aten.rsub.Scalar: torch.rsub, aten.neg.default: torch.neg,
    aten.flatten.using_ints: torch.flatten, aten.cat.default: torch.cat, aten.permute.default: torch.permute,
    aten.transpose.int: torch.transpose, aten.unsqueeze.default: torch.unsqueeze, aten.squeeze.dim: torch.squeeze,
    aten.squeeze.dims: torch.squeeze, aten.mean.dim: torch.mean, aten.sum.dim_IntList: torch.sum,
    aten.max_pool2d.default: F.max_pool2d, aten.avg_pool2d.default: F.avg_pool2d, aten.dropout.default: F.dropout,
}
RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
IDENTITIES = (aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default)


def check_archive(path: str) -> None:
    """Refuse a ``.pt2`` whose loading could run code (see the module doc)."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CertifyError(f"{path}: not a torch.export archive (.pt2 is a zip file: {e})") from None
    with z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise CertifyError(f"{path}: not a torch.export archive (expected one root folder)")
        root = roots.pop() + "/"
        rel = [n[len(root):] for n in names]
        if "archive_format" not in rel or z.read(root + "archive_format") != b"pt2":
            raise CertifyError(f"{path}: not a torch.export archive of the current format (re-export it with "
                               "torch.export.save)")
        for r in rel:
            if not r.startswith(ALLOWED):
                raise CertifyError(f"{path}: holds {r!r}, which a plain torch.export.save does not write (compiled "
                                   "code or pickled objects); certify loads only plain exported programs")
        for r in rel:
            if r.endswith("_config.json") and r.startswith(("data/weights/", "data/constants/")):
                _check_payloads(path, r, z.read(root + r))
            elif r.startswith("data/constants/") and not r.startswith("data/constants/tensor_"):
                raise CertifyError(f"{path}: constant {r!r} is a pickled object; certify loads only tensors")
            elif r.startswith("data/weights/") and not r.startswith("data/weights/weight_"):
                raise CertifyError(f"{path}: weights file {r!r} is not raw tensor data")
            elif r.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(z.read(root + r)), weights_only=True)
                except Exception as e:
                    raise CertifyError(f"{path}: its sample inputs {r!r} are not plain tensors ({type(e).__name__}); "
                                       "certify never unpickles other objects") from None


def _check_payloads(path: str, member: str, text: bytes) -> None:
    try:
        config = json.loads(text)["config"]
        entries = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CertifyError(f"{path}: damaged payload table {member!r}") from None
    for fqn, meta in entries:
        if not isinstance(meta, dict) or meta.get("use_pickle", True) or not str(meta.get("path_name", "")).startswith(
                ("weight_", "tensor_")):
            raise CertifyError(f"{path}: {fqn!r} is stored pickled; certify loads only raw tensor data (export the "
                               "model with plain tensor weights)")


def load_exported(path: str) -> Network:
    """The IR ``Network`` of an ExportedProgram file (see the module doc)."""
    check_archive(path)
    try:
        ep = torch.export.load(path)
    except Exception as e:  # torch raises many types for a damaged archive
        raise CertifyError(f"{path}: cannot load the exported program ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]})") from None
    net = from_exported(ep, Path(path).name)
    return net


def from_exported(ep, name: str = "exported") -> Network:
    """The IR ``Network`` of a ``torch.export.ExportedProgram`` with one tensor input (batch first)."""
    from certify.frontends.torch import from_module
    gm = ep.module(check_guards=False) if "check_guards" in ep.module.__code__.co_varnames else ep.module()
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(holders) != 1 or "val" not in holders[0].meta:
        raise CertifyError(f"{name}: the exported program must take exactly one tensor input, got {len(holders)}")
    shape = tuple(holders[0].meta["val"].shape)
    if len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
        raise CertifyError(f"{name}: the exported input has shape {shape}; expected (batch, *sample shape) with a "
                           "static sample shape")
    _to_torch_level(gm, name)
    plain = fx.GraphModule(gm, gm.graph, class_name=name)     # an ordinary module (train/eval modes)
    return from_module(plain, shape[1:], name=name)


def _value(gm: fx.GraphModule, a):
    return _attr(gm, a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else a


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _to_torch_level(gm: fx.GraphModule, name: str) -> None:
    """Rewrite ``gm``'s ATen calls into the torch-level calls the torch front end reads."""
    g = gm.graph
    for k, node in enumerate(list(g.nodes)):
        if node.op != "call_function":
            continue
        t = node.target
        if t in TORCH_EQUIVALENTS:
            node.target = TORCH_EQUIVALENTS[t]
        elif t is aten.sym_size.int:
            node.op, node.target = "call_method", "size"
        elif t in IDENTITIES:
            node.op, node.target, node.args, node.kwargs = "call_method", "contiguous", node.args[:1], {}
        elif t in RESHAPES:
            _batch_view(g, node)
        elif t is aten.conv2d.default:
            _replace_by_module(gm, node, f"_conv{k}", _conv(gm, *node.args[1:], **node.kwargs))
        elif t is aten.batch_norm.default or t is aten._native_batch_norm_legit_no_training.default:
            _replace_by_module(gm, node, f"_bn{k}", _batch_norm(gm, node))
    g.eliminate_dead_code()
    gm.recompile()


def _batch_view(g: fx.Graph, node: fx.Node) -> None:
    """``x.view(B0, ...)`` with the export's batch size written out -> ``x.view(x.size(0), ...)``."""
    x, size = node.args[0], list(node.args[1])
    node.op, node.target = "call_method", "reshape"
    val_in, val_out = x.meta.get("val") if isinstance(x, fx.Node) else None, node.meta.get("val")
    if (size and isinstance(size[0], int) and size[0] != -1 and val_in is not None and val_out is not None
            and val_in.dim() >= 1 and size[0] == val_in.shape[0] == val_out.shape[0]):
        with g.inserting_before(node):
            size[0] = g.call_method("size", (x, 0))
    node.args = (x, *size)


def _conv(gm, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> nn.Module:
    w, b = _value(gm, weight), _value(gm, bias)
    if not isinstance(w, torch.Tensor) or w.dim() != 4 or isinstance(padding, str):
        raise CertifyError("aten.conv2d with computed weights or string padding is not supported")
    m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                  dilation=dilation, groups=groups, bias=b is not None)
    m.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
    if b is not None:
        m.bias = nn.Parameter(b.detach().clone(), requires_grad=False)
    return m


def _batch_norm(gm, node: fx.Node) -> nn.Module:
    a = list(node.args)
    if node.target is aten.batch_norm.default:     # (x, w, b, mean, var, training, momentum, eps, cudnn)
        w, b, mean, var, training, eps = a[1], a[2], a[3], a[4], a[5], a[7]
    else:                                          # (x, w, b, mean, var, momentum, eps)
        w, b, mean, var, training, eps = a[1], a[2], a[3], a[4], False, a[6]
    if training:
        raise CertifyError("aten.batch_norm in training mode (batch statistics) is not supported; export the "
                           "model in eval mode")
    mean, var, w, b = (_value(gm, v) for v in (mean, var, w, b))
    x = node.args[0].meta.get("val")
    cls = nn.BatchNorm2d if x is not None and x.dim() == 4 else nn.BatchNorm1d
    m = cls(mean.shape[0], eps=float(eps), affine=w is not None).eval()
    m.running_mean.copy_(mean.detach())
    m.running_var.copy_(var.detach())
    if w is not None:
        m.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
        m.bias = nn.Parameter((b if b is not None else torch.zeros_like(w)).detach().clone(), requires_grad=False)
    return m


def _replace_by_module(gm: fx.GraphModule, node: fx.Node, target: str, module: nn.Module) -> None:
    gm.add_submodule(target, module)
    g = gm.graph
    with g.inserting_before(node):
        new = g.call_module(target, (node.args[0],))
    new.meta = dict(node.meta)
    if node.target is aten._native_batch_norm_legit_no_training.default:   # returns (out, mean, rstd)
        for u in list(node.users):
            if u.target is operator.getitem and u.args[1] == 0:
                u.replace_all_uses_with(new)
                g.erase_node(u)
    node.replace_all_uses_with(new)
    g.erase_node(node)
