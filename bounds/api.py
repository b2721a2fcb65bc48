"""The public calls: ``ibp``, ``crown``, ``alpha`` (network or torch module + centre + eps),
``compute_bounds`` (network + input set) and ``intermediate_bounds``.

Shapes: ``x`` (B, *input_shape); ``C`` (B, rows, n_outputs) (a 2-D (rows, n_outputs) is used
for every batch element); ``d`` (B, rows) or (rows,); results ``Bounds`` with ``.lower`` and
``.upper`` of shape (B, rows), or (B, n_outputs) without a spec. ``domain`` clips the ball
(None: no clipping); ``input_set`` (a ``certify.spec`` set) replaces x / eps / norm / domain.
``splits``: {relu node name: int8 tensor (B, *pre-activation shape)}, +1 = the pre-activation
is >= 0 (active), -1 = <= 0 (inactive), 0 = free (also LeakyReLU and Sign nodes: their records
split at 0, see bounds/activations.py); the bounds are then sound on that
sub-domain (on an empty sub-domain they are vacuous).

Bounds of ``ibp`` and ``crown`` are differentiable w.r.t. the network parameters; ``alpha``
returns detached bounds.
"""
from __future__ import annotations

import torch

from certify.errors import CertifyError
from certify.ir import ops as O
from certify.ir.network import Network
from certify.spec.sets import InputSet, ball
from bounds.alpha import alpha_crown
from bounds.crown import apply_splits, check_splits, crown_linear, crown_spec, preactivation_nodes, propagate
from bounds.ibp import ibp_forward, ibp_spec, interval_spec
from bounds.result import Bounds, LinearBounds

METHODS = ("ibp", "crown", "crown-ibp", "alpha")
# auto_LiRPA's method names (compared in lower case) -> ours
ALIASES = {"alpha-crown": "alpha", "crown-optimized": "alpha", "optimized": "alpha", "backward": "crown",
           "ibp+backward": "crown-ibp"}


def method_name(method: str) -> str:
    """Our name of a bound method given in any case, ours or auto_LiRPA's ("CROWN", "alpha-CROWN",
    "CROWN-Optimized", "IBP", "CROWN-IBP", "IBP+backward"); a ``CertifyError`` for anything else."""
    m = str(method).strip().lower()
    m = ALIASES.get(m, m)
    if m not in METHODS:
        raise CertifyError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)} "
                           "(or auto_LiRPA's CROWN, alpha-CROWN, CROWN-Optimized, IBP, CROWN-IBP)")
    return m


def as_network(net_or_module, input_shape) -> Network:
    """A ``Network`` as is, or a ``torch.nn.Module`` traced by the torch front end."""
    if isinstance(net_or_module, Network):
        return net_or_module
    if isinstance(net_or_module, torch.nn.Module):
        from certify.frontends.torch import from_module
        return from_module(net_or_module, tuple(input_shape))
    raise CertifyError(f"expected a certify Network or a torch.nn.Module, got {type(net_or_module).__name__}")


def _input_set(net: Network, x, eps, norm, domain, input_set) -> InputSet:
    if input_set is not None:
        return input_set
    if x is None:
        raise CertifyError("give either x (with eps and norm) or input_set")
    x = torch.as_tensor(x, dtype=net.dtype, device=x.device if isinstance(x, torch.Tensor) else net.device)
    if tuple(x.shape[1:]) != net.input_shape:
        raise CertifyError(f"x has shape {tuple(x.shape)}; {net.name} takes (batch, "
                           f"{', '.join(map(str, net.input_shape))})")
    return ball(x, eps, norm, domain)


def _spec(net: Network, C, d, B: int, dtype, device=None):
    if C is None:
        if d is not None:
            raise CertifyError("d given without C")
        return None, None
    C = torch.as_tensor(C, dtype=dtype, device=device)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    if C.dim() != 3 or C.shape[0] != B or C.shape[2] != net.output_size:
        raise CertifyError(f"C must have shape (batch={B}, rows, outputs={net.output_size}), got {tuple(C.shape)}")
    if d is not None:
        d = torch.as_tensor(d, dtype=dtype, device=device)
        if d.dim() == 1:
            d = d.unsqueeze(0).expand(B, -1)
        if tuple(d.shape) != (B, C.shape[1]):
            raise CertifyError(f"d must have shape ({B}, {C.shape[1]}), got {tuple(d.shape)}")
    return C, d


