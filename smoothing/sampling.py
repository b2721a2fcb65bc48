"""Fused, batched Monte-Carlo counting: how often the base classifier predicts each class under noise.

``NoiseCounter.counts(x, num, generator)`` draws ``num`` i.i.d. noise samples in batches into ONE
preallocated buffer (filled in place, then ``x`` added in place), runs the network, and counts the
argmax classes with ``torch.bincount`` into a torch accumulator: no Python loop per sample, no host
copy inside the loop (one ``.numpy()`` at the end). Noise is added in input space (before any
normalization layer the network contains); nothing is clipped.

Pushed-forward first-layer noise (Gaussian only, ``pushforward="auto"`` by default): when the
network's first op is ``Linear`` (or ``Flatten`` then ``Linear``, possibly after elementwise
affine input ops such as ``Normalize`` that ``Network.simplify`` folds into it) with W of shape
(out, in) and out < in, then W (x + e) + b = (W x + b) + W e with W e ~ N(0, sigma^2 W W^T). We factor
W W^T = L L^T once (symmetric eigendecomposition in float64, L = Q diag(sqrt(max(lam, 0))), L of
size out x out) and sample W e as sigma * L z with z ~ N(0, I_out): the same distribution of the
first layer's output, exactly, at the cost of out (not in) normals and an out x out (not out x in)
product. The rest of the network then runs unchanged.

A ``torch.nn.Module`` holding an ``nn.Linear`` with out < in is traced to the IR
(``certify.frontends.torch.from_module``, checked against the module) to look for this first
layer; when tracing fails or the layer is not first, the module itself runs on input-space noise.
The traced plan is a snapshot of the module's parameters and buffers: it is rebuilt when they
change (compared exactly before each count), so counts always follow the module's current weights.

Prefetch (``prefetch="auto"``: on when torch uses fewer intra-op threads than there are CPUs): a
helper thread fills the next batch's noise (two buffers, alternating) while the network runs on
the current one, hiding the noise cost on a spare core. The fills happen in the same order on the
same generator, so the counts are identical with and without prefetch (a seed reproduces a run).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Callable

import numpy as np
import torch

from certify.errors import CertifyError
from certify.ir import BatchNorm, ConstAdd, ConstMul, Flatten, Identity, Linear, Network, Normalize, Reshape
from smoothing.noise import NoiseFamily


def model_dtype(model) -> torch.dtype:
    if isinstance(model, Network):
        return model.dtype
    for p in model.parameters():
        return p.dtype
    return torch.get_default_dtype()


def model_device(model) -> torch.device:
    """The device of the model's parameters (cpu for a model without any): where sampling runs."""
    if isinstance(model, Network):
        return model.device
    for p in chain(model.parameters(), model.buffers()):
        return p.device
    return torch.device("cpu")


CPU_BATCH = 1000           # samples per forward pass on a CPU: large enough to amortize the call


def auto_batch(model, input_shape, device, fraction: float = 0.5) -> int:
    """Samples per forward pass: ``CPU_BATCH`` on a CPU; on a GPU as many as ``fraction`` of its
    free memory holds, counting every IR node's activation per sample (a torch module: 16 input
    sizes), in multiples of 100 between 100 and 100,000."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH
    item = torch.empty((), dtype=model_dtype(model)).element_size()
    if isinstance(model, Network):
        per = sum(math.prod(model.shape_of(n.name)) for n in model.nodes) + math.prod(input_shape)
    else:
        per = 16 * math.prod(input_shape)
    free = torch.cuda.mem_get_info(device)[0]
    return int(min(100_000, max(100, fraction * free / (per * item)) // 100 * 100))


class _PushForward:
    """The first Linear layer of ``net`` folded into the noise (see the module docstring). Built
    once from the weights at construction time (build a new ``Smooth`` after changing them)."""

    def __init__(self, net: Network, k: int):
        lin = net.nodes[k]
        W = lin.op.weight.detach()
        self.W, self.b = W, (lin.op.bias.detach() if lin.op.bias is not None else None)
        cov = W.double() @ W.double().T
        lam, Q = torch.linalg.eigh(cov)
        self.Lt = (Q * lam.clamp_min(0).sqrt()).T.contiguous().to(W.dtype)  # (out, out): L^T
        rest = net.nodes[k + 1:]
        if rest:
            self.tail = Network((W.shape[0],), rest, output=net.output, input_name=lin.name,
                                name=f"{net.name}[after {lin.name}]")
        else:
            self.tail = lambda h: h
        self.width = W.shape[0]

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b for one input x (per-sample shape) -> (1, out)."""
        flat = x.reshape(1, -1)
        return torch.nn.functional.linear(flat, self.W, self.b)


