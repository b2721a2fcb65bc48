"""``certify demo``: the main job on built-in defaults, no user files needed.

Loads the bundled digits models, prints their IR summary and clean accuracy on the digits test
split, then each engine's certificates on a few test inputs (sections listed in ``SECTIONS``:
``module:function`` returning the lines to print). Takes seconds.
"""
from __future__ import annotations

import importlib

from certify.cli.common import load_model
from certify.data import load_dataset

# Each engine contributes one function (net, X, y) -> list[str].
SECTIONS: list[str] = [
    "certify.cli.bounds:demo_section",
    "certify.cli.convex:demo_section",
    "certify.cli.smooth:demo_section",
]


def register(sub) -> None:
    from certify.cli.argtypes import positive_int
    from certify.cli.common import COUNT_HINT
    from certify.cli.config import add_renamed
    p = sub.add_parser("demo", help="run every engine on the bundled digits model (seconds)",
                       description="Load the bundled model trained on scikit-learn's 8x8 digits, print its IR summary "
                                   "and test accuracy, then the certificates each engine gives on a few test inputs.")
    p.add_argument("--model", default="digits-mlp", choices=["digits-mlp", "digits-cnn"],
                   help="bundled model to use (default: digits-mlp)")
    p.add_argument("--count", dest="n", type=positive_int, default=20, help="test inputs per engine (default: 20)")
    add_renamed(p, "--n", COUNT_HINT)
    p.set_defaults(func=run)


def run(args) -> int:
    net = load_model(args.model)
    x, y = load_dataset("digits", "test")
    print(net.summary())
    acc = (net(x).argmax(1) == y).float().mean().item()
    print(f"\nclean accuracy on the digits test split: {acc:.4f} ({len(y)} images)")
    xs, ys = x[: args.n], y[: args.n]
    for entry in SECTIONS:
        mod, fn = entry.split(":")
        lines = getattr(importlib.import_module(mod), fn)(net, xs, ys)
        print()
        for line in lines:
            print(line)
    return 0
