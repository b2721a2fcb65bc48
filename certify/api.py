"""``Bounded``: a network traced once and then bounded, verified and certified many times, the
object auto_LiRPA users reach for first (``BoundedModule(model, x0)`` + ``compute_bounds``).

    net = certify.Bounded(model, (1, 28, 28))     # torch module, .onnx / .pt / .pt2 path, Network
    b = net.bounds(x, eps=0.03, method="CROWN", C=certify.spec.margins(labels, 10))
    b.lower, b.upper                              # (B, rows)

Shapes: ``x`` (B, *input_shape) (one input without the batch dimension is taken as B = 1);
``C`` (B, rows, K) or (rows, K) for every input, ``d`` (B, rows); bounds (B, rows), or
(B, K) of the outputs without ``C``. Balls: ``norm`` 'inf', 2 or 1, radius ``eps``, not
clipped unless ``domain=(lo, hi)`` is given (auto_LiRPA's perturbations are not clipped either).
Methods: ours (ibp, crown, crown-ibp, alpha) or auto_LiRPA's spellings, in any case.
Computation is in float64 unless ``dtype`` says otherwise.
"""
from __future__ import annotations

from pathlib import Path

import torch

from certify.errors import CertifyError
from certify.ir import Network
from certify.spec.sets import BOX_NORMS, InputSet, ball