def find_pushforward(net) -> int | None:
    """Index of a first ``Linear`` that can absorb the noise (input -> [Flatten or Reshape to 1-D ->]
    Linear, the intermediate values used by nothing else, out < in), else None."""
    if not isinstance(net, Network):
        return None
    nodes = net.nodes
    k = 0
    if isinstance(nodes[0].op, (Flatten, Reshape)) and len(nodes[0].shape) == 1 and len(nodes) > 1:
        k = 1
    lin = nodes[k]
    if not isinstance(lin.op, Linear):
        return None
    if lin.inputs != ((nodes[0].name,) if k == 1 else (net.input_name,)):
        return None
    private = {net.input_name} | ({nodes[0].name} if k == 1 else set())
    if any(set(n.inputs) & private for n in nodes[k + 1:]) or net.output in private:
        return None
    out, inp = lin.op.weight.shape
    return k if out < inp else None


def _traced(module: torch.nn.Module, input_shape) -> Network | None:
    """``module`` as an IR network (sharing its parameters), or None when the front end cannot trace
    it or when no ``nn.Linear`` with fewer outputs than inputs in it could absorb the noise (then
    tracing, which runs ``forward``, is not tried)."""
    from certify.frontends.torch import from_module
    if not any(isinstance(m, torch.nn.Linear) and m.out_features < m.in_features for m in module.modules()):
        return None
    try:
        return from_module(module, input_shape)
    except Exception:  # an optional speed-up: the module runs as is
        return None


def _state(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in chain(module.parameters(), module.buffers())]


def _same_state(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> bool:
    now = list(chain(module.parameters(), module.buffers()))
    return len(now) == len(snapshot) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a.detach(), b)
        for a, b in zip(now, snapshot))


def pushforward_plan(net, input_shape) -> _PushForward | None:
    """The first-layer pushforward of ``net`` if one applies, directly or after ``net.simplify()``
    (which folds input-side Normalize / ConstAdd / ConstMul into the first Linear; used only when
    the simplified network agrees with ``net`` on random inputs to 1e-4 relative). A torch module
    is traced to the IR first."""
    if isinstance(net, torch.nn.Module):
        net = _traced(net, input_shape)
    if not isinstance(net, Network):
        return None
    k = find_pushforward(net)
    if k is not None:
        return _PushForward(net, k)
    if not isinstance(net.nodes[0].op, (Normalize, ConstAdd, ConstMul, BatchNorm, Identity, Reshape)):
        return None
    try:
        simple = net.simplify()
    except Exception:  # an optional speed-up: fall back to sampling in input space
        return None
    k = find_pushforward(simple)
    if k is None:
        return None
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.rand((16, *input_shape), generator=g, dtype=torch.float64, device="cpu").to(net.device) * 2 - 0.5
    with torch.inference_mode():
        a, b = net.to(torch.float64)(z), simple.to(torch.float64)(z)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-12):
        return None
    return _PushForward(simple, k)


