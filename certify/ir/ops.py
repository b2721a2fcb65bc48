"""The IR's ops: each defined once, with its shape rule and its reference torch semantics.

Conventions
-----------
* Shapes are **per sample**: a tuple without the batch dimension. ``forward`` receives
  tensors of shape ``(B, *shape)``.
* Parameters are ``torch.Tensor`` attributes. They are referenced, not copied, so a
  network built from a ``torch.nn.Module`` shares the module's parameters (gradients
  flow back to the module: certified training relies on it).
* ``infer_shape`` raises ``IRError`` naming the problem; it is called once when a
  ``Network`` is built, so bad shapes fail at build time, never later.

Engines keep one rule per op class here, in a dict keyed by the class. The data-movement and
reduction ops derive from ``LinearMap`` (affine in their input), which engines may bound
through the op's reference ``forward`` alone.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
import torch.nn.functional as F

from certify.errors import CertifyError

Shape = tuple[int, ...]


class IRError(CertifyError, ValueError):
    """A network that the IR cannot represent or whose shapes do not fit."""


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise IRError(f"expected an int or a pair, got {v}")
    return v


def _broadcast_into(c: torch.Tensor, shape: Shape, what: str) -> None:
    """Check that constant ``c`` broadcasts onto per-sample ``shape`` without enlarging it."""
    try:
        out = torch.broadcast_shapes(tuple(c.shape), tuple(shape))
    except RuntimeError as e:
        raise IRError(f"{what}: constant of shape {tuple(c.shape)} does not broadcast to {shape}") from e
    if tuple(out) != tuple(shape):
        raise IRError(f"{what}: constant of shape {tuple(c.shape)} would enlarge {shape} to {tuple(out)}")


@dataclass(eq=False)
class Op(ABC):
    """Base class. ``arity`` is the number of node inputs (``None``: one or more)."""

    arity: ClassVar[int | None] = 1

    @property
    def kind(self) -> str:
        return type(self).__name__

    @abstractmethod
    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        """The per-sample output shape for these input shapes; raises ``IRError`` if they do not fit."""

    @abstractmethod
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """The reference torch semantics on batched inputs (B, *shape)."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """The op's parameter tensors by field name (None-valued fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def num_params(self) -> int:
        return sum(t.numel() for t in self.tensors().values())

    def describe(self) -> str:
        """A short human-readable description used by ``Network.summary``."""
        return self.kind

    def map_tensors(self, fn) -> "Op":
        """A copy of this op with ``fn`` applied to every parameter tensor."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = fn(v) if isinstance(v, torch.Tensor) else v
        return type(self)(**kw)


def _same(in_shapes: list[Shape]) -> Shape:
    return tuple(in_shapes[0])


# ----------------------------------------------------------------------------- affine ops
@dataclass(eq=False)
class Linear(Op):
    """y = x @ W.T + b on flat inputs. weight: (out, in); bias: (out,) or None. Input (in,)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if self.weight.dim() != 2:
            raise IRError(f"Linear weight must be 2-D, got shape {tuple(self.weight.shape)}")
        if len(s) != 1 or s[0] != self.weight.shape[1]:
            raise IRError(f"Linear expects input shape ({self.weight.shape[1]},), got {s}")
        if self.bias is not None and tuple(self.bias.shape) != (self.weight.shape[0],):
            raise IRError(f"Linear bias shape {tuple(self.bias.shape)} != ({self.weight.shape[0]},)")
        return (int(self.weight.shape[0]),)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def describe(self):
        return f"Linear {self.weight.shape[1]}->{self.weight.shape[0]}"


