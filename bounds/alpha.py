"""alpha-CROWN (Xu et al. 2021): CROWN with optimized ReLU lower slopes.

Every unstable ReLU gets a lower-relaxation slope in [0, 1], separately for every bound it
feeds (auto_LiRPA's per-start-node alphas): for each pre-activation node S bounded by CROWN
and for the output spec, one tensor per ReLU below S, of shape (B, rows of S, *relu shape)
(rows = lower rows then upper rows), or only each row's receptive-field window of it when the
rows of S run in patches mode (as auto_LiRPA's patches alphas). The slopes start at CROWN's adaptive choice (so the
first iterate is exactly CROWN) and are optimized with Adam (learning rate decayed by 0.98
per step) on the gradient of the bound; intermediate bounds are recomputed with their own
slopes at every iteration, so the final bound benefits from tighter intermediate layers (those
whose graphs and slopes fit the memory budget, ``bounds/memory.py``; the others keep CROWN's).
Each recomputed intermediate bound takes the tightest value of its CROWN bound, its IBP
bound and the best bound of earlier iterations (all sound), but always the gradient of its
CROWN bound (straight-through, as auto_LiRPA's reference bounds): a plain minimum would send
the gradient of a neuron whose IBP or earlier bound is as tight or tighter to that bound
instead, and freeze its slopes. Every iterate is sound, so the best value seen per row (and
per intermediate neuron) is kept: the result is never looser than CROWN's. Lower and upper bounds share the
intermediate slopes and are optimized together (one round for both, not one each).

The other ops with alpha variables (their record's ``alpha_init`` in bounds/activations.py:
LeakyReLU, Sigmoid, Tanh, the smooth ops, Sign, Floor, and x * x as the square) are optimized
the same way, each in [0, 1] (what an alpha means is the record's: for the smooth ones, the
slopes of both lines), and so are the products of two tensors (weights of McCormick planes);
MaxPool and Softmax keep their fixed CROWN relaxations. The result is detached from the
network parameters (the optimization runs on a detached copy of the network).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from certify.ir.network import Network
from certify.spec.sets import InputSet
from bounds.crown import BoundTimeout, crown_spec, preactivation_nodes, propagate
from bounds import activations as act
from bounds.ibp import Interval
from bounds.memory import alpha_rows


def _adam_step(opt: torch.optim.Adam, params: list, grads, decay: float) -> None:
    """One Adam step on the given gradients (a None gradient leaves its slopes as they are), the
    slopes projected back onto [0, 1], then the learning rate times ``decay``."""
    for p, g in zip(params, grads):   # (a NaN/inf gradient from lines replaced by constants counts as 0)
        p.grad = None if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    opt.step()
    with torch.no_grad():
        for p in params:
            p.clamp_(0.0, 1.0)
    for group in opt.param_groups:
        group["lr"] *= decay


class _Slopes:
    """The alpha variables, created on first use: for the rows of one backward pass (key =
    the node being bounded and the chunk of rows) and one ReLU with unstable neurons, a
    tensor (B, rows, *shape), or per-row windows (B, rows, C, Ph, Pw) when that pass runs in
    patches mode (bounds/patches.py), initialized to CROWN's adaptive slopes."""

    def __init__(self, net: Network, vals0: dict[str, Interval]):
        self.init = {}
        for n in net.nodes:
            a0 = act.node_alpha_init(n, [vals0.get(i) for i in n.inputs])
            if a0 is not None:
                self.init[n.name] = a0
        self.params: dict = {}
        self.creating = True

    def __call__(self, key, node: str, rows: int, window=None):
        p = self.params.get((key, node))
        if p is not None or node not in self.init or not self.creating:
            return p
        a0 = self.init[node]
        if window is not None:
            p = window(a0).clone()
        else:
            p = a0.unsqueeze(1).expand((a0.shape[0], rows) + tuple(a0.shape[1:])).clone()
        p.requires_grad_(True)
        self.params[(key, node)] = p
        return p


@dataclass
class AlphaResult:
    """``lower``, ``upper`` (B, rows): the best bounds of the spec seen (sound); ``pre``: the best
    bounds of every pre-activation node; ``slopes``: the alpha variables after the last step,
    ``slopes.params`` {(key, node): tensor} (key: the bounded node and chunk of rows, or the
    output node for the spec's rows); ``rows``: the neurons bounded per pre-activation node
    ({node: (idx, valid)}, what ``propagate(rows=...)`` takes to reuse the slopes); ``steps``: the
    Adam steps taken."""

    lower: torch.Tensor
    upper: torch.Tensor
    pre: dict
    slopes: "_Slopes"
    rows: dict
    steps: int


