"""Patches: a sparse form of the backward coefficients for rows that start at a convolution.

A row that bounds one neuron of a conv layer only involves, at every earlier node, the
neuron's receptive field: a small window. ``Patches`` stores, per row, that window's
coefficients ``t`` (B, R, C, Ph, Pw) and its top-left corner ``(oh, ow)`` (B, R) in the
node's (H, W) grid (entries outside the grid are kept at 0). The backward rules of
``PATCH_RULES`` (conv, transposed conv, activations, per-channel affine ops, Add / Sub, Identity) work on the
windows; any other op densifies first (``to_dense``). This is auto_LiRPA's "patches mode"
idea: the cost per row is the window, not the image, which is what makes CROWN's
intermediate bounds of convolutional networks cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from certify.ir import ops as O
from bounds import activations as act

MAP_BUDGET = 2 ** 22     # entries of a transposed conv's per-phase matrix (``_phase_map``)


@dataclass
class Patches:
    t: torch.Tensor            # (B, R, C, Ph, Pw)
    oh: torch.Tensor           # (B, R) long: window top row in the node's grid (may be < 0)
    ow: torch.Tensor           # (B, R) long
    H: int
    W: int

    @property
    def shape(self):
        return self.t.shape

    def __neg__(self) -> "Patches":
        return Patches(-self.t, self.oh, self.ow, self.H, self.W)

    def with_t(self, t: torch.Tensor) -> "Patches":
        return Patches(t, self.oh, self.ow, self.H, self.W)


def _index(p: Patches):
    B, R, _, Ph, Pw = p.t.shape
    ph = max(0, int(-p.oh.min()), int((p.oh + Ph).max()) - p.H)
    pw = max(0, int(-p.ow.min()), int((p.ow + Pw).max()) - p.W)
    dev = p.oh.device
    hi = (p.oh + ph).reshape(B, R, 1, 1) + torch.arange(Ph, device=dev).reshape(1, 1, Ph, 1)
    wi = (p.ow + pw).reshape(B, R, 1, 1) + torch.arange(Pw, device=dev).reshape(1, 1, 1, Pw)
    bi = torch.arange(B, device=dev).reshape(B, 1, 1, 1)
    ri = torch.arange(R, device=dev).reshape(1, R, 1, 1)
    return ph, pw, bi, ri, hi, wi


def window(X: torch.Tensor, p: Patches) -> torch.Tensor:
    """Each row's window of X: X (B, C, H, W) shared by the rows, or (B, R, C, H, W) per row
    (a size-1 row dim broadcasts). Returns (B, R, C, Ph, Pw), zeros outside the grid."""
    ph, pw, bi, ri, hi, wi = _index(p)
    if X.dim() == 5 and X.shape[1] == 1:
        X = X[:, 0]
    Xp = F.pad(X, (pw, pw, ph, ph))
    if X.dim() == 5:
        out = Xp.permute(0, 1, 3, 4, 2).contiguous()[bi, ri, hi, wi]
    else:
        out = Xp.permute(0, 2, 3, 1).contiguous()[bi, hi, wi]
    return out.permute(0, 1, 4, 2, 3)


def mask(p: Patches) -> Patches:
    """Zero the entries of windows that fall outside the node's grid."""
    _, _, _, Ph, Pw = p.t.shape
    dev = p.oh.device
    h = p.oh.reshape(p.oh.shape + (1, 1)) + torch.arange(Ph, device=dev).reshape(1, 1, Ph, 1)
    w = p.ow.reshape(p.ow.shape + (1, 1)) + torch.arange(Pw, device=dev).reshape(1, 1, 1, Pw)
    ok = ((h >= 0) & (h < p.H) & (w >= 0) & (w < p.W)).unsqueeze(2)
    return p.with_t(p.t * ok.to(p.t.dtype))


def to_dense(p: Patches) -> torch.Tensor:
    """(B, R, C, H, W) coefficients."""
    B, R, C, Ph, Pw = p.t.shape
    ph, pw, bi, ri, hi, wi = _index(p)
    D = torch.zeros((B, R, p.H + 2 * ph, p.W + 2 * pw, C), dtype=p.t.dtype, device=p.t.device)
    D = D.index_put((bi.expand(B, R, Ph, Pw), ri.expand(B, R, Ph, Pw), hi.expand(B, R, Ph, Pw),
                     wi.expand(B, R, Ph, Pw)), p.t.permute(0, 1, 3, 4, 2))
    return D.permute(0, 1, 4, 2, 3)[:, :, :, ph:ph + p.H, pw:pw + p.W]