@dataclass(eq=False)
class Conv2d(Op):
    """2-D convolution. weight: (O, I/groups, kh, kw); input (I, H, W). Symmetric padding."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        self.stride, self.padding, self.dilation = _pair(self.stride), _pair(self.padding), _pair(self.dilation)

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if len(s) != 3:
            raise IRError(f"Conv2d expects a (C, H, W) input, got {s}")
        o, ig, kh, kw = self.weight.shape
        if s[0] != ig * self.groups:
            raise IRError(f"Conv2d expects {ig * self.groups} input channels, got {s[0]}")
        h = (s[1] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w = (s[2] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if h <= 0 or w <= 0:
            raise IRError(f"Conv2d output would be empty for input {s}")
        return (int(o), int(h), int(w))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def describe(self):
        o, i, kh, kw = self.weight.shape
        return f"Conv2d {i * self.groups}->{o} k{kh}x{kw} s{self.stride[0]} p{self.padding[0]}"


@dataclass(eq=False)
class ConstAdd(Op):
    """y = x + c, with constant c broadcastable onto the input shape (Sub by a constant too)."""

    const: torch.Tensor

    def infer_shape(self, in_shapes):
        _broadcast_into(self.const, in_shapes[0], "ConstAdd")
        return _same(in_shapes)

    def forward(self, x):
        return x + self.const


@dataclass(eq=False)
class ConstMul(Op):
    """y = x * c, with constant c broadcastable onto the input shape (Div by a constant too)."""

    const: torch.Tensor

    def infer_shape(self, in_shapes):
        _broadcast_into(self.const, in_shapes[0], "ConstMul")
        return _same(in_shapes)

    def forward(self, x):
        return x * self.const


@dataclass(eq=False)
class Add(Op):
    """y = a + b of two node inputs of equal shape."""

    arity: ClassVar[int] = 2

    def infer_shape(self, in_shapes):
        a, b = in_shapes
        if tuple(a) != tuple(b):
            raise IRError(f"Add needs equal shapes, got {a} and {b}")
        return tuple(a)

    def forward(self, a, b):
        return a + b


@dataclass(eq=False)
class Sub(Op):
    """y = a - b of two node inputs of equal shape."""

    arity: ClassVar[int] = 2

    def infer_shape(self, in_shapes):
        a, b = in_shapes
        if tuple(a) != tuple(b):
            raise IRError(f"Sub needs equal shapes, got {a} and {b}")
        return tuple(a)

    def forward(self, a, b):
        return a - b


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> (C, 1, ..., 1) for a per-sample tensor of ``ndim`` dims."""
    return t.reshape((-1,) + (1,) * (ndim - 1))


@dataclass(eq=False)
class BatchNorm(Op):
    """Eval-mode batch norm over the channel axis (axis 0 of the per-sample shape)."""

    mean: torch.Tensor
    var: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float = 1e-5

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        c = self.mean.numel()
        if len(s) < 1 or s[0] != c:
            raise IRError(f"BatchNorm over {c} channels got input shape {s}")
        return tuple(s)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) so that y = x * scale + shift. Shapes (C,)."""
        scale = self.weight / torch.sqrt(self.var + self.eps)
        return scale, self.bias - self.mean * scale

    def forward(self, x):
        scale, shift = self.scale_shift()
        nd = x.dim() - 1
        return x * _channel_view(scale, nd) + _channel_view(shift, nd)


@dataclass(eq=False)
class Normalize(Op):
    """Per-channel (x - mean) / std over axis 0 of the per-sample shape."""

    mean: torch.Tensor
    std: torch.Tensor

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        c = self.mean.numel()
        if self.std.numel() != c or len(s) < 1 or s[0] != c:
            raise IRError(f"Normalize over {c} channels got input shape {s}")
        if bool((self.std == 0).any()):
            raise IRError("Normalize std has a zero entry")
        return tuple(s)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) so that y = x * scale + shift. Shapes (C,)."""
        return 1.0 / self.std, -self.mean / self.std

    def forward(self, x):
        nd = x.dim() - 1
        return (x - _channel_view(self.mean, nd)) / _channel_view(self.std, nd)


