"""torch front end: ``from_module(module, input_shape) -> Network`` by ``torch.fx`` tracing.

What is understood
------------------
* Modules: ``nn.Linear``, ``nn.Conv2d`` (zero padding), ``nn.BatchNorm1d/2d``, ``nn.ReLU``,
  ``nn.Sigmoid``, ``nn.Tanh``, ``nn.LeakyReLU``, ``nn.Softmax``, ``nn.AvgPool2d``, ``nn.MaxPool2d``, ``nn.Flatten``,
  ``nn.Identity``, ``nn.Dropout*``, ``nn.Unflatten``; containers and custom modules are
  traced through.
* Functions/methods: ``+ - * /`` (``torch.add/sub/mul/div``, ``x.add(...)``...) between a
  network tensor and a constant (python number, buffer, parameter), ``+ -`` between two
  network tensors of equal shape, ``* /`` between two network tensors of equal rank
  (broadcast; ``a / b`` is ``a * reciprocal(b)``, ``c / b`` for a constant c
  ``c * reciprocal(b)``), ``@`` / ``matmul`` / ``bmm`` of two network tensors (or by a constant
  matrix on the right); ``relu``, ``sigmoid``, ``tanh``, ``leaky_relu``, ``exp``, ``log``,
  ``reciprocal``, ``sin``, ``cos``, ``sign``, ``floor``, ``sqrt``, ``square``, ``x ** p`` /
  ``pow`` with a constant exponent, ``softmax`` along a non-batch dim (torch / F / method);
  ``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view/reshape`` with the batch size given as
  ``x.size(0)``, ``x.shape[0]`` or ``-1`` (``x.view(x.size(0), -1)``); ``torch.cat`` along a
  non-batch dim; ``F.linear``, ``F.avg_pool2d``, ``F.max_pool2d``, ``F.dropout``.
* Data movement and reductions (never over the batch dim): indexing ``x[:, a:b:c, [i, j], None,
  ...]``, ``narrow``, ``split``/``chunk``/``unbind``, ``index_select`` (constant indices),
  ``permute``/``transpose``, ``squeeze``/``unsqueeze``, ``torch.stack``, ``sum``/``mean`` over
  given dims, ``F.pad`` / ``nn.ZeroPad2d`` / ``nn.ConstantPad*d`` (constant mode),
  ``nn.ConvTranspose2d`` / ``F.conv_transpose2d``; ops that only copy elements
  (``nn.Upsample`` / ``F.interpolate`` nearest, ``flip``, ``roll``, ``expand``, ``repeat``,
  ``tile``, ``repeat_interleave``, pixel (un)shuffle, broadcasting of a network tensor) are
  evaluated once on the tensor of element numbers and become one flat ``Gather`` (an integer
  nearest upsampling: a depthwise transposed convolution, ``GraphBuilder.element_map``).
* In-place forms (``x += y``, ``x.add_(y)``, ``nn.ReLU(inplace=True)``) when the overwritten
  tensor is not used anywhere else (otherwise the aliasing is rejected).
* Anything computed from constants only (e.g. ``self.mean.view(1, 3, 1, 1)``) is evaluated at
  trace time.
* A ``Normalize``-style module holding ``mean``/``std`` buffers and computing
  ``(x - self.mean) / self.std`` traces to ``ConstAdd(-mean)`` then ``ConstMul(1/std)``
  (exact per-channel affine maps, which ``certify.ir.simplify`` folds into the next layer).

Parameters are referenced, not copied: ``Linear(weight=module.weight, ...)`` holds the
module's own ``Parameter``, so gradients of anything computed from the network reach the
module. (Constants derived at trace time -- ``-c`` for ``x - c``, ``1/c`` for ``x / c``,
block-diagonal weights of a Linear applied to a non-flat tensor -- are computed once;
trace again after changing such tensors.)

Semantics are always **eval mode**, whatever ``module.training`` says: BatchNorm uses its
running statistics, Dropout is the identity. The module itself is not modified.

Anything else raises ``IRError`` (a ``CertifyError``) naming the fx node and the op.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from certify.errors import CertifyError
from certify.frontends import GraphBuilder
from certify.ir import Network
from certify.ir.ops import (Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul, Conv2d, Flatten, IRError,
                            MaxPool2d, ReLU, Sigmoid, Sub, Tanh)
from certify.ir.ops import (Cos, Exp, Floor, LeakyReLU, Log, MatMul, Mul, Pow, Reciprocal, Sign, Sin,
                            Softmax)
from certify.ir.ops import ConvTranspose2d, Gather, Pad, ReduceMean, ReduceSum, Slice, Transpose


class _Batch:
    """The symbolic batch size (``x.size(0)``): allowed only as the first dim of a view."""

    def __repr__(self):
        return "<batch size>"


BATCH = _Batch()


class _Dyn:
    """A network tensor: the IR node computing it (its shape lives in the builder)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _has_dynamic(v) -> bool:
    if isinstance(v, (_Dyn, _Batch)):
        return True
    if isinstance(v, (list, tuple)):
        return any(_has_dynamic(a) for a in v)
    if isinstance(v, dict):
        return any(_has_dynamic(a) for a in v.values())
    return False


def from_module(module: nn.Module, input_shape: Sequence[int], name: str | None = None,
                check: bool = True) -> Network:
    """Trace ``module`` (per-sample input shape ``input_shape``, no batch dim) into a ``Network``.

    The result shares the module's parameters (gradients flow back) and has eval semantics.
    With ``check`` (default), the network is compared with ``module`` in eval mode on two
    random inputs (module modes restored afterwards); a mismatch -- e.g. from in-place aliasing
    that ``torch.fx`` records as out-of-place (``z = y; z += 1``) -- raises ``IRError``.
    """
    net = _Tracer(module, tuple(int(d) for d in input_shape), name or type(module).__name__).run()
    if check:
        _check_against_module(net, module)
    return net