class Bounded:
    """``Bounded(model, input_shape=None, dtype=torch.float64)``: ``model`` is a ``torch.nn.Module``
    (traced by ``certify.frontends.torch``; ``input_shape`` per sample, required), a certify
    ``Network``, or a model path / bundled name as the CLI takes it (``.onnx``, ``.onnx.gz``,
    certify ``.pt``, torch.export ``.pt2``, ``digits-mlp``)."""

    def __init__(self, model, input_shape=None, dtype: torch.dtype = torch.float64):
        if isinstance(model, Network):
            net = model
        elif isinstance(model, torch.nn.Module):
            if input_shape is None:
                raise CertifyError("Bounded(module, input_shape): a torch module needs its per-sample input shape")
            from certify.frontends.torch import from_module
            net = from_module(model, tuple(input_shape))
        elif isinstance(model, (str, Path)):
            from certify.models import load_model
            net = load_model(str(model), input_shape=input_shape)
        else:
            raise CertifyError(f"Bounded takes a torch module, a certify Network or a model path, got "
                               f"{type(model).__name__}")
        if input_shape is not None and tuple(input_shape) != tuple(net.input_shape):
            raise CertifyError(f"input_shape {tuple(input_shape)} does not match the model's {net.input_shape}")
        self.net = net.detach().to(dtype)

    # ------------------------------------------------------------------ the network
    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.net.input_shape)

    def __call__(self, x) -> torch.Tensor:
        """The network's outputs at ``x`` (B, *input_shape)."""
        return self.net(self._batch(x))

    def node_names(self) -> list[str]:
        """Every node name ``intermediate`` takes (in order; the input's name first)."""
        return [self.net.input_name] + [n.name for n in self.net.nodes]

    def _batch(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=self.net.dtype)
        if tuple(x.shape) == self.input_shape:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.input_shape:
            raise CertifyError(f"x has shape {tuple(x.shape)}; the model takes (batch, "
                               f"{', '.join(map(str, self.input_shape))})")
        return x

    def input_set(self, x, eps, norm="inf", domain=None) -> InputSet:
        """The ``norm`` ball of radius ``eps`` around each row of ``x``, clipped to ``domain`` if given."""
        return ball(self._batch(x), eps, norm, domain)

    # ------------------------------------------------------------------ bounds
    def bounds(self, x, eps, norm="inf", method: str = "crown", C=None, d=None, domain=None,
               return_A: bool = False, **opts):
        """``Bounds`` (``.lower``, ``.upper``: (B, rows)) of ``C @ f(x') + d`` over the ball.

        ``return_A=True`` (methods crown, crown-ibp) also gives ``.A``, a ``bounds.result.LinearBounds``:
        ``lA`` / ``uA`` (B, rows, *input_shape) and ``lbias`` / ``ubias`` (B, rows) with
        ``lA . x' + lbias <= C @ f(x') + d <= uA . x' + ubias`` for every x' of the ball (auto_LiRPA's
        A dict for the input). ``opts``: alpha's ``iterations``, ``lr``; ``upper=False``."""
        import bounds
        s = self.input_set(x, eps, norm, domain)
        C, d = self._spec(C, d, s.batch)
        if return_A:
            opts["return_A"] = True
        return bounds.compute_bounds(self.net, s, C, d, method=method, **opts).detach()

    def _spec(self, C, d, B: int):
        if C is None:
            return None, d
        C = torch.as_tensor(C, dtype=self.net.dtype)
        if C.dim() == 2:
            C = C.unsqueeze(0).expand(B, -1, -1)
        return C, d

    def intermediate(self, x, eps, norm="inf", method: str = "crown", nodes=None, domain=None) -> dict:
        """Bounds (B, *node shape) of the outputs of ``nodes`` (names from ``node_names``; default
        every node) over the ball: ``{name: Bounds}``. ``crown``: each node bounded by CROWN from
        its own outputs (intersected with the layer-by-layer bounds), ``ibp``: interval bounds;
        ``alpha``: alpha-CROWN's optimized bounds, for the inputs of ReLU / Sigmoid / Tanh / MaxPool
        nodes only (``bounds.intermediate_bounds``)."""
        import bounds
        from bounds.crown import crown_node, pack_rows, propagate, scatter_tighten
        from bounds.result import Bounds
        names = self.node_names() if nodes is None else list(nodes)
        unknown = [n for n in names if n not in self.node_names()]
        if unknown:
            raise CertifyError(f"no node {unknown[0]!r} in {self.net.name}; nodes: {', '.join(self.node_names())}")
        s = self.input_set(x, eps, norm, domain)
        m = bounds.method_name(method)
        if m == "alpha":
            got = bounds.intermediate_bounds(self.net, s, method="alpha")
            missing = [n for n in names if n not in got]
            if missing:
                raise CertifyError(f"alpha-CROWN optimizes the inputs of activations only; {missing[0]!r} is none "
                                   f"(those are: {', '.join(got)})")
            return {n: got[n] for n in names}
        if m not in ("ibp", "crown"):
            raise CertifyError(f"intermediate bounds by ibp, crown or alpha, not {method!r}")
        vals = propagate(self.net, s, "crown" if m == "crown" else "ibp")
        out = {}
        for n in names:
            lo, hi = vals[n]
            if m == "crown" and n != self.net.input_name:
                idx, valid = pack_rows(torch.ones_like(lo, dtype=torch.bool).flatten(1))
                new_lo, new_hi = crown_node(self.net, n, idx, valid, vals, s)
                lo, hi = scatter_tighten(lo, hi, idx, new_lo, new_hi)
            out[n] = Bounds(lo.detach(), hi.detach())
        return out

    # ------------------------------------------------------------------ certificates
    def radius(self, x, labels, norm="inf", method: str = "crown", domain=None, tol: float = 1e-4,
               hi: float | None = None, **opts):
        """(radius (B,), Bounds of the margins at it): each input's largest certified ``norm`` radius
        for its label (``bounds.radius``: bisection to ``tol``; misclassified inputs get 0)."""
        import bounds
        return bounds.radius(self.net, self._batch(x), torch.as_tensor(labels).reshape(-1), norm=norm,
                             method=bounds.method_name(method), hi=hi, tol=tol, domain=domain, **opts)

    def verify(self, x, eps, labels=None, C=None, d=None, norm="inf", domain=None, timeout: float = 60.0,
               seed: int = 0) -> list:
        """Complete verification of ``C @ f(x') + d > 0`` (default C: the margins of ``labels``) on the
        L-inf ball of every input, by ``bounds.bab.verify`` (attack first, then bounds, then branch
        and bound) within ``timeout`` seconds per input. Returns one ``VerifyResult`` per input:
        ``status`` 'unsat' (proved: no x' violates), 'sat' (``counterexample`` (x, y), checked),
        'unknown' or 'timeout'."""
        from bounds.bab import verify
        from certify.spec.output import margins
        from certify.spec.vnnlib import Region, VnnlibProperty
        s = self.input_set(x, eps, norm, domain)
        if s.norm not in BOX_NORMS:
            raise CertifyError(f"verify decides properties on boxes (L-inf balls); an L{s.norm} ball is not one "
                               "(bound it with bounds() or radius())")
        B = s.batch
        if C is None:
            if labels is None:
                raise CertifyError("verify needs labels (the margins of each label) or C")
            C = margins(torch.as_tensor(labels).reshape(-1), self.net.output_size, self.net.dtype)
        C, _ = self._spec(C, None, B)
        d = torch.zeros(C.shape[:2], dtype=self.net.dtype) if d is None else torch.as_tensor(d, dtype=self.net.dtype)
        d = d.expand(B, -1) if d.dim() == 1 else d
        lo, hi = s.box()
        out = []
        for b in range(B):
            Cb, db = C[b].double().numpy(), d[b].double().numpy()
            # violated where some row r has C_r y + d_r <= 0
            region = Region(lo[b].flatten().double().numpy(), hi[b].flatten().double().numpy(),
                            [(Cb[r:r + 1], -db[r:r + 1]) for r in range(Cb.shape[0])])
            prop = VnnlibProperty(f"margins of input {b}", self.net.input_size, self.net.output_size, [region])
            out.append(verify(self.net, prop, timeout=timeout, seed=seed))
        return out