def _pool_shape(name: str, in_shapes, kernel, stride, padding) -> tuple[int, int, int]:
    """Output shape of a 2-D pooling op on (C, H, W); padding at most half the kernel."""
    (s,) = in_shapes
    if len(s) != 3:
        raise IRError(f"{name} expects (C, H, W), got {s}")
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise IRError(f"{name} padding must be at most half the kernel")
    h = (s[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    w = (s[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if h <= 0 or w <= 0:
        raise IRError(f"{name} output would be empty for input {s}")
    return (s[0], int(h), int(w))


@dataclass(eq=False)
class AvgPool2d(Op):
    """Average pooling on (C, H, W). Padding counts zeros (count_include_pad=True) unless told."""

    kernel: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    count_include_pad: bool = True

    def __post_init__(self):
        self.kernel = _pair(self.kernel)
        self.stride = _pair(self.stride if self.stride is not None else self.kernel)
        self.padding = _pair(self.padding)

    def infer_shape(self, in_shapes):
        return _pool_shape("AvgPool2d", in_shapes, self.kernel, self.stride, self.padding)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=self.count_include_pad)

    def describe(self):
        return f"AvgPool2d k{self.kernel[0]} s{self.stride[0]} p{self.padding[0]}"


@dataclass(eq=False)
class MaxPool2d(Op):
    """Max pooling on (C, H, W); padded positions never win (-inf padding)."""

    kernel: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)

    def __post_init__(self):
        self.kernel = _pair(self.kernel)
        self.stride = _pair(self.stride if self.stride is not None else self.kernel)
        self.padding = _pair(self.padding)

    def infer_shape(self, in_shapes):
        return _pool_shape("MaxPool2d", in_shapes, self.kernel, self.stride, self.padding)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)

    def describe(self):
        return f"MaxPool2d k{self.kernel[0]} s{self.stride[0]} p{self.padding[0]}"


# ----------------------------------------------------------------------------- shape ops
@dataclass(eq=False)
class Flatten(Op):
    """(d1, d2, ...) -> (d1 * d2 * ...,), row-major as torch.flatten(x, 1)."""

    def infer_shape(self, in_shapes):
        return (int(math.prod(in_shapes[0])),)

    def forward(self, x):
        return x.flatten(1)


@dataclass(eq=False)
class Reshape(Op):
    """Row-major reshape of the per-sample tensor to ``shape`` (no batch dim, no -1)."""

    shape: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)

    def infer_shape(self, in_shapes):
        if math.prod(self.shape) != math.prod(in_shapes[0]) or any(d <= 0 for d in self.shape):
            raise IRError(f"Reshape cannot turn {in_shapes[0]} into {self.shape}")
        return self.shape

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.shape)

    def describe(self):
        return f"Reshape {self.shape}"


@dataclass(eq=False)
class Concat(Op):
    """Concatenation of one or more inputs along per-sample ``axis`` (0 = first non-batch dim)."""

    arity: ClassVar[None] = None
    axis: int = 0

    def infer_shape(self, in_shapes):
        first = in_shapes[0]
        ax = self.axis
        if not 0 <= ax < len(first):
            raise IRError(f"Concat axis {ax} out of range for shape {first}")
        for s in in_shapes[1:]:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != ax):
                raise IRError(f"Concat along axis {ax}: shapes {first} and {s} do not fit")
        out = list(first)
        out[ax] = sum(s[ax] for s in in_shapes)
        return tuple(out)

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis + 1)


@dataclass(eq=False)
class Identity(Op):
    """y = x."""

    def infer_shape(self, in_shapes):
        return _same(in_shapes)

    def forward(self, x):
        return x


# ----------------------------------------------------------------------------- data movement and reductions
def _axis(a: int, rank: int, what: str) -> int:
    if not 0 <= a < rank:
        raise IRError(f"{what}: axis {a} out of range for a per-sample tensor of rank {rank}")
    return a


@dataclass(eq=False)
class LinearMap(Op):
    """Base of the ops whose output is ``L(x) + forward(0)`` for one linear map L applied to
    every sample alike (selections, permutations, padding, sums, transposed convolutions).
    Engines bound them through the reference ``forward`` (CROWN: its vector-Jacobian product).
    ``monotone``: L has non-negative coefficients, so ``(forward(lo), forward(hi))`` is the
    exact interval image of a box."""

    monotone: ClassVar[bool] = True

    @property
    def has_offset(self) -> bool:
        """Whether ``forward(0)`` may be nonzero."""
        return False


@dataclass(eq=False)
class Slice(LinearMap):
    """Elements ``range(start, stop, step)`` along per-sample ``axis`` (step may be negative;
    normalized bounds: ``0 <= start < size``, ``-1 <= stop <= size``)."""

    axis: int = 0
    start: int = 0
    stop: int = 1
    step: int = 1

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        ax = _axis(self.axis, len(s), "Slice")
        if self.step == 0 or not (0 <= self.start < s[ax] and -1 <= self.stop <= s[ax]):
            raise IRError(f"Slice range({self.start}, {self.stop}, {self.step}) does not fit axis {ax} of size {s[ax]}")
        n = len(range(self.start, self.stop, self.step))
        if n == 0:
            raise IRError(f"Slice range({self.start}, {self.stop}, {self.step}) is empty")
        return s[:ax] + (n,) + s[ax + 1:]

    def forward(self, x):
        if self.step > 0:
            return x[(slice(None),) * (self.axis + 1) + (slice(self.start, self.stop, self.step),)]
        idx = torch.arange(self.start, self.stop, self.step, device=x.device)
        return x.index_select(self.axis + 1, idx)

    def describe(self):
        return f"Slice axis {self.axis} [{self.start}:{self.stop}:{self.step}]"


