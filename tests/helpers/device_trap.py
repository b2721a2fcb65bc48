"""A context manager that catches tensors the library creates on the default device.

Inside ``device_trap()``, a torch factory (``torch.zeros``, ``torch.tensor``, ``torch.randn``...)
called from the library's own code (bounds/, smoothing/, certify/) without a ``device=`` makes a
tensor on the "meta" device; mixing it with the caller's CPU tensors raises, and so does reading
its values. Code that passes ``device=`` (or uses ``*_like`` / ``new_*``) is unaffected. A random
draw whose generator lives on another device than the tensor it fills, and a ``torch.Generator()``
made without a device, are recorded in the returned list (CUDA would refuse them). Patching the
functions (not ``torch.set_default_device``) reaches the library's worker threads too.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = tuple(os.path.join(ROOT, d) + os.sep for d in ("bounds", "smoothing", "certify"))

FACTORIES = ("zeros", "ones", "empty", "full", "arange", "eye", "linspace", "logspace", "rand", "randn",
             "randint", "randperm", "scalar_tensor", "empty_strided", "tril_indices", "triu_indices")
FROM_DATA = ("tensor", "as_tensor")
IN_PLACE_RANDOM = ("normal_", "uniform_", "exponential_", "bernoulli_", "random_", "geometric_", "cauchy_",
                   "log_normal_")


def _from_library(depth: int = 2) -> str | None:
    """The library file:line of the caller ``depth`` frames up, or None when not library code."""
    f = sys._getframe(depth)
    name = f.f_code.co_filename
    return f"{os.path.relpath(name, ROOT)}:{f.f_lineno}" if name.startswith(LIBRARY) else None


@contextlib.contextmanager
def device_trap():
    """Yields a list of (where, what) device mistakes that do not raise by themselves."""
    found: list[tuple[str, str]] = []
    lock = threading.Lock()
    saved = {name: getattr(torch, name) for name in FACTORIES + FROM_DATA}
    saved_methods = {name: getattr(torch.Tensor, name) for name in IN_PLACE_RANDOM}
    saved_generator = torch.Generator

    def note(where, what):
        with lock:
            found.append((where, what))

    def check_generator(where, gen, device):
        if gen is not None and torch.device(gen.device) != torch.device(device):
            note(where, f"generator on {gen.device} fills a tensor on {device}")

    def factory(name):
        fn = saved[name]

        def wrapped(*args, **kwargs):
            where = _from_library()
            if where is not None:
                if kwargs.get("device") is None and kwargs.get("out") is None:
                    kwargs["device"] = "meta"
                elif kwargs.get("device") is not None:
                    check_generator(where, kwargs.get("generator"), kwargs["device"])
            return fn(*args, **kwargs)
        return wrapped

    def from_data(name):
        fn = saved[name]

        def wrapped(data, *args, **kwargs):
            if (_from_library() is not None and not isinstance(data, torch.Tensor)
                    and kwargs.get("device") is None):
                kwargs["device"] = "meta"
            return fn(data, *args, **kwargs)
        return wrapped

    def in_place(name):
        fn = saved_methods[name]

        def wrapped(self, *args, **kwargs):
            where = _from_library()
            if where is not None:
                check_generator(where, kwargs.get("generator"), self.device)
            return fn(self, *args, **kwargs)
        return wrapped

    class Generator(saved_generator):
        def __new__(cls, device=None):
            where = _from_library()
            if where is not None and device is None:
                note(where, "torch.Generator() without a device")
            return saved_generator.__new__(cls) if device is None else saved_generator.__new__(cls, device=device)

    try:
        for name in FACTORIES:
            setattr(torch, name, factory(name))
        for name in FROM_DATA:
            setattr(torch, name, from_data(name))
        for name in IN_PLACE_RANDOM:
            setattr(torch.Tensor, name, in_place(name))
        torch.Generator = Generator
        yield found
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)
        for name, fn in saved_methods.items():
            setattr(torch.Tensor, name, fn)
        torch.Generator = saved_generator