def add(a: Patches, b: Patches) -> Patches | None:
    """a + b as one window per row when their offsets differ by the same amount in every row."""
    dh, dw = b.oh - a.oh, b.ow - a.ow
    if dh.numel() == 0 or not bool((dh == dh.flatten()[0]).all() & (dw == dw.flatten()[0]).all()):
        return None
    dh, dw = int(dh.flatten()[0]), int(dw.flatten()[0])
    Pha, Pwa = a.t.shape[-2:]
    Phb, Pwb = b.t.shape[-2:]
    top, left = min(0, dh), min(0, dw)
    bottom, right = max(Pha, dh + Phb), max(Pwa, dw + Pwb)
    ta = F.pad(a.t, (-left, right - Pwa, -top, bottom - Pha))
    tb = F.pad(b.t, (dw - left, right - dw - Pwb, dh - top, bottom - dh - Phb))
    return Patches(ta + tb, a.oh + top, a.ow + left, a.H, a.W)


def _conv(op: O.Conv2d, p: Patches, node, ctx):
    if op.groups != 1:
        return None
    B, R, Oc, Ph, Pw = p.t.shape
    t = F.conv_transpose2d(p.t.reshape(B * R, Oc, Ph, Pw), op.weight, None, op.stride, 0, 0, 1, op.dilation)
    t = t.reshape((B, R) + tuple(t.shape[1:]))
    bias = None if op.bias is None else torch.matmul(p.t.sum((3, 4)), op.bias)
    in_shape = ctx.in_shapes[0]
    q = mask(Patches(t, p.oh * op.stride[0] - op.padding[0], p.ow * op.stride[1] - op.padding[1],
                     in_shape[1], in_shape[2]))
    if t.shape[-2] * t.shape[-1] >= in_shape[1] * in_shape[2]:
        return [to_dense(q)], bias              # the window covers the grid: dense is no dearer
    return [q], bias


def _conv_transpose(op: O.ConvTranspose2d, p: Patches, node, ctx):
    """y = convT(x): the rows on x are conv2d(rows on y) (the adjoint). A window at y-offset ``oh``
    reaches the x positions from ``i0 = ceil((oh + pad - dil (k - 1)) / stride)``; placed at phase
    ``oh + pad - i0 stride`` (one of ``stride`` values per dim) on a canvas that starts at
    y-position ``i0 stride - pad``, a stride-``stride`` conv2d of the canvas gives the rows on x
    from ``i0`` on (entries cropped off the canvas reach no x). Rows of one phase share that
    linear map: applied as the conv, or as its matrix when that is cheaper (``_phase_map``)."""
    B, R, Oc, Ph, Pw = p.t.shape
    kh, kw = op.weight.shape[2:]
    (sh, sw), (dh, dw) = op.stride, op.dilation
    i0 = -torch.div(-(p.oh + op.padding[0] - dh * (kh - 1)), sh, rounding_mode="floor")
    j0 = -torch.div(-(p.ow + op.padding[1] - dw * (kw - 1)), sw, rounding_mode="floor")
    ph, pw = p.oh + op.padding[0] - i0 * sh, p.ow + op.padding[1] - j0 * sw     # phases (B, R)
    Qh, Qw = (int(ph.max()) + Ph - 1) // sh + 1, (int(pw.max()) + Pw - 1) // sw + 1   # windows on x
    I = op.weight.shape[0]
    flat = p.t.reshape(B * R, Oc, Ph, Pw)
    phases, key = torch.unique(torch.stack([ph.reshape(-1), pw.reshape(-1)], 1), dim=0, return_inverse=True)
    out = None if len(phases) == 1 else p.t.new_zeros((B * R, I, Qh, Qw))
    for c, (a, b) in enumerate(phases.tolist()):
        rows = None if out is None else (key == c).nonzero().squeeze(1)
        tc = flat if rows is None else flat.index_select(0, rows)
        res = _phase_map(op, tc, a, b, Qh, Qw)
        if out is None:
            out = res
        else:
            out = out.index_copy(0, rows, res)
    t = out.reshape(B, R, I, Qh, Qw)
    bias = None if op.bias is None else torch.matmul(p.t.sum((3, 4)), op.bias)
    in_shape = ctx.in_shapes[0]
    q = mask(Patches(t, i0, j0, in_shape[1], in_shape[2]))
    if Qh * Qw >= in_shape[1] * in_shape[2]:
        return [to_dense(q)], bias
    return [q], bias