class NoiseCounter:
    """Counts argmax predictions of ``model`` on ``x + noise`` (see module docstring).

    Args:
        model: a ``certify.ir.Network`` or a ``torch.nn.Module`` mapping (B, *input_shape) to
            logits (B, num_classes).
        input_shape: per-sample input shape.
        num_classes: number of classes K (the logits' width).
        family, sigma: the noise.
        batch: samples per forward pass (memory: batch * prod(input_shape) floats); None: ``auto_batch``
            on the model's device.
        pushforward: "auto" (use the exact first-layer pushforward when it applies: Gaussian noise,
            first op Linear with out < in, for a module once traced), True (require it: error if it
            does not apply) or False.
    """

    def __init__(self, model, input_shape, num_classes: int, family: NoiseFamily, sigma: float,
                 batch: int | None = 1000, pushforward="auto", prefetch="auto"):
        if batch is not None and int(batch) < 1:
            raise CertifyError(f"batch must be >= 1, got {batch}")
        self.model, self.family, self.sigma = model, family, float(sigma)
        self.input_shape = tuple(int(d) for d in input_shape)
        if batch is None:
            batch = auto_batch(model, self.input_shape, model_device(model))
        self.num_classes, self.batch = int(num_classes), int(batch)
        self.pushforward, self.prefetch = pushforward, prefetch
        self._snapshot: list[torch.Tensor] | None = None
        self._plan()
        self._pool: ThreadPoolExecutor | None = None

    def _plan(self) -> None:
        """(Re)build the pushforward plan and the noise buffers from the model's current weights."""
        self.dtype, self.device = model_dtype(self.model), model_device(self.model)
        self.push, self._snapshot = None, None
        if self.family.name == "gaussian" and self.pushforward in ("auto", True):
            self.push = pushforward_plan(self.model, self.input_shape)
        if self.pushforward is True and self.push is None:
            raise CertifyError("pushforward=True needs Gaussian noise and a network (an IR network, or a module "
                               "the torch front end traces) whose first op is Linear (or Flatten then Linear, "
                               "after folding elementwise affine ops such as Normalize) with fewer outputs than "
                               "inputs")
        if self.push is not None and isinstance(self.model, torch.nn.Module):
            self._snapshot = _state(self.model)
        self._bufs: list[torch.Tensor] = []
        self._hbuf: torch.Tensor | None = None

    @property
    def uses_pushforward(self) -> bool:
        return self.push is not None

    def uses_prefetch(self) -> bool:
        if self.prefetch == "auto":      # an accelerator fills its buffers asynchronously already
            return self.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)
        return bool(self.prefetch)

    def _buffers(self, k: int) -> list[torch.Tensor]:
        """``k`` noise buffers (batch, *noise shape), allocated once."""
        shape = (self.batch, *self.input_shape) if self.push is None else (self.batch, self.push.width)
        while len(self._bufs) < k:
            self._bufs.append(torch.empty(shape, dtype=self.dtype, device=self.device))
        if self.push is not None and self._hbuf is None:
            self._hbuf = torch.empty((self.batch, self.push.width), dtype=self.dtype, device=self.device)
        return self._bufs[:k]

    def _noise_batches(self, x1: torch.Tensor | None, sizes: list[int], generator):
        """Yields the noise batches (x added when ``x1`` is given), filled in order on ``generator``."""
        def fill(buf, b):
            with torch.inference_mode():
                out = self.family.fill(buf[:b], self.sigma, generator)
                return out if x1 is None else out.add_(x1)

        if not self.uses_prefetch() or len(sizes) < 2:
            (buf,) = self._buffers(1)
            for b in sizes:
                yield fill(buf, b)
            return
        bufs = self._buffers(2)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smoothing-noise")
        fut = self._pool.submit(fill, bufs[0], sizes[0])
        try:
            for i in range(len(sizes)):
                cur = fut.result()
                fut = self._pool.submit(fill, bufs[(i + 1) % 2], sizes[i + 1]) if i + 1 < len(sizes) else None
                yield cur
        finally:
            if fut is not None:
                fut.cancel() or fut.result()

    def counts(self, x: torch.Tensor, num: int, generator: torch.Generator | None = None,
               on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Class counts (K,) int64 over ``num`` fresh noise samples around one input ``x`` (moved
        to the model's device; ``generator`` must live there too)."""
        if self._snapshot is not None and not _same_state(self.model, self._snapshot):
            self._plan()
        x = torch.as_tensor(x).to(device=self.device, dtype=self.dtype)
        if tuple(x.shape) != self.input_shape:
            raise CertifyError(f"input of shape {tuple(x.shape)} does not match the model's input "
                               f"shape {self.input_shape} (pass one input, without a batch dimension)")
        num = int(num)
        sizes = [self.batch] * (num // self.batch) + ([num % self.batch] if num % self.batch else [])
        acc = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            if self.push is not None:
                h0 = self.push.first_layer(x)
                batches = self._noise_batches(None, sizes, generator)
            else:
                batches = self._noise_batches(x.unsqueeze(0), sizes, generator)
            for noise in batches:
                b = noise.shape[0]
                if self.push is not None:
                    logits = self.push.tail(torch.addmm(h0, noise, self.push.Lt, out=self._hbuf[:b]))
                else:
                    logits = self.model(noise)
                if logits.dim() != 2 or logits.shape[1] != self.num_classes:
                    raise CertifyError(f"the model returns shape {tuple(logits.shape)} for a batch of {b}; "
                                       f"expected ({b}, {self.num_classes}) logits (num_classes={self.num_classes})")
                acc += torch.bincount(logits.argmax(1), minlength=self.num_classes)
                if on_batch is not None:
                    on_batch(b)
        return acc.cpu().numpy()


def soft_log_probs(model, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the soft smoothed classifier (Salman et al. 2019), Monte-Carlo estimate.

    ``G(x) = E_e softmax(f(x + e))`` estimated with the given noise samples: ``x`` (B, *shape),
    ``noise`` (m, B, *shape) (e.g. ``sample_noise((m, *x.shape), g, "gaussian", sigma)``, kept
    fixed across the PGD steps of SmoothAdv). Returns log((1/m) sum_i softmax(f(x + e_i))) of shape
    (B, K), computed stably with logsumexp; differentiable w.r.t. ``x`` and the model's parameters.
    """
    if noise.dim() != x.dim() + 1 or tuple(noise.shape[1:]) != tuple(x.shape):
        raise CertifyError(f"noise must have shape (m, *x.shape) = (m, {', '.join(map(str, x.shape))}), "
                           f"got {tuple(noise.shape)}")
    m = noise.shape[0]
    logits = model((x.unsqueeze(0) + noise).reshape(m * x.shape[0], *x.shape[1:]))
    logp = torch.log_softmax(logits, dim=-1).reshape(m, x.shape[0], -1)
    return torch.logsumexp(logp, dim=0) - math.log(m)