def optimize(net: Network, input_set: InputSet, C: torch.Tensor | None = None, d: torch.Tensor | None = None,
             splits: dict | None = None, iterations: int = 20, lr: float = 0.5, upper: bool = True,
             optimize_intermediate: bool = False, decay: float = 0.98, patience: int | None = None,
             rel_tol: float = 1e-3, stop=None, deadline: float | None = None,
             first_deadline: float | None = None) -> AlphaResult:
    """alpha-CROWN (see the module docstring), returning the slopes as well as the bounds.

    ``patience``: stop once the objective (the sum of the spec's lower bounds minus its upper
    ones) has not improved by more than ``rel_tol`` of its magnitude (at least 1e-6) for that
    many steps; ``stop(best_lower)``: a callable, True to stop (e.g. every row proved);
    ``deadline`` (time.monotonic()): no step begins after it, and a step running past it is
    dropped (the best bounds so far stand). The first (CROWN) pass always runs unless
    ``first_deadline`` is given: past that one it raises ``BoundTimeout``. Only the intermediate
    bounds whose graphs fit ``bounds.memory.ALPHA_BUDGET`` are optimized; ``rows`` in the result are
    all the rows of the first pass."""
    net = net.detach()
    rows, volume = {}, {}
    vals0 = propagate(net, input_set, "crown", splits, record_rows=rows, deadline=first_deadline,
                      record_volume=volume)
    vals0 = {k: (v[0].detach(), v[1].detach()) for k, v in vals0.items()}
    lo0, hi0 = crown_spec(net, vals0, input_set, C, d, upper, deadline=first_deadline)
    best_lo, best_hi = lo0.detach(), hi0.detach()
    pre = preactivation_nodes(net)
    best_pre = {k: vals0[k] for k in pre}
    slopes = _Slopes(net, vals0)
    steps = 0
    opt_rows = alpha_rows(net, rows, volume, lo0.shape[0], lo0.shape[1], upper, lo0.dtype)
    if not slopes.init or iterations <= 0 or opt_rows is None:
        return AlphaResult(best_lo, best_hi, best_pre, slopes, rows, steps)
    adam, best_obj, since = None, -float("inf"), 0
    for it in range(iterations):
        try:
            vals = propagate(net, input_set, "crown", splits, alpha_of=slopes, rows=opt_rows,
                             reference=dict(best_pre), deadline=deadline)
            lo, hi = crown_spec(net, vals, input_set, C, d, upper, slopes, deadline=deadline)
        except BoundTimeout:        # every earlier iterate is sound: the best so far stands
            break
        slopes.creating = False
        loss = -lo.sum() + (hi.sum() if upper else 0.0)
        with torch.no_grad():
            best_lo, best_hi = torch.maximum(best_lo, lo), torch.minimum(best_hi, hi)
            for k in pre:
                best_pre[k] = (torch.maximum(best_pre[k][0], vals[k][0]), torch.minimum(best_pre[k][1], vals[k][1]))
            obj = float(best_lo.sum() - (best_hi.sum() if upper else 0.0))
        if obj > best_obj + max(rel_tol * abs(obj), 1e-6):
            best_obj, since = obj, 0
        else:
            since += 1
        if optimize_intermediate:
            loss = loss + sum((vals[k][1] - vals[k][0]).sum() for k in pre)
        params = list(slopes.params.values())
        if it == iterations - 1 or not params or not loss.requires_grad:
            break
        if (patience is not None and since >= patience) or (stop is not None and stop(best_lo)) or (
                deadline is not None and time.monotonic() > deadline):
            break
        adam = adam or torch.optim.Adam(params, lr=lr)
        _adam_step(adam, params, torch.autograd.grad(loss, params, allow_unused=True), decay)
        steps += 1
    return AlphaResult(best_lo, best_hi, best_pre, slopes, rows, steps)


def alpha_crown(net: Network, input_set: InputSet, C: torch.Tensor | None = None, d: torch.Tensor | None = None,
                splits: dict | None = None, iterations: int = 20, lr: float = 0.5, upper: bool = True,
                optimize_intermediate: bool = False, decay: float = 0.98, patience: int | None = None,
                deadline: float | None = None):
    """Optimized bounds of ``C @ y + d``: (lower (B, rows), upper (B, rows), intermediate dict).

    ``optimize_intermediate=True`` adds the widths of every pre-activation bound to the
    objective (used by ``intermediate_bounds(method='alpha')``); otherwise only the final
    bound is optimized (the intermediate slopes still follow its gradient). ``patience``: see
    ``optimize``. ``deadline``: the first (CROWN) pass raises ``BoundTimeout`` past it; later,
    the best bounds so far are returned."""
    net = net.detach()
    res = optimize(net, input_set, C, d, splits, iterations, lr, upper, optimize_intermediate, decay, patience,
                   deadline=deadline, first_deadline=deadline)
    best_lo, best_hi, best_pre = res.lower, res.upper, res.pre
    if not res.slopes.init or iterations <= 0:
        return best_lo, best_hi, best_pre
    with torch.no_grad():       # one more pass: the last slopes on the best bounds of every layer
        try:
            lo, hi = crown_spec(net, best_pre, input_set, C, d, upper, res.slopes, deadline=deadline)
        except BoundTimeout:
            return best_lo, best_hi, best_pre
        best_lo, best_hi = torch.maximum(best_lo, lo), torch.minimum(best_hi, hi)
    return best_lo, best_hi, best_pre