def _check_against_module(net: Network, module: nn.Module) -> None:
    p = next(iter(module.parameters()), None)
    dtype = net.dtype if p is None else p.dtype
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand((2,) + net.input_shape, generator=gen, dtype=torch.float64, device="cpu").to(dtype)
    if p is not None:
        x = x.to(p.device)
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            ref = module(x.clone())
            got = net(x)
    except Exception as e:  # the module itself fails on inputs of this shape
        raise IRError(f"{net.name}: module cannot be run on inputs of shape (batch, "
                      f"{', '.join(map(str, net.input_shape))}) ({type(e).__name__}: {e})") from None
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(ref, torch.Tensor) or tuple(ref.shape) != tuple(got.shape):
        raise IRError(f"{net.name}: module output {getattr(ref, 'shape', type(ref).__name__)} does not match "
                      f"the traced network's {tuple(got.shape)}")
    err = (ref - got).abs().max().item()
    if not err <= 1e-4 * (1.0 + ref.abs().max().item()):
        raise IRError(f"{net.name}: traced network differs from module.forward by {err:.3g} on a random input; "
                      "the module probably relies on in-place aliasing (z = y; z += 1) or on the batch")


class _Tracer:
    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], name: str):
        if not isinstance(module, nn.Module):
            raise CertifyError(f"from_module expects a torch.nn.Module, got {type(module).__name__}")
        self.module, self.name = module, name
        try:
            self.gm = fx.symbolic_trace(module)
        except Exception as e:
            raise CertifyError(f"{name}: torch.fx cannot trace this module ({type(e).__name__}: {e}); "
                               "data-dependent control flow is not supported") from None
        self.input_shape = input_shape
        self.modules = dict(self.gm.named_modules())

    def run(self) -> Network:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise CertifyError(f"{self.name}: forward must take exactly one tensor input, "
                               f"got {len(placeholders)} ({', '.join(p.name for p in placeholders)})")
        self.b = GraphBuilder(self.input_shape, "input", self.name)
        self.groups: dict[str, set[str]] = {}
        self.nodes = {n.name: n for n in self.gm.graph.nodes}
        env: dict[str, Any] = {}
        out = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = _Dyn("input")
            elif node.op == "get_attr":
                env[node.name] = self.attr(node.target)
            elif node.op == "output":
                out = self.load(node.args[0], env)
            else:
                try:
                    env[node.name] = self.call(node, env)
                except CertifyError:
                    raise
                except Exception as e:  # a rule meeting arguments it does not understand
                    raise IRError(f"{self.name}: fx node {node.name!r}: cannot convert "
                                  f"({type(e).__name__}: {e})") from None
                if self.inplace(node):
                    self.rebind(node, env)
        if not isinstance(out, _Dyn):
            raise CertifyError(f"{self.name}: forward must return a single tensor computed from its input, "
                               f"got {type(out).__name__}")
        return self.b.network(out.name, self.name)

    # ------------------------------------------------------------------ plumbing
    def attr(self, target: str):
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def load(self, a, env):
        return fx.node.map_arg(a, lambda n: env[n.name])

    def shape(self, x: _Dyn) -> tuple[int, ...]:
        return self.b.shapes[x.name]

    def call(self, node: fx.Node, env):
        args, kwargs = self.load(node.args, env), self.load(node.kwargs, env)
        origin = f"fx node {node.name!r} ({self.describe(node)})"
        if self.inplace(node) and not _has_dynamic((args, kwargs)):
            raise self.fail(origin, "in-place op on a constant would modify the module while tracing")
        if node.op == "call_module":
            mod = self.modules[node.target]
            rule = MODULE_RULES.get(type(mod))
            if rule is None and not _has_dynamic((args, kwargs)):
                return mod(*args, **kwargs)
            if rule is None:
                raise self.fail(origin, f"module type {type(mod).__name__} is not supported")
            return rule(self, node, mod, args, kwargs, origin)
        if not _has_dynamic((args, kwargs)):
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return node.target(*args, **kwargs)
        key = node.target if node.op == "call_function" else ("method", node.target)
        rule = FUNCTION_RULES.get(key)
        if rule is None:
            raise self.fail(origin, f"{self.describe(node)} applied to a network tensor is not supported")
        return rule(self, node, args, kwargs, origin)

    def rebind(self, node: fx.Node, env) -> None:
        """After an in-place op on tensor T, every name bound to T now means the new value.

        ``self.groups`` maps node names to the set of names bound to the same tensor object.
        Views share storage without being the same object; an in-place op on a tensor that
        has a view (or is one) is rejected rather than guessed.
        """
        target = node.args[0] if node.args else None
        if not isinstance(target, fx.Node) or not isinstance(env.get(node.name), _Dyn):
            return
        group = self.groups.setdefault(target.name, {target.name})
        for name in group:
            member = self.nodes[name]
            if _viewlike(self, member) or any(_viewlike(self, u) for u in member.users if u is not node):
                raise self.fail(f"fx node {node.name!r} ({self.describe(node)})",
                                f"in-place op on {target.name!r}, which is a view or has views "
                                "(aliasing is not supported)")
        group.add(node.name)
        self.groups[node.name] = group
        for name in group:
            env[name] = env[node.name]

    def inplace(self, node: fx.Node) -> bool:
        """Whether the node overwrites its first argument (``x += y``, ``x.add_(y)``, inplace=True)."""
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_method":
            return node.target.endswith("_") and not node.target.startswith("_")
        return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module {node.target} : {type(self.modules[node.target]).__name__}"
        if node.op == "call_method":
            return f"method .{node.target}()"
        t = node.target
        return f"function {getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', str(t))}".replace("..", ".")

    def fail(self, origin: str, msg: str) -> IRError:
        return IRError(f"{self.name}: {origin}: {msg}")

    def emit(self, op, xs: list[_Dyn], node: fx.Node, origin: str) -> _Dyn:
        return _Dyn(self.b.add(op, [x.name for x in xs], node.name, origin))

    def dyn(self, v, origin: str, what: str = "input") -> _Dyn:
        if not isinstance(v, _Dyn):
            raise self.fail(origin, f"expected a network tensor as {what}, got {type(v).__name__}")
        return v

    def const(self, x: _Dyn, c, origin: str) -> torch.Tensor:
        """Constant ``c`` (torch broadcasting against (B, *shape)) as a per-sample constant."""
        s = self.shape(x)
        dtype = self.b_dtype()
        if isinstance(c, bool) or not isinstance(c, (int, float, torch.Tensor)):
            raise self.fail(origin, f"unsupported operand of type {type(c).__name__}")
        c = c if isinstance(c, torch.Tensor) else torch.tensor(float(c), dtype=dtype)
        if c.dim() > len(s):
            lead = c.shape[: c.dim() - len(s)]
            if any(d != 1 for d in lead):
                raise self.fail(origin, f"constant of shape {tuple(c.shape)} would mix samples of the batch "
                                        f"(per-sample shape {s})")
            c = c.reshape(c.shape[c.dim() - len(s):])
        try:
            out = torch.broadcast_shapes(tuple(c.shape), s)
        except RuntimeError:
            raise self.fail(origin, f"constant of shape {tuple(c.shape)} does not broadcast to {s}") from None
        if tuple(out) != s:
            raise self.fail(origin, f"constant of shape {tuple(c.shape)} would enlarge the tensor {s} to {tuple(out)}")
        return c

    def broadcast(self, a, b, node: fx.Node, origin: str):
        """The operands of an elementwise op with each network tensor broadcast (torch rules, per
        sample) to the common shape: copies of its elements, a flat ``Gather``."""
        dyn = [self.shape(v) for v in (a, b) if isinstance(v, _Dyn)]
        if not dyn or (len(dyn) == 2 and len(dyn[0]) != len(dyn[1])):
            return a, b                 # (per-sample ranks that differ would broadcast over the batch)
        r = len(dyn[0])
        shapes = [self.shape(v) if isinstance(v, _Dyn) else
                  tuple(v.shape[max(0, v.dim() - r):]) if isinstance(v, torch.Tensor) else () for v in (a, b)]
        try:
            out = tuple(torch.broadcast_shapes(*shapes))
        except RuntimeError:
            return a, b                 # reported by the rule
        res = []
        for v, sv in zip((a, b), shapes):
            if isinstance(v, _Dyn) and sv != out:
                n = math.prod(sv)
                src = torch.arange(n).reshape(sv).expand(out).reshape(-1).tolist()
                flat = self.b.reshape(v.name, (n,), node.name + "/flat", origin)
                v = _Dyn(self.b.add(Gather(0, src, out), [flat], node.name + "/broadcast", origin))
            res.append(v)
        return tuple(res)

    def b_dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def reshape_to(self, x: _Dyn, dims: list, node, origin) -> _Dyn:
        """``x.view(*dims)`` where dims[0] is the batch size (``x.size(0)`` or -1)."""
        if len(dims) == 1 and isinstance(dims[0], (list, tuple, torch.Size)):
            dims = list(dims[0])
        dims = list(dims)
        s = self.shape(x)
        n = math.prod(s)
        if not dims or any(isinstance(d, _Batch) for d in dims[1:]):
            raise self.fail(origin, f"view/reshape to {dims}: the batch size may only be the first dim")
        first, rest = dims[0], dims[1:]
        if not all(isinstance(d, int) for d in rest):
            raise self.fail(origin, f"view/reshape to {dims}: dims must be ints or the batch size")
        if first == -1:
            if -1 in rest or math.prod(rest) != n:
                raise self.fail(origin, f"view/reshape to {dims}: the first dim must stay the batch (give "
                                        f"x.size(0) or per-sample dims multiplying to {n})")
        elif not isinstance(first, _Batch):
            raise self.fail(origin, f"view/reshape to {dims}: the first dim must be the batch size "
                                    "(x.size(0), x.shape[0] or -1); fixed batch sizes are not supported")
        if rest.count(-1) > 1:
            raise self.fail(origin, f"view/reshape to {dims}: more than one -1")
        if -1 in rest:
            known = math.prod(d for d in rest if d != -1)
            if known <= 0 or n % known:
                raise self.fail(origin, f"cannot view per-sample shape {s} as {dims}")
            rest[rest.index(-1)] = n // known
        if math.prod(rest) != n:
            raise self.fail(origin, f"cannot view per-sample shape {s} as {dims}")
        return _Dyn(self.b.reshape(x.name, tuple(rest), node.name, origin))