@dataclass(eq=False)
class Gather(LinearMap):
    """``numpy.take`` along per-sample ``axis`` with constant non-negative ``indices`` laid out
    as ``index_shape`` (default ``(len(indices),)``; ``()`` for one index, which drops the
    axis): output shape ``s[:axis] + index_shape + s[axis+1:]``."""

    axis: int = 0
    indices: tuple[int, ...] = (0,)
    index_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        self.indices = tuple(int(i) for i in self.indices)
        if self.index_shape is None:
            self.index_shape = (len(self.indices),)
        self.index_shape = tuple(int(d) for d in self.index_shape)
        self._index: dict = {}          # device -> the indices as a tensor, made once

    def index(self, device) -> torch.Tensor:
        t = self._index.get(device)
        if t is None:
            t = self._index[device] = torch.tensor(self.indices, dtype=torch.long, device=device)
        return t

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        ax = _axis(self.axis, len(s), "Gather")
        if math.prod(self.index_shape) != len(self.indices) or not self.indices:
            raise IRError(f"Gather: {len(self.indices)} indices do not fill index shape {self.index_shape}")
        if min(self.indices) < 0 or max(self.indices) >= s[ax]:
            raise IRError(f"Gather: indices outside [0, {s[ax]}) on axis {ax}")
        return s[:ax] + self.index_shape + s[ax + 1:]

    def forward(self, x):
        y = x.index_select(self.axis + 1, self.index(x.device))
        return y.reshape(y.shape[:self.axis + 1] + self.index_shape + y.shape[self.axis + 2:])

    def describe(self):
        return f"Gather axis {self.axis} {len(self.indices)} of {self.index_shape}"


@dataclass(eq=False)
class Transpose(LinearMap):
    """Permutation of the per-sample axes: output axis k is input axis ``perm[k]``."""

    perm: tuple[int, ...] = (0,)

    def __post_init__(self):
        self.perm = tuple(int(p) for p in self.perm)

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if sorted(self.perm) != list(range(len(s))):
            raise IRError(f"Transpose perm {self.perm} is not a permutation of the {len(s)} axes of {s}")
        return tuple(s[p] for p in self.perm)

    def forward(self, x):
        return x.permute((0,) + tuple(p + 1 for p in self.perm))

    def describe(self):
        return f"Transpose {self.perm}"


@dataclass(eq=False)
class Pad(LinearMap):
    """Constant padding: ``pads[k] = (before, after)`` elements of ``value`` added on per-sample
    axis k (a negative count removes elements instead)."""

    pads: tuple[tuple[int, int], ...] = ()
    value: float = 0.0

    def __post_init__(self):
        self.pads = tuple((int(a), int(b)) for a, b in self.pads)
        self.value = float(self.value)

    @property
    def has_offset(self) -> bool:
        return self.value != 0.0

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if len(self.pads) != len(s):
            raise IRError(f"Pad has {len(self.pads)} (before, after) pairs for a tensor of rank {len(s)}")
        out = tuple(d + a + b for d, (a, b) in zip(s, self.pads))
        if any(d <= 0 for d in out) or any(-a >= d or -b >= d for d, (a, b) in zip(s, self.pads)):
            raise IRError(f"Pad {self.pads} removes every element of {s}")
        return out

    def forward(self, x):
        flat = [p for a, b in reversed(self.pads) for p in (a, b)]
        return F.pad(x, flat, mode="constant", value=self.value)

    def describe(self):
        return f"Pad {self.pads}" + (f" value {self.value:g}" if self.value else "")


