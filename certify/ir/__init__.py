"""The network IR shared by every engine: ``Network``, ``Node`` and the ops.

``sequential(input_shape, ops)`` builds a chain quickly (tests, model zoo).
"""
from certify.ir.network import Network, Node
from certify.ir.ops import (ACTIVATIONS, ALL_OPS, Add, AvgPool2d, BatchNorm, Concat, ConstAdd, ConstMul,
                            Conv2d, Flatten, Identity, IRError, Linear, MaxPool2d, Normalize, Op, ReLU,
                            Reshape, Shape, Sigmoid, Sub, Tanh)
from certify.ir.ops import (NONLINEAR_OPS, Cos, Exp, Floor, LeakyReLU, Log, MatMul, Mul, Pow, Reciprocal, Sign,
                            Sin, Softmax)
from certify.ir.ops import (ConvTranspose2d, Gather, LinearMap, Pad, ReduceMean, ReduceSum, Slice,
                            Transpose)


def sequential(input_shape, ops, name: str = "network") -> Network:
    """A chain network: node ``k`` applies ``ops[k]`` to node ``k-1`` (names ``n0``, ``n1``, ...)."""
    nodes, prev = [], "input"
    for k, op in enumerate(ops):
        nodes.append(Node(f"n{k}", op, (prev,)))
        prev = f"n{k}"
    return Network(input_shape, nodes, name=name)


__all__ = ["Network", "Node", "Op", "IRError", "Shape", "sequential", "ALL_OPS", "ACTIVATIONS",
           "Linear", "Conv2d", "ConstAdd", "ConstMul", "Add", "Sub", "BatchNorm", "Normalize",
           "AvgPool2d", "MaxPool2d", "Flatten", "Reshape", "Concat", "Identity", "ReLU", "Sigmoid", "Tanh"]
__all__ += ["NONLINEAR_OPS", "LeakyReLU", "Exp", "Log", "Reciprocal", "Pow", "Sin", "Cos", "Sign", "Floor", "Softmax",
            "Mul", "MatMul"]
__all__ += ["LinearMap", "Slice", "Gather", "Transpose", "Pad", "ReduceSum", "ReduceMean", "ConvTranspose2d"]