_VIEW_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "expand", "view_as",
                 "reshape_as", "t", "transpose", "permute", "detach", "unflatten", "narrow", "select"}


def _viewlike(t: "_Tracer", node: fx.Node) -> bool:
    """Whether ``node``'s result may share storage with its input (so in-place ops would alias)."""
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op == "call_module":
        return MODULE_RULES.get(type(t.modules[node.target])) in (_m_identity, _m_flatten, _m_unflatten)
    if node.op == "call_function":
        return node.target in (torch.flatten, torch.reshape, operator.getitem, F.dropout, torch.squeeze,
                               torch.unsqueeze, torch.transpose, torch.permute, torch.narrow, torch.select)
    return False


def _arg(args, kwargs, k: int, name: str, default=None):
    if len(args) > k:
        return args[k]
    return kwargs.get(name, default)


# ----------------------------------------------------------------------------- module rules
def _m_linear(t: _Tracer, node, mod: nn.Linear, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    return _Dyn(t.b.linear_last_axis(x.name, mod.weight, mod.bias, node.name, origin))


def _m_conv(t: _Tracer, node, mod: nn.Conv2d, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    if mod.padding_mode != "zeros":
        raise t.fail(origin, f"padding_mode={mod.padding_mode!r} is not supported (only 'zeros')")
    pad = mod.padding
    if isinstance(pad, str):
        if pad == "valid":
            pad = (0, 0)
        else:  # 'same': symmetric only for odd effective kernels at stride 1
            eff = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
            if any(e % 2 for e in eff):
                raise t.fail(origin, "padding='same' with an even kernel pads asymmetrically; not supported")
            pad = tuple(e // 2 for e in eff)
    op = Conv2d(mod.weight, mod.bias, mod.stride, pad, mod.dilation, mod.groups)
    return t.emit(op, [x], node, origin)


def _m_batchnorm(t: _Tracer, node, mod, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    if mod.running_mean is None or mod.running_var is None:
        raise t.fail(origin, "BatchNorm without running statistics (track_running_stats=False) depends on "
                             "the batch; not supported")
    c = mod.num_features
    like = dict(dtype=mod.running_mean.dtype, device=mod.running_mean.device)
    w = mod.weight if mod.weight is not None else torch.ones(c, **like)
    b = mod.bias if mod.bias is not None else torch.zeros(c, **like)
    return t.emit(BatchNorm(mod.running_mean, mod.running_var, w, b, float(mod.eps)), [x], node, origin)


def _m_simple(op_cls):
    def rule(t: _Tracer, node, mod, args, kwargs, origin):
        return t.emit(op_cls(), [t.dyn(args[0], origin)], node, origin)
    return rule


def _m_identity(t: _Tracer, node, mod, args, kwargs, origin):
    return t.dyn(args[0], origin)


def _pool(t: _Tracer, node, x, kind, kernel, stride, padding, ceil_mode, origin, dilation=1,
          count_include_pad=True, divisor_override=None, return_indices=False):
    if ceil_mode:
        raise t.fail(origin, "ceil_mode=True is not supported")
    if divisor_override is not None:
        raise t.fail(origin, "divisor_override is not supported")
    if return_indices:
        raise t.fail(origin, "return_indices=True is not supported")
    if any(d != 1 for d in ((dilation, dilation) if isinstance(dilation, int) else dilation)):
        raise t.fail(origin, "dilated pooling is not supported")
    stride = stride if stride not in (None, [], ()) else kernel
    if kind == "max":
        return t.emit(MaxPool2d(kernel, stride, padding), [x], node, origin)
    return t.emit(AvgPool2d(kernel, stride, padding, bool(count_include_pad)), [x], node, origin)


def _m_maxpool(t: _Tracer, node, mod: nn.MaxPool2d, args, kwargs, origin):
    return _pool(t, node, t.dyn(args[0], origin), "max", mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                 origin, dilation=mod.dilation, return_indices=mod.return_indices)


def _m_avgpool(t: _Tracer, node, mod: nn.AvgPool2d, args, kwargs, origin):
    return _pool(t, node, t.dyn(args[0], origin), "avg", mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                 origin, count_include_pad=mod.count_include_pad, divisor_override=mod.divisor_override)


def _m_flatten(t: _Tracer, node, mod: nn.Flatten, args, kwargs, origin):
    return _flatten(t, node, t.dyn(args[0], origin), mod.start_dim, mod.end_dim, origin)


def _m_unflatten(t: _Tracer, node, mod: nn.Unflatten, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    s = list(t.shape(x))
    dim = mod.dim + len(s) + 1 if mod.dim < 0 else mod.dim
    if dim == 0:
        raise t.fail(origin, "unflattening the batch dimension is not supported")
    sizes = list(mod.unflattened_size)
    if -1 in sizes:
        sizes[sizes.index(-1)] = s[dim - 1] // math.prod(d for d in sizes if d != -1)
    return t.reshape_to(x, [BATCH] + s[:dim - 1] + sizes + s[dim:], node, origin)


# ----------------------------------------------------------------------------- data movement and reductions
def _moved(t: _Tracer, node, x: _Dyn, fn, origin) -> _Dyn:
    """``fn`` (a batch (1, *s) -> (1, *out) function) only moves or copies elements (nearest
    upsampling, expand, repeat, flip, roll, pixel shuffle, ...): evaluated on the tensor of element
    numbers, its output names the source of every element (``GraphBuilder.element_map``)."""
    s = t.shape(x)
    n = math.prod(s)
    with torch.no_grad():
        src = fn(torch.arange(n, dtype=torch.float64).reshape((1,) + s))
    if not isinstance(src, torch.Tensor) or src.dim() < 2 or src.shape[0] != 1 or src.numel() == 0:
        raise t.fail(origin, "the op changes the batch dimension; not supported")
    if not bool((src == src.round()).all() & (src >= 0).all() & (src < n).all()):
        raise t.fail(origin, "the op does not copy elements (it interpolates or computes); not supported")
    return _Dyn(t.b.element_map(x.name, src[0], node.name, origin, t.b_dtype()))


def _m_moved(t: _Tracer, node, mod, args, kwargs, origin):
    return _moved(t, node, t.dyn(args[0], origin), mod, origin)


def _m_conv_transpose(t: _Tracer, node, mod: nn.ConvTranspose2d, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    if mod.padding_mode != "zeros" or len(args) > 1 or kwargs:
        raise t.fail(origin, "only zero padding and no output_size argument are supported")
    op = ConvTranspose2d(mod.weight, mod.bias, mod.stride, mod.padding, mod.output_padding, mod.dilation, mod.groups)
    return t.emit(op, [x], node, origin)


def _m_pad(t: _Tracer, node, mod, args, kwargs, origin):
    return _pad(t, node, t.dyn(args[0], origin), list(mod.padding), float(getattr(mod, "value", 0.0)), origin)


def _pad(t: _Tracer, node, x: _Dyn, pad: list, value: float, origin) -> _Dyn:
    """torch's pad list: (before, after) pairs from the last dimension backwards."""
    s = t.shape(x)
    if len(pad) % 2 or len(pad) // 2 > len(s):
        raise t.fail(origin, f"pad {list(pad)} does not fit per-sample shape {s} (the batch cannot be padded)")
    pairs = [(0, 0)] * len(s)
    for k in range(len(pad) // 2):
        pairs[len(s) - 1 - k] = (int(pad[2 * k]), int(pad[2 * k + 1]))
    return t.emit(Pad(tuple(pairs), 0.0 if value is None else float(value)), [x], node, origin)


MODULE_RULES = {
    nn.Linear: _m_linear, nn.Conv2d: _m_conv, nn.BatchNorm1d: _m_batchnorm, nn.BatchNorm2d: _m_batchnorm,
    nn.ReLU: _m_simple(ReLU), nn.Sigmoid: _m_simple(Sigmoid), nn.Tanh: _m_simple(Tanh),
    nn.MaxPool2d: _m_maxpool, nn.AvgPool2d: _m_avgpool, nn.Flatten: _m_flatten, nn.Unflatten: _m_unflatten,
    nn.Identity: _m_identity, nn.Dropout: _m_identity, nn.Dropout1d: _m_identity, nn.Dropout2d: _m_identity,
    nn.AlphaDropout: _m_identity,
    # data movement and reductions
    nn.ConvTranspose2d: _m_conv_transpose, nn.Upsample: _m_moved, nn.UpsamplingNearest2d: _m_moved,
    nn.PixelShuffle: _m_moved, nn.PixelUnshuffle: _m_moved, nn.ZeroPad2d: _m_pad, nn.ConstantPad1d: _m_pad,
    nn.ConstantPad2d: _m_pad, nn.ConstantPad3d: _m_pad,
}
"""One rule per leaf module type (others are traced through by torch.fx)."""


# ----------------------------------------------------------------------------- function rules
def _flatten(t: _Tracer, node, x: _Dyn, start: int, end: int, origin) -> _Dyn:
    s = t.shape(x)
    r = len(s) + 1
    start, end = start + r if start < 0 else start, end + r if end < 0 else end
    if start == 0:
        raise t.fail(origin, "flattening the batch dimension (start_dim=0) is not supported; use "
                             "torch.flatten(x, 1)")
    if start == 1 and end == r - 1:
        return t.emit(Flatten(), [x], node, origin)
    new = s[:start - 1] + (math.prod(s[start - 1:end]),) + s[end:]
    return _Dyn(t.b.reshape(x.name, new, node.name, origin))


def _f_flatten(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    return _flatten(t, node, x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1), origin)


def _f_view(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    dims = list(args[1:]) if len(args) > 1 else [kwargs.get("shape", kwargs.get("size"))]
    return t.reshape_to(x, dims, node, origin)


def _f_size(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    full = (BATCH,) + t.shape(x)
    dim = _arg(args, kwargs, 1, "dim")
    return tuple(full) if dim is None else full[dim]


def _f_getattr(t: _Tracer, node, args, kwargs, origin):
    x, attr = args[0], args[1]
    if isinstance(x, _Dyn) and attr == "shape":
        return (BATCH,) + t.shape(x)
    raise t.fail(origin, f"attribute {attr!r} of a network tensor is not supported")


def _f_getitem(t: _Tracer, node, args, kwargs, origin):
    obj, idx = args
    if isinstance(obj, (tuple, list)):
        return obj[idx]
    if isinstance(obj, _Dyn):
        return _index(t, node, obj, idx, origin)
    raise t.fail(origin, f"indexing a {type(obj).__name__} is not supported")


def _f_act(op_cls):
    def rule(t: _Tracer, node, args, kwargs, origin):
        return t.emit(op_cls(), [t.dyn(args[0], origin)], node, origin)
    return rule


def _f_identity(t: _Tracer, node, args, kwargs, origin):
    return t.dyn(args[0], origin)


def _binary(kind: str, reverse: bool = False):
    def rule(t: _Tracer, node, args, kwargs, origin):
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        if reverse:
            a, b = b, a
        alpha = kwargs.get("alpha", 1)
        if alpha != 1:
            raise t.fail(origin, f"alpha={alpha} is not supported")
        if kind in ("div",) and kwargs.get("rounding_mode") is not None:
            raise t.fail(origin, "rounding division is not supported")
        a, b = t.broadcast(a, b, node, origin)
        if isinstance(a, _Dyn) and isinstance(b, _Dyn):
            sa, sb = t.shape(a), t.shape(b)
            if kind in ("mul", "div"):
                return _product(t, node, a, b, kind, origin)
            if sa != sb:
                raise t.fail(origin, f"operands of shapes {sa} and {sb} differ; broadcasting two network "
                                     "tensors is not supported")
            if kind == "add":
                return t.emit(Add(), [a, b], node, origin)
            if kind == "sub":
                return t.emit(Sub(), [a, b], node, origin)
            raise t.fail(origin, f"{kind} of two network tensors is not supported (not piecewise linear)")
        if isinstance(a, _Dyn):
            x, c, x_first = a, t.const(a, b, origin), True
        elif isinstance(b, _Dyn):
            x, c, x_first = b, t.const(b, a, origin), False
        else:
            raise t.fail(origin, f"unsupported operands {type(a).__name__}, {type(b).__name__}")
        if kind == "add":
            return t.emit(ConstAdd(c), [x], node, origin)
        if kind == "mul":
            return t.emit(ConstMul(c), [x], node, origin)
        if kind == "sub" and x_first:
            return t.emit(ConstAdd(-c), [x], node, origin)
        if kind == "sub":
            neg = _Dyn(t.b.add(ConstMul(torch.tensor(-1.0, dtype=c.dtype)), [x.name], node.name + "/neg", origin))
            return t.emit(ConstAdd(c), [neg], node, origin)
        if x_first:
            if bool((c == 0).any()):
                raise t.fail(origin, "division by a constant with a zero entry")
            return t.emit(ConstMul(1.0 / c), [x], node, origin)
        rec = _Dyn(t.b.add(Reciprocal(), [x.name], node.name + "/reciprocal", origin))
        return t.emit(ConstMul(c), [rec], node, origin)          # constant / network tensor
    return rule


def _f_neg(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    return t.emit(ConstMul(torch.tensor(-1.0, dtype=t.b_dtype())), [x], node, origin)


def _f_cat(t: _Tracer, node, args, kwargs, origin):
    xs = list(args[0])
    dim = _arg(args, kwargs, 1, "dim", 0)
    xs = [t.dyn(x, origin, "every concatenated tensor") for x in xs]
    r = len(t.shape(xs[0])) + 1
    dim = dim + r if dim < 0 else dim
    if dim == 0:
        raise t.fail(origin, "concatenation along the batch dimension is not supported")
    return t.emit(Concat(dim - 1), xs, node, origin)


def _f_linear(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    w, b = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    if not isinstance(w, torch.Tensor) or not (b is None or isinstance(b, torch.Tensor)):
        raise t.fail(origin, "F.linear weights must be constant tensors")
    return _Dyn(t.b.linear_last_axis(x.name, w, b, node.name, origin))


def _f_maxpool(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    g = lambda k, n, d: _arg(args, kwargs, k, n, d)  # noqa: E731
    return _pool(t, node, x, "max", g(1, "kernel_size", None), g(2, "stride", None), g(3, "padding", 0),
                 g(5, "ceil_mode", False), origin, dilation=g(4, "dilation", 1),
                 return_indices=g(6, "return_indices", False))


def _f_avgpool(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    g = lambda k, n, d: _arg(args, kwargs, k, n, d)  # noqa: E731
    return _pool(t, node, x, "avg", g(1, "kernel_size", None), g(2, "stride", None), g(3, "padding", 0),
                 g(4, "ceil_mode", False), origin, count_include_pad=g(5, "count_include_pad", True),
                 divisor_override=g(6, "divisor_override", None))


def _f_contiguous(t: _Tracer, node, args, kwargs, origin):
    return t.dyn(args[0], origin)


# ----------------------------------------------------------------------------- nonlinear rules
def _product(t: _Tracer, node, a: _Dyn, b: _Dyn, kind: str, origin) -> _Dyn:
    sa, sb = t.shape(a), t.shape(b)
    if len(sa) != len(sb):
        raise t.fail(origin, f"operands of per-sample shapes {sa} and {sb} have different ranks (broadcasting "
                             "would mix the batch axis with a data axis)")
    if kind == "div":
        b = _Dyn(t.b.add(Reciprocal(), [b.name], node.name + "/reciprocal", origin))
    return t.emit(Mul(), [a, b], node, origin)


def _f_matmul(t: _Tracer, node, args, kwargs, origin):
    a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
    if isinstance(a, _Dyn) and isinstance(b, _Dyn):
        return t.emit(MatMul(), [a, b], node, origin)
    if isinstance(a, _Dyn) and isinstance(b, torch.Tensor) and b.dim() == 2:
        return _Dyn(t.b.linear_last_axis(a.name, b.t(), None, node.name, origin))
    raise t.fail(origin, "matmul is supported for two network tensors or a network tensor times a constant matrix")


def _f_pow(t: _Tracer, node, args, kwargs, origin):
    base, e = args[0], args[1] if len(args) > 1 else kwargs.get("exponent")
    if not isinstance(base, _Dyn) or isinstance(e, _Dyn):
        raise t.fail(origin, "pow is supported for a network tensor base and a constant exponent")
    if isinstance(e, torch.Tensor) and e.numel() == 1:
        e = float(e)
    if isinstance(e, bool) or not isinstance(e, (int, float)):
        raise t.fail(origin, f"the exponent must be a number, got {type(e).__name__}")
    return t.emit(Pow(float(e)), [base], node, origin)


def _f_power(p: float):
    def rule(t: _Tracer, node, args, kwargs, origin):
        return t.emit(Pow(p), [t.dyn(args[0], origin)], node, origin)
    return rule


def _f_leaky_relu(t: _Tracer, node, args, kwargs, origin):
    return t.emit(LeakyReLU(float(_arg(args, kwargs, 1, "negative_slope", 0.01))), [t.dyn(args[0], origin)], node,
                  origin)


def _softmax(t: _Tracer, node, x: _Dyn, dim, origin) -> _Dyn:
    if dim is None:
        raise t.fail(origin, "softmax needs an explicit dim")
    r = len(t.shape(x)) + 1
    dim = dim + r if dim < 0 else dim
    if not 1 <= dim < r:
        raise t.fail(origin, f"softmax over dim {dim} of a tensor with {r} dims (the batch is dim 0) is not supported")
    return t.emit(Softmax(dim - 1), [x], node, origin)


def _f_softmax(t: _Tracer, node, args, kwargs, origin):
    return _softmax(t, node, t.dyn(args[0], origin), _arg(args, kwargs, 1, "dim"), origin)


def _m_leaky_relu(t: _Tracer, node, mod: nn.LeakyReLU, args, kwargs, origin):
    return t.emit(LeakyReLU(float(mod.negative_slope)), [t.dyn(args[0], origin)], node, origin)


def _m_softmax(t: _Tracer, node, mod: nn.Softmax, args, kwargs, origin):
    return _softmax(t, node, t.dyn(args[0], origin), mod.dim, origin)


_NONLINEAR_FUNCTIONS = {
    F.leaky_relu: _f_leaky_relu, F.softmax: _f_softmax, torch.softmax: _f_softmax, ("method", "softmax"): _f_softmax,
    operator.pow: _f_pow, torch.pow: _f_pow, ("method", "pow"): _f_pow,
    torch.sqrt: _f_power(0.5), ("method", "sqrt"): _f_power(0.5),
    torch.square: _f_power(2.0), ("method", "square"): _f_power(2.0),
    operator.matmul: _f_matmul, torch.matmul: _f_matmul, torch.bmm: _f_matmul, ("method", "matmul"): _f_matmul,
    ("method", "bmm"): _f_matmul,
}
for _name, _op in (("exp", Exp), ("log", Log), ("reciprocal", Reciprocal), ("sin", Sin), ("cos", Cos),
                   ("sign", Sign), ("floor", Floor)):
    _NONLINEAR_FUNCTIONS[getattr(torch, _name)] = _NONLINEAR_FUNCTIONS[("method", _name)] = _f_act(_op)
# ----------------------------------------------------------------------------- data movement and reductions
def _dim(t: _Tracer, x: _Dyn, d, origin, extra: int = 0) -> int:
    """torch dim ``d`` (batch = 0) of ``x`` as a per-sample axis; ``extra``: dims the op adds."""
    r = len(t.shape(x)) + 1 + extra
    if not isinstance(d, int) or not -r <= d < r:
        raise t.fail(origin, f"dim {d!r} out of range")
    d = d + r if d < 0 else d
    if d == 0:
        raise t.fail(origin, "operating on the batch dimension is not supported")
    return d - 1


def _cut(t: _Tracer, node, x: _Dyn, axis: int, start: int, stop: int, step: int, origin, hint="") -> _Dyn:
    n = t.shape(x)[axis]
    a, b, c = slice(start, stop, step).indices(n)
    if len(range(a, b, c)) == 0:
        raise t.fail(origin, f"empty slice [{start}:{stop}:{step}] of a dim of size {n}")
    if (a, b, c) == (0, n, 1):
        return x
    return _Dyn(t.b.add(Slice(axis, a, b, c), [x.name], node.name + hint, origin))


def _take(t: _Tracer, node, x: _Dyn, axis: int, idx, origin) -> _Dyn:
    """Constant integer indices (int, list, tensor) along ``axis`` (numpy.take)."""
    if isinstance(idx, _Dyn) or (isinstance(idx, torch.Tensor) and idx.dtype == torch.bool):
        raise t.fail(origin, "indices must be constant integers (no network tensor, no mask)")
    i = torch.as_tensor(idx)
    if i.is_floating_point():
        raise t.fail(origin, "indices must be integers")
    n = t.shape(x)[axis]
    if i.numel() == 0 or bool((i < -n).any() | (i >= n).any()):
        raise t.fail(origin, f"indices out of range for a dim of size {n}")
    op = Gather(axis, [int(v) % n for v in i.reshape(-1).tolist()], tuple(i.shape))
    return _Dyn(t.b.add(op, [x.name], node.name, origin))


def _index(t: _Tracer, node, x: _Dyn, idx, origin) -> _Dyn:
    """``x[idx]`` with slices, ints, None, Ellipsis and at most one constant index list."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if sum(it is Ellipsis for it in items) > 1:
        raise t.fail(origin, "more than one Ellipsis")
    used = sum(it is not None and it is not Ellipsis for it in items)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items[k:k + 1] = [slice(None)] * (len(t.shape(x)) + 1 - used)
    if not items or items[0] != slice(None):
        raise t.fail(origin, "indexing must keep the batch dimension whole (x[:, ...])")
    lists = [it for it in items if isinstance(it, (list, torch.Tensor))]
    if len(lists) > 1:
        raise t.fail(origin, "more than one index list (advanced indexing) is not supported")
    axis = 0
    for it in items[1:]:
        if it is None:
            s = t.shape(x)
            x = _Dyn(t.b.reshape(x.name, s[:axis] + (1,) + s[axis:], node.name + "/unsqueeze", origin))
            axis += 1
        elif isinstance(it, slice):
            if axis >= len(t.shape(x)):
                raise t.fail(origin, "too many indices")
            x = _cut(t, node, x, axis, it.start, it.stop, it.step, origin, "/slice")
            axis += 1
        elif isinstance(it, (int, list, torch.Tensor)) and not isinstance(it, bool):
            if axis >= len(t.shape(x)):
                raise t.fail(origin, "too many indices")
            x = _take(t, node, x, axis, it, origin)
            axis += 0 if isinstance(it, int) else torch.as_tensor(it).dim()
        else:
            raise t.fail(origin, f"index {it!r} is not supported")
    return x


def _f_narrow(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    axis = _dim(t, x, _arg(args, kwargs, 1, "dim"), origin)
    start, length = _arg(args, kwargs, 2, "start"), _arg(args, kwargs, 3, "length")
    start = start + t.shape(x)[axis] if start < 0 else start
    return _cut(t, node, x, axis, start, start + length, 1, origin)


def _parts(t: _Tracer, node, x: _Dyn, axis: int, sizes: list, origin) -> tuple:
    out, at = [], 0
    for k, n in enumerate(sizes):
        out.append(_cut(t, node, x, axis, at, at + n, 1, origin, f"/{k}"))
        at += n
    return tuple(out)


def _f_split(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    size = _arg(args, kwargs, 1, "split_size_or_sections", kwargs.get("split_size"))
    axis = _dim(t, x, _arg(args, kwargs, 2, "dim", 0), origin)
    n = t.shape(x)[axis]
    sizes = [int(v) for v in size] if isinstance(size, (list, tuple)) else [min(size, n - a) for a in range(0, n, size)]
    if sum(sizes) != n or min(sizes) <= 0:
        raise t.fail(origin, f"split sizes {sizes} do not divide a dim of size {n}")
    return _parts(t, node, x, axis, sizes, origin)


def _f_chunk(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    chunks = _arg(args, kwargs, 1, "chunks")
    axis = _dim(t, x, _arg(args, kwargs, 2, "dim", 0), origin)
    n = t.shape(x)[axis]
    k = -(-n // chunks)
    return _parts(t, node, x, axis, [min(k, n - a) for a in range(0, n, k)], origin)


def _f_unbind(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    axis = _dim(t, x, _arg(args, kwargs, 1, "dim", 0), origin)
    return tuple(_take(t, node, x, axis, k, origin) for k in range(t.shape(x)[axis]))


def _f_index_select(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    return _take(t, node, x, _dim(t, x, _arg(args, kwargs, 1, "dim"), origin), _arg(args, kwargs, 2, "index"),
                 origin)


def _f_permute(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    dims = list(args[1:]) if len(args) > 1 else list(kwargs.get("dims", ()))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    r = len(t.shape(x)) + 1
    dims = [d + r if d < 0 else d for d in dims]
    if sorted(dims) != list(range(r)) or dims[0] != 0:
        raise t.fail(origin, f"permute {dims} must be a permutation that keeps the batch dimension first")
    return t.emit(Transpose(tuple(d - 1 for d in dims[1:])), [x], node, origin)


def _f_transpose(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    a = _dim(t, x, _arg(args, kwargs, 1, "dim0"), origin)
    b = _dim(t, x, _arg(args, kwargs, 2, "dim1"), origin)
    perm = list(range(len(t.shape(x))))
    perm[a], perm[b] = perm[b], perm[a]
    return x if a == b else t.emit(Transpose(tuple(perm)), [x], node, origin)


def _f_squeeze(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    s = t.shape(x)
    d = _arg(args, kwargs, 1, "dim")
    axes = [k for k, v in enumerate(s) if v == 1] if d is None else \
        [_dim(t, x, v, origin) for v in (d if isinstance(d, (list, tuple)) else [d])]
    new = tuple(v for k, v in enumerate(s) if not (k in axes and v == 1))
    return _Dyn(t.b.reshape(x.name, new or (1,), node.name, origin))


def _f_unsqueeze(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    axis = _dim(t, x, _arg(args, kwargs, 1, "dim"), origin, extra=1)
    s = t.shape(x)
    return _Dyn(t.b.reshape(x.name, s[:axis] + (1,) + s[axis:], node.name, origin))


def _f_reduce(op_cls):
    def rule(t: _Tracer, node, args, kwargs, origin):
        x = t.dyn(args[0], origin)
        d = _arg(args, kwargs, 1, "dim")
        if d is None:
            raise t.fail(origin, "a reduction over every dimension includes the batch; give dim")
        if kwargs.get("dtype") is not None:
            raise t.fail(origin, "dtype= is not supported")
        axes = [_dim(t, x, v, origin) for v in (d if isinstance(d, (list, tuple)) else [d])]
        return t.emit(op_cls(tuple(axes), bool(_arg(args, kwargs, 2, "keepdim", False))), [x], node, origin)
    return rule


def _f_pad(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    mode = _arg(args, kwargs, 2, "mode", "constant")
    if mode != "constant":
        raise t.fail(origin, f"pad mode {mode!r} is not supported (only constant)")
    return _pad(t, node, x, list(_arg(args, kwargs, 1, "pad")), _arg(args, kwargs, 3, "value", 0.0), origin)


def _f_conv_transpose(t: _Tracer, node, args, kwargs, origin):
    x = t.dyn(args[0], origin)
    g = lambda k, n, d: _arg(args, kwargs, k, n, d)  # noqa: E731
    w, b = g(1, "weight", None), g(2, "bias", None)
    if not isinstance(w, torch.Tensor) or not (b is None or isinstance(b, torch.Tensor)):
        raise t.fail(origin, "transposed-convolution weights must be constant tensors")
    op = ConvTranspose2d(w, b, g(3, "stride", 1), g(4, "padding", 0), g(5, "output_padding", 0),
                         g(7, "dilation", 1), g(6, "groups", 1))
    return t.emit(op, [x], node, origin)


def _f_moved(t: _Tracer, node, args, kwargs, origin):
    """A function or method that only moves or copies elements, traced on element numbers."""
    x = t.dyn(args[0], origin)
    rest = [1 if isinstance(a, _Batch) else a for a in args[1:]]
    if _has_dynamic((rest, kwargs)):
        raise t.fail(origin, "only the first argument may be a network tensor")
    if node.op == "call_method":
        return _moved(t, node, x, lambda ids: getattr(ids, node.target)(*rest, **kwargs), origin)
    return _moved(t, node, x, lambda ids: node.target(ids, *rest, **kwargs), origin)


def _f_stack(t: _Tracer, node, args, kwargs, origin):
    xs = [t.dyn(x, origin, "every stacked tensor") for x in _arg(args, kwargs, 0, "tensors")]
    axis = _dim(t, xs[0], _arg(args, kwargs, 1, "dim", 0), origin, extra=1)
    s = t.shape(xs[0])
    ups = [t.b.reshape(x.name, s[:axis] + (1,) + s[axis:], node.name + "/unsqueeze", origin) for x in xs]
    return _Dyn(t.b.add(Concat(axis), ups, node.name, origin))


_ADD, _SUB, _MUL, _DIV = _binary("add"), _binary("sub"), _binary("mul"), _binary("div")
_INPLACE_FUNCTIONS = (operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_, F.relu_)
FUNCTION_RULES = {
    operator.iadd: _ADD, operator.isub: _SUB, operator.imul: _MUL, operator.itruediv: _DIV,
    ("method", "add_"): _ADD, ("method", "sub_"): _SUB, ("method", "mul_"): _MUL, ("method", "div_"): _DIV,
    ("method", "relu_"): _f_act(ReLU), torch.relu_: _f_act(ReLU), F.relu_: _f_act(ReLU),
    operator.add: _ADD, operator.sub: _SUB, operator.mul: _MUL, operator.truediv: _DIV, operator.neg: _f_neg,
    torch.add: _ADD, torch.sub: _SUB, torch.mul: _MUL, torch.div: _DIV, torch.neg: _f_neg,
    ("method", "add"): _ADD, ("method", "sub"): _SUB, ("method", "mul"): _MUL, ("method", "div"): _DIV,
    ("method", "neg"): _f_neg, ("method", "rsub"): _binary("sub", reverse=True), torch.rsub: _binary("sub", True),
    torch.relu: _f_act(ReLU), F.relu: _f_act(ReLU), ("method", "relu"): _f_act(ReLU),
    torch.sigmoid: _f_act(Sigmoid), F.sigmoid: _f_act(Sigmoid), ("method", "sigmoid"): _f_act(Sigmoid),
    torch.tanh: _f_act(Tanh), F.tanh: _f_act(Tanh), ("method", "tanh"): _f_act(Tanh),
    torch.flatten: _f_flatten, ("method", "flatten"): _f_flatten,
    torch.reshape: _f_view, ("method", "view"): _f_view, ("method", "reshape"): _f_view,
    ("method", "size"): _f_size, getattr: _f_getattr, operator.getitem: _f_getitem,
    torch.cat: _f_cat, torch.concat: _f_cat, F.linear: _f_linear,
    F.max_pool2d: _f_maxpool, F.avg_pool2d: _f_avgpool,
    F.dropout: _f_identity, ("method", "contiguous"): _f_contiguous,
    # data movement and reductions
    torch.narrow: _f_narrow, ("method", "narrow"): _f_narrow, torch.split: _f_split, ("method", "split"): _f_split,
    torch.chunk: _f_chunk, ("method", "chunk"): _f_chunk, torch.unbind: _f_unbind, ("method", "unbind"): _f_unbind,
    torch.index_select: _f_index_select, ("method", "index_select"): _f_index_select,
    torch.permute: _f_permute, ("method", "permute"): _f_permute, torch.transpose: _f_transpose,
    ("method", "transpose"): _f_transpose, torch.swapaxes: _f_transpose, ("method", "swapaxes"): _f_transpose,
    torch.squeeze: _f_squeeze, ("method", "squeeze"): _f_squeeze, torch.unsqueeze: _f_unsqueeze,
    ("method", "unsqueeze"): _f_unsqueeze, torch.sum: _f_reduce(ReduceSum), ("method", "sum"): _f_reduce(ReduceSum),
    torch.mean: _f_reduce(ReduceMean), ("method", "mean"): _f_reduce(ReduceMean), F.pad: _f_pad,
    F.conv_transpose2d: _f_conv_transpose, torch.stack: _f_stack,
    F.interpolate: _f_moved, torch.flip: _f_moved, ("method", "flip"): _f_moved, torch.roll: _f_moved,
    ("method", "roll"): _f_moved, ("method", "expand"): _f_moved, ("method", "repeat"): _f_moved,
    torch.tile: _f_moved, ("method", "tile"): _f_moved, torch.repeat_interleave: _f_moved,
    ("method", "repeat_interleave"): _f_moved, F.pixel_shuffle: _f_moved, F.pixel_unshuffle: _f_moved,
}
"""One rule per function (or ``("method", name)``) applied to a network tensor."""
FUNCTION_RULES.update(_NONLINEAR_FUNCTIONS)
MODULE_RULES.update({nn.LeakyReLU: _m_leaky_relu, nn.Softmax: _m_softmax})

__all__ = ["from_module", "MODULE_RULES", "FUNCTION_RULES"]