def _phase_map(op: O.ConvTranspose2d, t: torch.Tensor, ph: int, pw: int, Qh: int, Qw: int) -> torch.Tensor:
    """Windows t (N, Oc, Ph, Pw) at phase (ph, pw) -> their (N, I, Qh, Qw) windows on the input.
    The conv costs N x (its cost per window); the matrix of the map costs Oc Ph Pw windows to build
    and N x Oc Ph Pw x I Qh Qw to apply: taken when cheaper and no larger than ``MAP_BUDGET``."""
    N, Oc, Ph, Pw = t.shape
    kh, kw = op.weight.shape[2:]
    (sh, sw), (dh, dw) = op.stride, op.dilation
    I = op.weight.shape[0]
    Lh, Lw = (Qh - 1) * sh + dh * (kh - 1) + 1, (Qw - 1) * sw + dw * (kw - 1) + 1
    pads = (pw, Lw - pw - Pw, ph, Lh - ph - Ph)                  # negative: cropped

    def conv(w):
        return F.conv2d(F.pad(w, pads), op.weight, None, op.stride, 0, op.dilation, op.groups)

    n_in, n_out = Oc * Ph * Pw, I * Qh * Qw
    per_window = n_out * (Oc // op.groups) * kh * kw             # multiply-adds of the conv per window
    if n_in * n_out > MAP_BUDGET or N * per_window <= n_in * per_window + N * n_in * n_out:
        return conv(t)
    with torch.no_grad():
        M = conv(torch.eye(n_in, dtype=t.dtype, device=t.device).reshape(n_in, Oc, Ph, Pw)).reshape(n_in, n_out)
    return (t.reshape(N, n_in) @ M).reshape(N, I, Qh, Qw)


def _grid_relax(op, lo, hi, finite: bool):
    """The record's lines on the whole grid, and whether they are finite (else: dense rule)."""
    if finite and act.ACTIVATIONS[type(op)].bounded:
        return act.relax(op, lo, hi, None, True), True
    r = act.relax(op, lo, hi)
    return r, bool(torch.isfinite(torch.stack([r.upper_bias, r.lower_bias])).all())


def _activation(op, p: Patches, node, ctx):
    lo, hi = ctx.bounds(node.inputs[0])
    a = ctx.alpha(node.name, p.t.shape[1], lambda X: window(X, p))
    rec = act.ACTIVATIONS[type(op)]
    zero_lb = rec.lower_bias_zero
    if a is not None and not rec.alpha_is_lower_slope:     # alpha-dependent lines: relaxed per row's window
        checked = not (ctx.finite and rec.bounded)
        if checked and not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            return None
        r = act.relax(op, window(lo, p), window(hi, p), act.split_alpha(op, a), not checked)
        if checked and not bool(torch.isfinite(r.upper_bias).all() & torch.isfinite(r.lower_bias).all()):
            return None
        us, ub, ls, lb = r.upper_slope, r.upper_bias, r.lower_slope, r.lower_bias
    else:
        r, finite = ctx.relaxation((node.name, "grid"), lambda l, h: _grid_relax(op, l, h, ctx.finite), lo, hi)
        if not finite:
            return None
        ls = r.lower_slope
        if a is not None:                           # unstable neurons marked NaN: they take alpha
            ls = ctx.relaxation((node.name, "marked"), lambda l, h: torch.where(rec.unstable(op, l, h), float("nan"),
                                                                               r.lower_slope), lo, hi)
        parts = [r.upper_slope, r.upper_bias, ls] + ([] if zero_lb else [r.lower_bias])
        w = window(torch.cat(parts, 1), p).split(lo.shape[1], dim=2)
        us, ub, ls = w[0], w[1], w[2]
        lb = None if zero_lb else w[3]
        if a is not None:                           # the optimized lower slopes of unstable neurons
            ls = torch.where(torch.isnan(ls), a, ls)
    A = p.t
    pos = A >= 0
    As = A * torch.where(pos, ls, us)
    bias = (A.clamp(max=0) * ub).sum((2, 3, 4))
    if lb is not None:
        bias = bias + (A.clamp(min=0) * lb).sum((2, 3, 4))
    return [p.with_t(As)], bias


def _channel_affine(op, p: Patches, node, ctx):
    scale, shift = op.scale_shift()
    v = (1, 1, -1, 1, 1)
    return [p.with_t(p.t * scale.reshape(v))], (p.t * shift.reshape(v)).sum((2, 3, 4))


PATCH_RULES = {
    O.Conv2d: _conv,
    O.ConvTranspose2d: _conv_transpose,
    O.BatchNorm: _channel_affine,
    O.Normalize: _channel_affine,
    O.Add: lambda op, p, node, ctx: ([p, p], None),
    O.Sub: lambda op, p, node, ctx: ([p, -p], None),
    O.Identity: lambda op, p, node, ctx: ([p], None),
}
PATCH_RULES.update({cls: _activation for cls in act.ACTIVATIONS})      # elementwise nonlinear ops


def concretize_lower_patches(p: Patches, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """min of the rows over the box [lo, hi] (B, C, H, W): (B, R)."""
    mid, rad = window((hi + lo) / 2, p), window((hi - lo) / 2, p)
    return (p.t * mid).sum((2, 3, 4)) - (p.t.abs() * rad).sum((2, 3, 4))
