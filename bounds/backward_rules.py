"""Backward (CROWN) rules: one per IR op, in ``BACKWARD_RULES``.

The bounded quantity is a batch of linear functions of a node's output ``y``:
``A . y + c`` with ``A`` of shape (B, R, *shape(y)) (R rows per batch element). A rule maps
``A`` to coefficients on each of the op's inputs so that

    A . op(x_1, ..., x_n)  >=  sum_i A_i . x_i + bias        (for every x in the bounds)

with ``bias`` of shape (B, R) (``None`` for 0). Affine ops are exact (equality); activations
use the relaxations of their records (``bounds/activations.py``), products McCormick planes
(``bounds/bilinear.py``), softmax ``bounds/softmax.py``: positive coefficients take the lower line,
negative ones the upper line, so the result is a lower bound of every row. Upper bounds are
lower bounds of the negated rows (see bounds/crown.py).

Convolutions go backward through ``conv_transpose2d`` (never unrolled to a dense matrix).
A rule receives ``ctx``: ``ctx.bounds(name)`` -> (lo, hi) of a node, ``ctx.alpha(node, rows)`` ->
the node's optimized alpha variables (B, rows, n_alpha * shape[0], *shape[1:]) or None, ``ctx.in_shapes``, and
``ctx.relaxation(key, fn, lo, hi)`` -> ``fn(lo, hi)``, cached across the backward passes of one
bound computation (as long as the node's bounds are the same tensors). Rows that start at
a (C, H, W) node travel as receptive-field windows instead (``bounds/patches.py``, its own
rule table); an op without a window rule turns them dense and uses this table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from certify.ir import ops as O
from bounds import activations as act
from bounds.bilinear import matmul_backward, mul_backward
from bounds.relaxations import maxpool_relax
from bounds.softmax import softmax_backward


def _sum_feat(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dim after (B, R)."""
    return t.flatten(2).sum(2)


def _linear(op: O.Linear, A, node, ctx):
    As = torch.matmul(A, op.weight)
    bias = None if op.bias is None else torch.matmul(A, op.bias)
    return [As], bias


def _conv_out_padding(op: O.Conv2d, in_hw, out_hw) -> tuple[int, int]:
    pads = []
    for i in range(2):
        k = op.weight.shape[2 + i]
        full = (out_hw[i] - 1) * op.stride[i] - 2 * op.padding[i] + op.dilation[i] * (k - 1) + 1
        pads.append(in_hw[i] - full)
    return tuple(pads)


def _tiles(op: O.Conv2d, in_shape, out_shape) -> bool:
    """Whether the windows of ``op`` tile its input exactly (stride = kernel, no padding or
    dilation, out x kernel = in): each input element lies in exactly one window."""
    k = tuple(op.weight.shape[2:])
    return (tuple(op.stride) == k and tuple(op.padding) == (0, 0) and tuple(op.dilation) == (1, 1)
            and tuple(out_shape[1 + i] * k[i] for i in range(2)) == tuple(in_shape[1:]))


def _conv(op: O.Conv2d, A, node, ctx):
    B, R = A.shape[:2]
    in_shape = ctx.in_shapes[0]
    out_shape = A.shape[2:]
    if op.groups == 1 and in_shape[0] <= 4:
        # Few input channels (image inputs): matmul + fold beats conv_transpose2d on CPU (3x).
        O_, I, kh, kw = op.weight.shape
        cols = torch.matmul(op.weight.reshape(O_, I * kh * kw).t(), A.reshape(B * R, O_, -1))
        ph, pw = op.padding
        oh, ow = out_shape[1:]
        if _tiles(op, in_shape, out_shape):   # non-overlapping windows covering the input: fold is a permutation
            At = cols.reshape(B * R, I, kh, kw, oh, ow).permute(0, 1, 4, 2, 5, 3).reshape(B * R, I, oh * kh, ow * kw)
        else:
            full = (in_shape[1] + 2 * ph, in_shape[2] + 2 * pw)
            At = F.fold(cols, full, (kh, kw), dilation=op.dilation, stride=op.stride)
            At = At[:, :, ph:ph + in_shape[1], pw:pw + in_shape[2]]
    else:
        At = F.conv_transpose2d(A.reshape((B * R,) + tuple(out_shape)), op.weight, None, op.stride, op.padding,
                                _conv_out_padding(op, in_shape[1:], out_shape[1:]), op.groups, op.dilation)
    bias = None if op.bias is None else torch.matmul(A.sum((3, 4)), op.bias)
    return [At.reshape((B, R) + tuple(in_shape))], bias


def _const_add(op: O.ConstAdd, A, node, ctx):
    return [A], _sum_feat(A * op.const)


def _const_mul(op: O.ConstMul, A, node, ctx):
    return [A * op.const], None


def _add(op, A, node, ctx):
    return [A, A], None


def _sub(op, A, node, ctx):
    return [A, -A], None