@dataclass(eq=False)
class _Reduce(LinearMap):
    axes: tuple[int, ...] = (0,)
    keepdims: bool = False

    def __post_init__(self):
        self.axes = tuple(sorted(int(a) for a in self.axes))

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if not self.axes or len(set(self.axes)) != len(self.axes):
            raise IRError(f"{self.kind}: axes {self.axes} must be distinct and not empty")
        for a in self.axes:
            _axis(a, len(s), self.kind)
        out = tuple(1 if k in self.axes else d for k, d in enumerate(s)) if self.keepdims else \
            tuple(d for k, d in enumerate(s) if k not in self.axes)
        return out if out else (1,)

    def _dims(self):
        return tuple(a + 1 for a in self.axes)

    def describe(self):
        return f"{self.kind} axes {self.axes}" + (" keepdims" if self.keepdims else "")


@dataclass(eq=False)
class ReduceSum(_Reduce):
    """Sum over per-sample ``axes`` (kept as size 1 with ``keepdims``; reducing every axis
    without ``keepdims`` gives shape ``(1,)``)."""

    def forward(self, x):
        y = x.sum(self._dims(), keepdim=self.keepdims)
        return y.reshape(-1, 1) if y.dim() == 1 else y


@dataclass(eq=False)
class ReduceMean(_Reduce):
    """Mean over per-sample ``axes`` (shapes as ``ReduceSum``)."""

    def forward(self, x):
        y = x.mean(self._dims(), keepdim=self.keepdims)
        return y.reshape(-1, 1) if y.dim() == 1 else y


@dataclass(eq=False)
class ConvTranspose2d(LinearMap):
    """2-D transposed convolution (the adjoint of ``Conv2d``). weight: (I, O/groups, kh, kw);
    input (I, H, W); output size ``(H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1``."""

    monotone: ClassVar[bool] = False
    weight: torch.Tensor = None
    bias: torch.Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        self.stride, self.padding = _pair(self.stride), _pair(self.padding)
        self.output_padding, self.dilation = _pair(self.output_padding), _pair(self.dilation)

    @property
    def has_offset(self) -> bool:
        return self.bias is not None

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if self.weight is None or self.weight.dim() != 4:
            raise IRError("ConvTranspose2d needs a 4-D weight (I, O/groups, kh, kw)")
        i, og, kh, kw = self.weight.shape
        if len(s) != 3 or s[0] != i or i % self.groups:
            raise IRError(f"ConvTranspose2d expects a ({i}, H, W) input, got {s}")
        if any(op >= max(st, d) for op, st, d in zip(self.output_padding, self.stride, self.dilation)):
            raise IRError(f"ConvTranspose2d output_padding {self.output_padding} must be smaller than "
                          f"the stride or the dilation")
        hw = [(n - 1) * st - 2 * p + d * (k - 1) + op + 1 for n, st, p, d, k, op in
              zip(s[1:], self.stride, self.padding, self.dilation, (kh, kw), self.output_padding)]
        if min(hw) <= 0:
            raise IRError(f"ConvTranspose2d output would be empty for input {s}")
        if self.bias is not None and tuple(self.bias.shape) != (og * self.groups,):
            raise IRError(f"ConvTranspose2d bias shape {tuple(self.bias.shape)} != ({og * self.groups},)")
        return (int(og * self.groups), int(hw[0]), int(hw[1]))

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)

    def describe(self):
        i, og, kh, kw = self.weight.shape
        return f"ConvTranspose2d {i}->{og * self.groups} k{kh}x{kw} s{self.stride[0]} p{self.padding[0]}"


# ----------------------------------------------------------------------------- activations
@dataclass(eq=False)
class _Elementwise(Op):
    """An elementwise activation: output shape = input shape."""

    def infer_shape(self, in_shapes):
        return _same(in_shapes)


@dataclass(eq=False)
class ReLU(_Elementwise):
    """y = max(x, 0)."""

    def forward(self, x):
        return torch.relu(x)


