"""``Network`` and ``Node``: a small, explicit, topologically ordered DAG of IR ops.

A network has exactly one input (per-sample shape ``input_shape``) and one output node.
Shapes of every node are inferred and checked when the network is built; a network is not
modified afterwards (passes such as ``simplify`` return a new one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch

from certify.ir.ops import IRError, Op, ReLU, Shape


@dataclass(frozen=True, eq=False)
class Node:
    """One op applied to the outputs of earlier nodes (or the network input).

    ``inputs`` name earlier nodes or the network's input; ``shape`` is the per-sample output
    shape, filled in by ``Network`` at build time.
    """

    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: Shape | None = None


class Network:
    """An immutable DAG of ``Node``s with one input and one output.

    Args:
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)`` or ``(5,)``.
        nodes: nodes in topological order (shapes may be left ``None``: they are inferred).
        output: name of the output node (default: the last node).
        input_name: the name nodes use to refer to the network input.
        name: a label for summaries and error messages (e.g. the source file).
    """

    def __init__(self, input_shape: Sequence[int], nodes: Iterable[Node], output: str | None = None,
                 input_name: str = "input", name: str = "network"):
        self.input_shape: Shape = tuple(int(d) for d in input_shape)
        self.input_name = input_name
        self.name = name
        shapes: dict[str, Shape] = {input_name: self.input_shape}
        built: list[Node] = []
        for node in nodes:
            if node.name in shapes:
                raise IRError(f"{name}: duplicate node name {node.name!r}")
            for i in node.inputs:
                if i not in shapes:
                    raise IRError(f"{name}: node {node.name!r} ({node.op.kind}) uses {i!r}, "
                                  "which is not defined before it")
            arity = type(node.op).arity
            if (arity is not None and len(node.inputs) != arity) or len(node.inputs) == 0:
                raise IRError(f"{name}: node {node.name!r} ({node.op.kind}) takes {arity or '1+'} inputs, "
                              f"got {len(node.inputs)}")
            try:
                shape = tuple(int(d) for d in node.op.infer_shape([shapes[i] for i in node.inputs]))
            except IRError as e:
                raise IRError(f"{name}: node {node.name!r} ({node.op.kind}): {e}") from None
            if node.shape is not None and tuple(node.shape) != shape:
                raise IRError(f"{name}: node {node.name!r} declared shape {node.shape}, inferred {shape}")
            shapes[node.name] = shape
            built.append(replace(node, inputs=tuple(node.inputs), shape=shape))
        if not built:
            raise IRError(f"{name}: a network needs at least one node")
        self.nodes: tuple[Node, ...] = tuple(built)
        self.output = output if output is not None else built[-1].name
        if self.output not in shapes or self.output == input_name:
            raise IRError(f"{name}: output {self.output!r} is not a node")
        self._by_name = {n.name: n for n in self.nodes}
        self._shapes = shapes

    # ------------------------------------------------------------------ structure
    def node(self, name: str) -> Node:
        return self._by_name[name]

    def shape_of(self, name: str) -> Shape:
        """Per-sample shape of a node's output or of the input."""
        return self._shapes[name]

    @property
    def output_shape(self) -> Shape:
        return self._shapes[self.output]

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_size(self) -> int:
        return math.prod(self.output_shape)

    def consumers(self, name: str) -> list[Node]:
        """Nodes that take ``name`` as an input."""
        return [n for n in self.nodes if name in n.inputs]

    def num_params(self) -> int:
        seen: set[int] = set()
        total = 0
        for n in self.nodes:
            for t in n.op.tensors().values():
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel()
        return total

    def num_relus(self) -> int:
        return sum(math.prod(n.shape) for n in self.nodes if isinstance(n.op, ReLU))

    @property
    def dtype(self) -> torch.dtype:
        for n in self.nodes:
            for t in n.op.tensors().values():
                return t.dtype
        return torch.get_default_dtype()

    # ------------------------------------------------------------------ evaluation
    def _check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise IRError(f"{self.name}: input of shape {tuple(x.shape)} does not fit "
                          f"(batch, {', '.join(map(str, self.input_shape))})")

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's output (and the input) for a batch ``x`` of shape (B, *input_shape)."""
        self._check_input(x)
        vals = {self.input_name: x}
        for n in self.nodes:
            vals[n.name] = n.op.forward(*(vals[i] for i in n.inputs))
        return vals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output (B, *output_shape) for a batch ``x`` of shape (B, *input_shape)."""
        self._check_input(x)
        vals = {self.input_name: x}
        last_use = {}
        for k, n in enumerate(self.nodes):
            for i in n.inputs:
                last_use[i] = k
        for k, n in enumerate(self.nodes):
            vals[n.name] = n.op.forward(*(vals[i] for i in n.inputs))
            for i in set(n.inputs):
                if last_use[i] == k and i != self.output:
                    del vals[i]
        return vals[self.output]

    __call__ = forward

    # ------------------------------------------------------------------ transforms
    def map_tensors(self, fn) -> "Network":
        """A copy with ``fn`` applied to every parameter tensor (e.g. a dtype change)."""
        nodes = [Node(n.name, n.op.map_tensors(fn), n.inputs) for n in self.nodes]
        return Network(self.input_shape, nodes, self.output, self.input_name, self.name)

    def to(self, dtype: torch.dtype | torch.device | str | None = None, *,
           device: torch.device | str | None = None) -> "Network":
        """A copy whose parameters have ``dtype`` and live on ``device`` (either may be omitted).

        ``net.to(torch.float64)``, ``net.to("cuda")`` and ``net.to(device=d, dtype=t)`` all work;
        only floating-point parameters change dtype.
        """
        if isinstance(dtype, (torch.device, str)):
            if device is not None:
                raise TypeError("Network.to: device given twice")
            dtype, device = None, dtype

        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            return t if device is None else t.to(device)
        return self.map_tensors(move)

    @property
    def device(self) -> torch.device:
        """The device of the parameters (cpu for a network without any)."""
        for n in self.nodes:
            for t in n.op.tensors().values():
                return t.device
        return torch.device("cpu")

    def detach(self) -> "Network":
        """A copy whose parameters are detached from any autograd graph."""
        return self.map_tensors(lambda t: t.detach())

    def simplify(self) -> "Network":
        """Fold BatchNorm/Normalize into adjacent affine ops, drop Identity, merge Linear chains."""
        from certify.ir.simplify import simplify
        return simplify(self)

    def to_onnx(self, path: str) -> None:
        """Write the network as an ONNX model (input ``input``, batch dimension symbolic)."""
        from certify.ir.export import to_onnx
        to_onnx(self, path)

    def to_torch(self) -> torch.nn.Module:
        """A ``torch.nn.Module`` computing the same function with trainable parameter copies."""
        from certify.ir.export import to_torch
        return to_torch(self)

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        rows = [("node", "op", "inputs", "shape", "params")]
        rows.append((self.input_name, "Input", "", str(self.input_shape), "0"))
        for n in self.nodes:
            rows.append((n.name, n.op.describe(), ",".join(n.inputs), str(n.shape), str(n.op.num_params())))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"Network {self.name}: input {self.input_shape} -> output {self.output_shape}"]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        lines.append(f"  {len(self.nodes)} nodes, {self.num_params()} parameters, {self.num_relus()} ReLUs")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Network({self.name!r}, input={self.input_shape}, output={self.output_shape}, nodes={len(self.nodes)})"
