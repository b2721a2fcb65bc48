"""certify: certified robustness of neural networks (bound propagation, convex certificates,
randomized smoothing) on one network IR.

``certify.Bounded`` (``certify.api``) is the bounded-model object of the Python API; it is
imported on first use, so that ``import certify`` stays light and below the engines.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Bounded":
        from certify.api import Bounded
        return Bounded
    if name == "spec":
        import importlib
        return importlib.import_module("certify.spec")
    raise AttributeError(f"module 'certify' has no attribute {name!r}")