def _channel_affine(op, A, node, ctx):
    scale, shift = op.scale_shift()
    view = (-1,) + (1,) * (A.dim() - 3)
    return [A * scale.reshape(view)], _sum_feat(A * shift.reshape(view))


def _avgpool(op: O.AvgPool2d, A, node, ctx):
    B, R, C, Ho, Wo = A.shape
    in_shape = ctx.in_shapes[0]
    kh, kw = op.kernel
    ones = torch.ones((1, 1) + tuple(in_shape[1:]), dtype=A.dtype, device=A.device)
    if op.count_include_pad:
        count = torch.full((Ho, Wo), float(kh * kw), dtype=A.dtype, device=A.device)
    else:
        count = F.avg_pool2d(ones, op.kernel, op.stride, op.padding, count_include_pad=True)[0, 0] * (kh * kw)
    # y = sum-pool(x) / count: backward through the sum pool with a depthwise all-ones kernel.
    w = torch.ones((C, 1, kh, kw), dtype=A.dtype, device=A.device)
    conv = O.Conv2d(w, None, op.stride, op.padding, (1, 1), C)
    At = F.conv_transpose2d((A / count).reshape(B * R, C, Ho, Wo), w, None, op.stride, op.padding,
                            _conv_out_padding(conv, in_shape[1:], (Ho, Wo)), C)
    return [At.reshape((B, R) + tuple(in_shape))], None


def _reshape(op, A, node, ctx):
    return [A.reshape(A.shape[:2] + tuple(ctx.in_shapes[0]))], None


def _identity(op, A, node, ctx):
    return [A], None


def _concat(op: O.Concat, A, node, ctx):
    sizes = [s[op.axis] for s in ctx.in_shapes]
    return list(torch.split(A, sizes, dim=op.axis + 2)), None


def _activation(op, A, node, ctx):
    """An elementwise nonlinear op, relaxed by its record (``bounds/activations.py``)."""
    lo, hi = ctx.bounds(node.inputs[0])
    alpha = ctx.alpha(node.name, A.shape[1])
    rec, fin = act.ACTIVATIONS[type(op)], ctx.finite
    if alpha is None:               # the same for every backward pass through this node: cached
        r = ctx.relaxation(node.name, lambda lo, hi: act.relax(op, lo.unsqueeze(1), hi.unsqueeze(1), None, fin),
                           lo, hi)
    else:
        r = act.relax(op, lo.unsqueeze(1), hi.unsqueeze(1), act.split_alpha(op, alpha), fin)
    Ap = A.clamp(min=0)
    As = A * r.upper_slope + Ap * (r.lower_slope - r.upper_slope)
    # sum(A- * ub + A+ * lb) (batched matrix products when the intercepts have no row dim)
    fin = fin and rec.bounded
    bias = act.intercept_sum(A - Ap, r.upper_bias, fin)
    if not rec.lower_bias_zero:
        bias = bias + act.intercept_sum(Ap, r.lower_bias, fin)
    return [As], bias
def _linear_map(op: O.LinearMap, A, node, ctx):
    """An op ``y = L(x) + forward(0)`` (``ops.LinearMap``): the rows ``A L`` are the vector-Jacobian
    product of the op's reference forward with the rows as output gradients (exact); the offset
    contributes ``A . forward(0)``."""
    B, R = A.shape[:2]
    in_shape = tuple(ctx.in_shapes[0])
    keep = torch.is_grad_enabled() and A.requires_grad          # rows that carry a gradient (alpha)
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.zeros((B * R,) + in_shape, dtype=A.dtype, device=A.device, requires_grad=True)
        y = op.forward(x)
        (At,) = torch.autograd.grad(y, x, A.reshape(y.shape), create_graph=keep)
    bias = None
    if op.has_offset:
        c = op.forward(torch.zeros((1,) + in_shape, dtype=A.dtype, device=A.device))
        bias = _sum_feat(A * c.unsqueeze(1))
    return [At.reshape((B, R) + in_shape)], bias


def _conv_transpose(op: O.ConvTranspose2d, A, node, ctx):
    B, R = A.shape[:2]
    in_shape = tuple(ctx.in_shapes[0])
    At = F.conv2d(A.reshape((B * R,) + tuple(A.shape[2:])), op.weight, None, op.stride, op.padding, op.dilation,
                  op.groups)
    bias = None if op.bias is None else torch.matmul(A.sum((3, 4)), op.bias)
    return [At.reshape((B, R) + in_shape)], bias