class _Fixed:
    """An input set whose ``box()`` is computed once (one bound computation asks for it often)."""

    def __init__(self, s: InputSet):
        self._set, self.norm = s, s.norm
        self._box = s.box()

    def box(self):
        return self._box

    def __getattr__(self, name):
        return getattr(self._set, name)


def _prepare(net_or_module, x, eps, norm, domain, input_set, C, d):
    if input_set is not None:
        s = _Fixed(input_set)
        shape = tuple(s.box()[0].shape[1:])
    else:
        shape = tuple(torch.as_tensor(x).shape[1:])
    net = as_network(net_or_module, shape)
    if input_set is None:
        s = _Fixed(_input_set(net, x, eps, norm, domain, None))
    lo, _ = s.box()
    if net.device != lo.device:            # the computation follows the inputs' device
        net = net.to(device=lo.device)
    if tuple(lo.shape[1:]) != net.input_shape:
        raise CertifyError(f"input set of shape {tuple(lo.shape)} does not fit {net.name}'s input {net.input_shape}")
    C, d = _spec(net, C, d, lo.shape[0], lo.dtype, lo.device)
    return net, s, C, d


def _ibp_bounds(net: Network, s: InputSet, C, d, splits) -> Bounds:
    clamp = None
    if splits:
        check_splits(net, splits)
        clamp = lambda consumers, iv: apply_splits(net, consumers, iv, splits)  # noqa: E731
    out = net.node(net.output)
    if C is not None and isinstance(out.op, O.Linear):     # C folded into the last layer
        vals = ibp_forward(net, s.box(), splits, stop=net.output, clamp=clamp)
        return Bounds(*ibp_spec(out.op, vals[out.inputs[0]], C, d))
    vals = ibp_forward(net, s.box(), splits, clamp=clamp)
    if C is None:
        lo, hi = vals[net.output]
        return Bounds(lo.flatten(1), hi.flatten(1))
    return Bounds(*interval_spec(vals[net.output], C, d))


def compute_bounds(net: Network, input_set: InputSet, C=None, d=None, method: str = "crown", splits=None,
                   deadline: float | None = None, **opts) -> Bounds:
    """Bounds of ``C @ y + d`` (or of the outputs) over ``input_set`` (B sets) by ``method``.

    Options: ``upper`` (default True; False skips the upper bounds of CROWN/alpha, left +inf),
    alpha: ``iterations`` (20), ``lr`` (0.5); crown: ``intermediate`` ('crown' or 'ibp'),
    ``patches`` (True: convolutional rows as windows; False: dense rows, the same bounds);
    crown, crown-ibp: ``return_A`` (the bounds' linear functions of the input as ``.A``,
    ``LinearBounds``). ``deadline`` (a ``time.monotonic()`` value): a CROWN pass still running
    then raises ``bounds.BoundTimeout``; alpha-CROWN returns its best bounds so far (raising
    only when its first CROWN pass is not done)."""
    method = method_name(method)
    net, s, C, d = _prepare(net, None, None, None, None, input_set, C, d)
    upper = bool(opts.pop("upper", True))
    if opts.pop("return_A", False):
        if method not in ("crown", "crown-ibp"):
            raise CertifyError(f"return_A gives the linear bounds of CROWN; method {method!r} has none "
                               "(use crown or crown-ibp)")
        return _with_A(net, s, C, d, "ibp" if method == "crown-ibp" else opts.pop("intermediate", "crown"), splits)
    if method == "ibp":
        _no_opts(opts, method)
        return _ibp_bounds(net, s, C, d, splits)
    if method in ("crown", "crown-ibp"):
        inter = "ibp" if method == "crown-ibp" else opts.pop("intermediate", "crown")
        patches = bool(opts.pop("patches", True))
        _no_opts(opts, method)
        cache: dict = {}
        vals = propagate(net, s, inter, splits, relax_cache=cache, deadline=deadline, patches=patches)
        return Bounds(*crown_spec(net, vals, s, C, d, upper, relax_cache=cache, deadline=deadline))
    iterations, lr = int(opts.pop("iterations", 20)), float(opts.pop("lr", 0.5))
    _no_opts(opts, method)
    lo, hi, _ = alpha_crown(net, s, C, d, splits, iterations, lr, upper, deadline=deadline)
    return Bounds(lo, hi)


