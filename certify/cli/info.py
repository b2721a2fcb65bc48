"""``certify info MODEL``: the IR summary of a model (ops, shapes, parameters, ReLUs)."""
from __future__ import annotations

from certify.cli.common import add_model_arg, model_from


def register(sub) -> None:
    p = sub.add_parser("info", help="show a model's IR summary",
                       description="Load a model (.onnx, certify .pt checkpoint or train run, torch.export .pt2, "
                                   "module:Class with --weights and --input-shape, or a bundled name) and print its "
                                   "nodes, shapes, parameter count and number of ReLUs.")
    add_model_arg(p)
    p.add_argument("--simplify", action="store_true", help="show the simplified network (BatchNorm/Normalize folded, "
                   "Identity dropped, Linear chains merged)")
    p.set_defaults(func=run)


def run(args) -> int:
    net = model_from(args)
    if args.simplify:
        net = net.simplify()
    print(net.summary())
    return 0