@dataclass(eq=False)
class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x))."""

    def forward(self, x):
        return torch.sigmoid(x)


@dataclass(eq=False)
class Tanh(_Elementwise):
    """y = tanh(x)."""

    def forward(self, x):
        return torch.tanh(x)


# ----------------------------------------------------------------------------- nonlinear ops
@dataclass(eq=False)
class LeakyReLU(_Elementwise):
    """y = x for x >= 0, negative_slope * x for x < 0."""

    negative_slope: float = 0.01

    def __post_init__(self):
        self.negative_slope = float(self.negative_slope)
        if not math.isfinite(self.negative_slope):
            raise IRError(f"LeakyReLU negative_slope must be finite, got {self.negative_slope}")

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def describe(self):
        return f"LeakyReLU {self.negative_slope:g}"


@dataclass(eq=False)
class Exp(_Elementwise):
    """y = exp(x)."""

    def forward(self, x):
        return torch.exp(x)


@dataclass(eq=False)
class Log(_Elementwise):
    """y = log(x) (natural logarithm; -inf at 0, NaN below)."""

    def forward(self, x):
        return torch.log(x)


@dataclass(eq=False)
class Reciprocal(_Elementwise):
    """y = 1 / x (+-inf at 0)."""

    def forward(self, x):
        return torch.reciprocal(x)


@dataclass(eq=False)
class Pow(_Elementwise):
    """y = x ** exponent for a constant exponent; a non-integer exponent needs x >= 0."""

    exponent: float = 2.0

    def __post_init__(self):
        self.exponent = float(self.exponent)
        if not math.isfinite(self.exponent):
            raise IRError(f"Pow exponent must be finite, got {self.exponent}")

    def forward(self, x):
        return torch.pow(x, self.exponent)

    def describe(self):
        return f"Pow {self.exponent:g}"


@dataclass(eq=False)
class Sin(_Elementwise):
    """y = sin(x)."""

    def forward(self, x):
        return torch.sin(x)


@dataclass(eq=False)
class Cos(_Elementwise):
    """y = cos(x)."""

    def forward(self, x):
        return torch.cos(x)


@dataclass(eq=False)
class Sign(_Elementwise):
    """y = -1 for x < 0, 0 at 0, 1 for x > 0."""

    def forward(self, x):
        return torch.sign(x)


@dataclass(eq=False)
class Floor(_Elementwise):
    """y = the largest integer <= x."""

    def forward(self, x):
        return torch.floor(x)


@dataclass(eq=False)
class Softmax(Op):
    """y = exp(x) / sum(exp(x)) along per-sample ``axis`` (0 = first non-batch dim)."""

    axis: int = 0

    def infer_shape(self, in_shapes):
        (s,) = in_shapes
        if not 0 <= self.axis < len(s):
            raise IRError(f"Softmax axis {self.axis} out of range for shape {s}")
        return tuple(s)

    def forward(self, x):
        return torch.softmax(x, dim=self.axis + 1)

    def describe(self):
        return f"Softmax axis {self.axis}"


@dataclass(eq=False)
class Mul(Op):
    """y = a * b of two node inputs of equal rank, broadcast over per-sample dims of size 1."""

    arity: ClassVar[int] = 2

    def infer_shape(self, in_shapes):
        a, b = (tuple(s) for s in in_shapes)
        if len(a) != len(b) or any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
            raise IRError(f"Mul: shapes {a} and {b} do not broadcast (equal ranks, dims equal or 1)")
        return tuple(max(x, y) for x, y in zip(a, b))

    def forward(self, a, b):
        return a * b


@dataclass(eq=False)
class MatMul(Op):
    """y = a @ b of two node inputs: a (..., m, k), b (..., k, n) with equal leading dims -> (..., m, n)."""

    arity: ClassVar[int] = 2

    def infer_shape(self, in_shapes):
        a, b = (tuple(s) for s in in_shapes)
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise IRError(f"MatMul needs shapes (..., m, k) and (..., k, n) with equal leading dims, got {a} and {b}")
        return a[:-1] + b[-1:]

    def forward(self, a, b):
        return torch.matmul(a, b)


NONLINEAR_OPS: tuple[type[Op], ...] = (LeakyReLU, Exp, Log, Reciprocal, Pow, Sin, Cos, Sign, Floor, Softmax, Mul,
                                       MatMul)
ALL_OPS: tuple[type[Op], ...] = (
    Linear, Conv2d, ConstAdd, ConstMul, Add, Sub, BatchNorm, Normalize, AvgPool2d, MaxPool2d,
    Flatten, Reshape, Concat, Identity, ReLU, Sigmoid, Tanh,
) + NONLINEAR_OPS
ACTIVATIONS: tuple[type[Op], ...] = (ReLU, Sigmoid, Tanh, LeakyReLU, Exp, Log, Reciprocal, Pow, Sin, Cos, Sign, Floor)
ALL_OPS = ALL_OPS + (Slice, Gather, Transpose, Pad, ReduceSum, ReduceMean, ConvTranspose2d)