def _with_A(net: Network, s: InputSet, C, d, intermediate: str, splits) -> Bounds:
    cache: dict = {}
    vals = propagate(net, s, intermediate, splits, relax_cache=cache)
    b = Bounds(*crown_spec(net, vals, s, C, d, True, relax_cache=cache))
    b.A = LinearBounds(*crown_linear(net, vals, s, C, d, relax_cache=cache))
    return b


def _no_opts(opts: dict, method: str) -> None:
    if opts:
        raise CertifyError(f"method {method!r} takes no option(s) {', '.join(sorted(opts))}")


def ibp(net_or_module, x=None, eps=0.01, norm="inf", C=None, d=None, domain=None, input_set=None,
        intermediate="ibp", splits=None) -> Bounds:
    """Interval bounds of ``C @ y + d`` over the ``norm`` ball of radius ``eps`` around ``x``."""
    net, s, C, d = _prepare(net_or_module, x, eps, norm, domain, input_set, C, d)
    return _ibp_bounds(net, s, C, d, splits)


def crown(net_or_module, x=None, eps=0.01, norm="inf", C=None, d=None, domain=None, input_set=None,
          intermediate="crown", splits=None, upper: bool = True) -> Bounds:
    """CROWN bounds; ``intermediate='ibp'`` takes the pre-activation bounds from IBP (CROWN-IBP)."""
    net, s, C, d = _prepare(net_or_module, x, eps, norm, domain, input_set, C, d)
    cache: dict = {}
    vals = propagate(net, s, intermediate, splits, relax_cache=cache)
    return Bounds(*crown_spec(net, vals, s, C, d, upper, relax_cache=cache))


def alpha(net_or_module, x=None, eps=0.01, norm="inf", C=None, d=None, domain=None, input_set=None,
          intermediate="crown", iterations: int = 20, lr: float = 0.5, splits=None, upper: bool = True) -> Bounds:
    """alpha-CROWN bounds (never looser than CROWN's); detached from the network parameters."""
    if intermediate != "crown":
        raise CertifyError("alpha-CROWN optimizes CROWN intermediate bounds; intermediate must be 'crown'")
    net, s, C, d = _prepare(net_or_module, x, eps, norm, domain, input_set, C, d)
    lo, hi, _ = alpha_crown(net, s, C, d, splits, iterations, lr, upper)
    return Bounds(lo, hi)


def intermediate_bounds(net: Network, input_set: InputSet, method: str = "crown", splits=None,
                        **opts) -> dict[str, Bounds]:
    """Bounds (B, *shape) of every pre-activation node (an input of a ReLU, another nonlinear
    op, MaxPool, a product or a softmax: ``bounds.activations.NEEDS_BOUNDS``).

    ``method='alpha'`` optimizes the slopes to shrink the sum of these bounds' widths
    (``iterations``, ``lr`` options) and returns the best bound of each neuron seen; crown takes
    ``patches`` (see ``compute_bounds``)."""
    method = str(method).lower()
    method = ALIASES.get(method, method)
    net, s, _, _ = _prepare(net, None, None, None, None, input_set, None, None)
    pre = preactivation_nodes(net)
    if method in ("crown", "ibp"):
        patches = bool(opts.pop("patches", True))
        _no_opts(opts, method)
        vals = propagate(net, s, method, splits, patches=patches)
        return {k: Bounds(*vals[k]) for k in pre}
    if method == "alpha":
        iterations, lr = int(opts.pop("iterations", 20)), float(opts.pop("lr", 0.5))
        _no_opts(opts, method)
        _, _, best = alpha_crown(net, s, None, None, splits, iterations, lr, upper=False,
                                 optimize_intermediate=True)
        return {k: Bounds(*best[k]) for k in pre}
    raise CertifyError(f"unknown intermediate-bound method {method!r}; choose crown, alpha or ibp")
