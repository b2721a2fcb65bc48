"""Front ends: turn a torch ``nn.Module`` or an ONNX file into a ``certify.ir.Network``.

* ``certify.frontends.torch.from_module(module, input_shape)`` traces with ``torch.fx``.
* ``certify.frontends.onnx.load(path)`` reads ``.onnx`` / ``.onnx.gz`` with the ``onnx`` package.

Both build the graph with ``GraphBuilder`` (below), which checks every node's shape as it is
added and reports failures naming the source node, so an unsupported construct fails at load
time with a message naming the op, the node and the file -- never a silent approximation.
"""
from __future__ import annotations

import math

import torch as _torch  # bare `torch` here would be shadowed by the submodule certify.frontends.torch

from certify.ir import Network, Node
from certify.ir.ops import ConvTranspose2d, Gather, Identity, IRError, Linear, Op, Reshape, Shape

MAX_DENSE = 50_000_000
"""Largest dense matrix (entries) a front end builds to express a matmul on a non-flat tensor."""


class GraphBuilder:
    """Accumulates IR nodes in topological order, inferring shapes as it goes.

    ``where`` prefixes every error (e.g. the file name); each ``add`` takes ``origin``, the
    source node's description (e.g. ``"node 'fc1' (Gemm)"``), to name in errors.
    """

    def __init__(self, input_shape: Shape, input_name: str, where: str):
        self.where = where
        self.input_name = input_name
        self.nodes: list[Node] = []
        self.shapes: dict[str, Shape] = {input_name: tuple(int(d) for d in input_shape)}

    def fail(self, origin: str, msg: str) -> IRError:
        """An ``IRError`` naming the file and the source node."""
        return IRError(f"{self.where}: {origin}: {msg}")

    def unique(self, hint: str) -> str:
        name, k = hint or "node", 1
        while name in self.shapes:
            k += 1
            name = f"{hint}_{k}"
        return name

    def add(self, op: Op, inputs: list[str] | tuple[str, ...], hint: str, origin: str) -> str:
        """Append ``op`` applied to ``inputs``; returns the new node's name."""
        try:
            shape = tuple(int(d) for d in op.infer_shape([self.shapes[i] for i in inputs]))
        except IRError as e:
            raise self.fail(origin, str(e)) from None
        name = self.unique(hint)
        self.nodes.append(Node(name, op, tuple(inputs), shape))
        self.shapes[name] = shape
        return name

    def reshape(self, x: str, shape: Shape, hint: str, origin: str) -> str:
        """``x`` reshaped (row-major) to per-sample ``shape``; no node when already that shape."""
        shape = tuple(int(d) for d in shape)
        if self.shapes[x] == shape:
            return x
        return self.add(Reshape(shape), [x], hint, origin)

    def element_map(self, x: str, src, hint: str, origin: str, dtype: _torch.dtype) -> str:
        """A node whose output element k is element ``src[k]`` of flat ``x`` (``src``: integers
        laid out as the per-sample output shape). A nearest upsampling of a (C, H, W) ``x`` by
        integer factors becomes a depthwise transposed convolution with a ones kernel (exact:
        each output is one input times 1; bound propagation keeps its rows as windows), any
        other map one flat ``Gather``."""
        src = _torch.as_tensor(src).long()
        s = self.shapes[x]
        up = upsample_factors(src, s)
        if up is not None:
            sh, sw = up
            op = ConvTranspose2d(_torch.ones((s[0], 1, sh, sw), dtype=dtype), None, (sh, sw), groups=s[0])
            return self.add(op, [x], hint, origin)
        flat = self.reshape(x, (math.prod(s),), hint + "/flat", origin)
        return self.add(Gather(0, src.reshape(-1).tolist(), tuple(src.shape)), [flat], hint + "/moved", origin)

    def affine(self, x: str, A: _torch.Tensor, b: _torch.Tensor | None, out_shape: Shape, hint: str,
               origin: str) -> str:
        """y = A @ flat(x) + b reshaped to ``out_shape``: Reshape -> Linear -> Reshape as needed."""
        if A.numel() > MAX_DENSE:
            raise self.fail(origin, f"would need a dense {tuple(A.shape)} matrix (more than {MAX_DENSE} "
                                    "entries) to express this op on a non-flat tensor")
        n = math.prod(self.shapes[x])
        flat = self.reshape(x, (n,), hint + "/flat", origin)
        y = self.add(Linear(A, b), [flat], hint, origin)
        return self.reshape(y, out_shape, hint + "/shape", origin)

    def linear_last_axis(self, x: str, W: _torch.Tensor, b: _torch.Tensor | None, hint: str, origin: str) -> str:
        """torch semantics of ``F.linear(x, W, b)`` on a per-sample x of shape (..., in).

        Flat inputs give one ``Linear(W, b)`` that references ``W`` and ``b`` themselves (so
        gradients reach the source parameters); other shapes use the exact block-diagonal
        matrix ``kron(I_M, W)`` (a new tensor).
        """
        s = self.shapes[x]
        if W.dim() != 2 or len(s) == 0 or s[-1] != W.shape[1]:
            raise self.fail(origin, f"weight of shape {tuple(W.shape)} does not fit input shape {s}")
        if len(s) == 1:
            return self.add(Linear(W, b), [x], hint, origin)
        M = math.prod(s[:-1])
        out = s[:-1] + (int(W.shape[0]),)
        if M == 1:
            return self.affine(x, W, b, out, hint, origin)
        A = _torch.kron(_torch.eye(M, dtype=W.dtype), W.contiguous())
        bias = None if b is None else b.repeat(M)
        return self.affine(x, A, bias, out, hint, origin)

    def network(self, output: str, name: str) -> Network:
        if output == self.input_name:
            output = self.add(Identity(), [output], "output", "output")
        return Network(self.shapes[self.input_name], self.nodes, output=output,
                       input_name=self.input_name, name=name)


__all__ = ["GraphBuilder", "MAX_DENSE"]


def upsample_factors(src: _torch.Tensor, in_shape: Shape) -> tuple[int, int] | None:
    """(sh, sw) when ``src`` (per-sample output shape) picks, from flat element numbers of a
    (C, H, W) input, the nearest upsampling by integer factors sh, sw (out[c, i, j] =
    x[c, i // sh, j // sw]); else None."""
    if len(in_shape) != 3 or src.dim() != 3 or src.shape[0] != in_shape[0]:
        return None
    C, H, W = in_shape
    Ho, Wo = src.shape[1:]
    if Ho % H or Wo % W:
        return None
    sh, sw = Ho // H, Wo // W
    ids = _torch.arange(C * H * W).reshape(C, H, W)
    want = ids.repeat_interleave(sh, 1).repeat_interleave(sw, 2)
    return (sh, sw) if _torch.equal(src, want) else None