def _maxpool(op: O.MaxPool2d, A, node, ctx):
    lo, hi = ctx.bounds(node.inputs[0])
    B, R, C, Ho, Wo = A.shape
    H, W = lo.shape[2:]
    ph, pw = op.padding
    pr = ctx.relaxation((node.name, "pool"), lambda lo, hi: maxpool_relax(op, lo, hi), lo, hi)   # (B, C, L) each
    Af = A.reshape(B, R, C, Ho * Wo)
    Ap, An = Af.clamp(min=0), Af.clamp(max=0)
    exact = pr.exact.unsqueeze(1).to(A.dtype)
    coef = Ap + An * exact                                       # on x_k
    uc = pr.upper_const.unsqueeze(1)
    if ctx.finite or bool(torch.isfinite(uc).all()):
        bias = (An * (1 - exact) * uc).sum((2, 3))
    else:                                                        # an unbounded input: no 0 * inf
        bias = act.intercept_sum(An * (1 - exact), uc)
    kk = op.kernel[0] * op.kernel[1]
    cols = torch.zeros(B, R, C, kk, Ho * Wo, dtype=A.dtype, device=A.device)
    idx = pr.index.unsqueeze(1).unsqueeze(3).expand(B, R, C, 1, Ho * Wo)
    cols = cols.scatter(3, idx, coef.unsqueeze(3))
    full = F.fold(cols.reshape(B * R * C, kk, Ho * Wo), (H + 2 * ph, W + 2 * pw), op.kernel, stride=op.stride)
    full = full[:, :, ph:ph + H, pw:pw + W]
    return [full.reshape(B, R, C, H, W)], bias


def linear_start(op: O.Linear, idx: torch.Tensor, in_shape, out_shape):
    """Rows e_idx of a Linear output pushed to its input without forming them: W[idx], b[idx]."""
    A = op.weight[idx]                                            # (B, R, in)
    bias = None if op.bias is None else op.bias[idx]
    return A, bias


def conv_start(op: O.Conv2d, idx: torch.Tensor, in_shape, out_shape):
    """Rows e_idx of a Conv2d output (flat indices into (O, Ho, Wo)) pushed to its input:
    each row is the kernel of its output channel placed at its receptive field (no
    transposed convolution of one-hot rows). Returns A (B, R, *in_shape), bias (B, R)."""
    B, R = idx.shape
    O_, Ho, Wo = out_shape
    I, H, W = in_shape
    _, Ig, kh, kw = op.weight.shape
    (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
    o, rem = idx // (Ho * Wo), idx % (Ho * Wo)
    i, j = rem // Wo, rem % Wo
    g = o // (O_ // op.groups)
    Hp = max(H + 2 * ph, (Ho - 1) * sh + dh * (kh - 1) + 1)
    Wp = max(W + 2 * pw, (Wo - 1) * sw + dw * (kw - 1) + 1)
    dev = idx.device
    ar = lambda n: torch.arange(n, device=dev)
    bi = ar(B).reshape(B, 1, 1, 1, 1)
    ri = ar(R).reshape(1, R, 1, 1, 1)
    ci = (g * Ig).reshape(B, R, 1, 1, 1) + ar(Ig).reshape(1, 1, Ig, 1, 1)
    hi = (i * sh).reshape(B, R, 1, 1, 1) + (ar(kh) * dh).reshape(1, 1, 1, kh, 1)
    wi = (j * sw).reshape(B, R, 1, 1, 1) + (ar(kw) * dw).reshape(1, 1, 1, 1, kw)
    shape = (B, R, Ig, kh, kw)
    ker = op.weight[o]                                            # (B, R, Ig, kh, kw)
    A = torch.zeros((B, R, I, Hp, Wp), dtype=op.weight.dtype, device=dev)
    A = A.index_put((bi.expand(shape), ri.expand(shape), ci.expand(shape), hi.expand(shape), wi.expand(shape)), ker)
    A = A[:, :, :, ph:ph + H, pw:pw + W]
    bias = None if op.bias is None else op.bias[o]
    return A, bias


START_RULES = {O.Linear: linear_start, O.Conv2d: conv_start}


BACKWARD_RULES = {
    O.Linear: _linear,
    O.Conv2d: _conv,
    O.ConstAdd: _const_add,
    O.ConstMul: _const_mul,
    O.Add: _add,
    O.Sub: _sub,
    O.BatchNorm: _channel_affine,
    O.Normalize: _channel_affine,
    O.AvgPool2d: _avgpool,
    O.MaxPool2d: _maxpool,
    O.Flatten: _reshape,
    O.Reshape: _reshape,
    O.Identity: _identity,
    O.Concat: _concat,
    # data movement and reductions (ops.LinearMap)
    O.Slice: _linear_map,
    O.Gather: _linear_map,
    O.Transpose: _linear_map,
    O.Pad: _linear_map,
    O.ReduceSum: _linear_map,
    O.ReduceMean: _linear_map,
    O.ConvTranspose2d: _conv_transpose,
}
# nonlinear ops: the elementwise ones from their records, then products and softmax
BACKWARD_RULES.update({cls: _activation for cls in act.ACTIVATIONS})
BACKWARD_RULES.update({
    O.Mul: mul_backward,
    O.MatMul: matmul_backward,
    O.Softmax: softmax_backward,
})
