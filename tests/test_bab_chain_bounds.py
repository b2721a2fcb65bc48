"""Soundness of the BaB bound routine: no sampled point of a domain (box + ReLU signs) may fall
below a proved bound, for every intermediate-bound mode, with alpha and beta optimization; and
the affine/ReLU chain computes the same function as the IR network."""
from __future__ import annotations

import pytest
import torch

from bounds.bab.chain import to_chain
from bounds.bab.chain_bounds import bound_domains, optimized_pre_bounds, pre_activation_bounds
from certify.ir import (BatchNorm, ConstAdd, Conv2d, Flatten, Linear, Normalize, ReLU, Reshape,
                        sequential)
from helpers.networks import random_mlp


def _chain_and_box(net_seed, sizes, box_seed, width):
    """A random MLP's chain, a generator seeded ``box_seed`` (for the test's later draws) and one
    box (1, n_in) of the given width drawn from it: [x, x + width], x uniform in [-1, 0)."""
    ch = to_chain(random_mlp(sizes, net_seed))
    g = torch.Generator().manual_seed(box_seed)
    lo1 = torch.rand(1, sizes[0], generator=g, dtype=torch.float64) - 1
    return ch, g, lo1, lo1 + width


def _split_domains(ch, g, B, r, n_out, frac):
    """B boxes (width 0.8) with r random margin rows, and splits on a random ``frac`` of each
    box's unstable neurons (sign +-1 at random)."""
    lo = torch.rand(B, ch.n_in, generator=g, dtype=torch.float64) - 1
    hi = lo + 0.8
    C = torch.randn(B, r, n_out, generator=g, dtype=torch.float64)
    d = torch.randn(B, r, generator=g, dtype=torch.float64)
    pre = pre_activation_bounds(ch, lo, hi)
    splits = []
    for l, u in pre:
        s = torch.zeros_like(l, dtype=torch.int8)
        pick = (l < 0) & (u > 0) & (torch.rand(l.shape, generator=g) < frac)
        s[pick] = torch.where(torch.rand(l.shape, generator=g) < 0.5, 1, -1).to(torch.int8)[pick]
        splits.append(s)
    return lo, hi, C, d, pre, splits


def _margins_on_domains(ch, lo, hi, C, d, splits, n, g):
    """Per domain b: the margins C_b z + d_b (k, r) at those of n uniform points of its box whose
    pre-activations have its split signs."""
    x = lo.unsqueeze(1) + torch.rand(lo.shape[0], n, lo.shape[1], generator=g, dtype=torch.float64) * (hi - lo).unsqueeze(1)
    out = []
    for b in range(lo.shape[0]):
        a, ok = x[b], torch.ones(n, dtype=torch.bool)
        for k, (w, bias) in enumerate(zip(ch.weights, ch.biases)):
            z = a @ w.T + bias
            if k < len(ch.weights) - 1:
                ok &= ((splits[k][b] > 0) & (z < 0) | (splits[k][b] < 0) & (z > 0)).sum(1) == 0
                a = z.clamp(min=0)
        out.append((z @ C[b].T + d[b])[ok])
    return out


def test_chain_matches_ir_on_a_conv_net():
    g = torch.Generator().manual_seed(0)
    net = sequential((1, 6, 6), [
        Normalize(torch.tensor([0.5]), torch.tensor([0.25])),
        Conv2d(torch.randn(3, 1, 3, 3, generator=g), torch.randn(3, generator=g), 1, 1, 1, 1),
        BatchNorm(torch.rand(3, generator=g), torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g),
                  torch.randn(3, generator=g), 1e-5),
        ReLU(), Flatten(), Linear(torch.randn(8, 108, generator=g), torch.randn(8, generator=g)), ReLU(),
        ReLU(), ConstAdd(torch.randn(8, generator=g)), Reshape((2, 4)), Flatten(),
        Linear(torch.randn(3, 8, generator=g), torch.zeros(3))])
    ch = to_chain(net)
    assert ch is not None and ch.hidden_sizes == [108, 8, 8]
    x = torch.rand(5, 1, 6, 6, generator=g)
    ref = net.to(torch.float64)(x.double())
    assert torch.allclose(ch.forward(x.double().reshape(5, -1)), ref, atol=1e-9)


@pytest.mark.parametrize("mode", ["backward", "forward", "hybrid", "refine"])
@pytest.mark.parametrize("iterations", [0, 8])
def test_bounds_hold_on_sampled_points_of_split_domains(mode, iterations):
    net = random_mlp([3, 10, 10, 4], 1)
    ch = to_chain(net)
    g = torch.Generator().manual_seed(2)
    B, r = 6, 2
    lo, hi, C, d, pre, splits = _split_domains(ch, g, B, r, 4, 0.4)
    res = bound_domains(ch, lo, hi, C, d, splits=splits, pre=pre, recompute=True, iterations=iterations,
                        mode=mode, stop_when_positive=False)
    checked = 0
    for b, m in enumerate(_margins_on_domains(ch, lo, hi, C, d, splits, 4000, g)):
        if m.shape[0] and torch.isfinite(res.lower[b]).all():
            assert bool((m >= res.lower[b] - 1e-9).all()), (b, m.min(0).values, res.lower[b])
            checked += m.shape[0]
    assert checked > 1000
    # tightness: optimizing never loses against plain CROWN
    base = bound_domains(ch, lo, hi, C, d, splits=splits, pre=pre, recompute=True, mode=mode)
    assert bool((res.lower >= base.lower - 1e-12).all())


def test_empty_domain_gets_infinite_bound():
    """z_0 = x_0 + x_1 + 5 >= 5 on [0, 1]^2: the split "z_0 <= 0" leaves no point."""
    net = sequential((2,), [Linear(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), torch.tensor([5.0, 0.0])), ReLU(),
                            Linear(torch.tensor([[1.0, 1.0]]), torch.zeros(1))])
    ch = to_chain(net)
    lo, hi = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
    s = torch.tensor([[-1, 0], [0, -1]], dtype=torch.int8)
    C, d = -torch.ones(2, 1, 1, dtype=torch.float64), torch.full((2, 1), 20.0, dtype=torch.float64)
    res = bound_domains(ch, lo, hi, C, d, splits=[s])
    assert torch.isinf(res.lower[0, 0]) and torch.isfinite(res.lower[1, 0])


def _sample_margins(ch, lo, hi, C, d, n, g):
    x = lo.unsqueeze(1) + torch.rand(lo.shape[0], n, lo.shape[1], generator=g, dtype=torch.float64) * (hi - lo).unsqueeze(1)
    z = ch.forward(x.reshape(-1, lo.shape[1])).reshape(lo.shape[0], n, -1)
    return torch.einsum("bno,bro->bnr", z, C) + d.unsqueeze(1)


def test_staged_input_split_bounds_hold_with_parent_bounds():
    """``staged_bounds`` on child boxes, with and without the parent's packed (float32, rounded
    outward) pre-activation bounds: no sampled point below a bound; the packed interval
    contains the float64 one."""
    from bounds.bab.input_split import _pack, _unpack, staged_bounds
    net = random_mlp([3, 12, 12, 12, 3], 4)
    ch = to_chain(net)
    g = torch.Generator().manual_seed(5)
    B, r = 8, 2
    lo = torch.rand(B, 3, generator=g, dtype=torch.float64) - 1
    hi = lo + 1.0
    C = torch.randn(B, r, 3, generator=g, dtype=torch.float64)
    d = torch.randn(B, r, generator=g, dtype=torch.float64)
    par = staged_bounds(ch, lo, hi, C, d, 0, "hybrid")
    pk = _unpack(_pack(par.pre), ch.hidden_sizes)
    for (l, u), (pl, pu) in zip(par.pre, pk):
        assert bool((pl <= l).all() and (pu >= u).all())
    assert any(bool(((l < 0) & (u > 0)).any()) for l, u in par.pre)   # a non-trivial case
    hi2 = hi.clone()
    hi2[:, 1] = (lo[:, 1] + hi[:, 1]) / 2            # left children along dim 1
    for pre in (None, pk):
        for it in (0, 3):
            res = staged_bounds(ch, lo, hi2, C, d, it, "hybrid", pre)
            m = _sample_margins(ch, lo, hi2, C, d, 3000, g)
            assert bool((m >= res.lower.unsqueeze(1) - 1e-9).all())
            for (l, u) in res.pre:     # no box is declared empty
                assert bool((l <= u).all())


def test_warm_started_alpha_beta_stay_sound():
    """Any alpha_init / beta_init (even out of range: they are clamped) gives bounds that hold on
    sampled points of split domains, and the returned multipliers can seed the next call."""
    net = random_mlp([3, 10, 10, 2], 7)
    ch = to_chain(net)
    g = torch.Generator().manual_seed(8)
    B, r = 6, 1
    lo, hi, C, d, pre, splits = _split_domains(ch, g, B, r, 2, 0.15)
    assert sum(int((s != 0).sum()) for s in splits) >= 3
    a0 = [3 * torch.randn(B, r, n, generator=g) for n in ch.hidden_sizes]
    b0 = [2 * torch.randn(B, r, n, generator=g) for n in ch.hidden_sizes]
    res = bound_domains(ch, lo, hi, C, d, splits=splits, pre=pre, recompute=False, iterations=5,
                        alpha_init=a0, beta_init=b0, stop_when_positive=False)
    assert res.alpha is not None and all(a.shape == (B, r, n) for a, n in zip(res.alpha, ch.hidden_sizes))
    res2 = bound_domains(ch, lo, hi, C, d, splits=splits, pre=pre, recompute=False, iterations=5,
                         alpha_init=res.alpha, beta_init=res.beta, stop_when_positive=False)
    checked = 0
    for b, m in enumerate(_margins_on_domains(ch, lo, hi, C, d, splits, 4000, g)):
        for rr in (res, res2):
            if m.shape[0] and torch.isfinite(rr.lower[b]).all():
                assert bool((m >= rr.lower[b] - 1e-9).all())
                checked += m.shape[0]
    assert checked > 1000


def _pre_activations(ch, x):
    """Pre-activations of every hidden layer at inputs x (N, n_in): list of (N, n_k)."""
    out, a = [], x
    for w, b in zip(ch.weights[:-1], ch.biases[:-1]):
        z = a @ w.T + b
        out.append(z)
        a = z.clamp(min=0)
    return out


def test_optimized_pre_bounds_are_sound_and_tighter_than_crown():
    """Layer-by-layer alpha-CROWN bounds contain every sampled pre-activation (also at the box's
    corners, where the extremes of a deep net's neurons tend to lie), are never looser than
    CROWN's, and on a 4-hidden-layer net are strictly tighter somewhere."""
    net = random_mlp([6, 16, 16, 16, 16, 3], 11)
    ch = to_chain(net)
    g = torch.Generator().manual_seed(12)
    lo = torch.rand(2, 6, generator=g, dtype=torch.float64) - 1
    hi = lo + 0.6
    crown = pre_activation_bounds(ch, lo, hi)
    opt = optimized_pre_bounds(ch, lo, hi, iterations=15)
    gain = 0.0
    for b in range(2):
        u = torch.rand(20000, 6, generator=g, dtype=torch.float64)
        x = lo[b] + torch.cat([u, (u < 0.5).double()]) * (hi[b] - lo[b])
        for z, (l, uu), (cl, cu) in zip(_pre_activations(ch, x), opt, crown):
            assert bool((z >= l[b] - 1e-9).all() and (z <= uu[b] + 1e-9).all())
            assert bool((l[b] >= cl[b] - 1e-12).all() and (uu[b] <= cu[b] + 1e-12).all())
            gain += float((cu[b] - cl[b]).sum() - (uu[b] - l[b]).sum())
    assert gain > 0.1


def test_refine_from_and_shared_box_give_the_same_sound_bounds():
    """Mode "refine" with a box shared by all domains (an expanded row) equals the gathered one
    to rounding (1e-12); refining only the layers after ``refine_from`` is sound on sampled points of the
    split domains and never tighter than refining them all."""
    ch, g, lo1, hi1 = _chain_and_box(3, [4, 12, 12, 12, 2], 4, 0.9)
    B = 6
    pre = optimized_pre_bounds(ch, lo1, hi1, iterations=5)
    splits = []
    for l, u in pre:
        s = torch.zeros(B, l.shape[1], dtype=torch.int8)
        pick = ((l < 0) & (u > 0)).expand(B, -1) & (torch.rand(B, l.shape[1], generator=g) < 0.08)
        s[pick] = torch.where(torch.rand(B, l.shape[1], generator=g) < 0.5, 1, -1).to(torch.int8)[pick]
        splits.append(s)
    assert sum(int((s != 0).sum()) for s in splits) >= B
    shared = pre_activation_bounds(ch, lo1.expand(B, -1), hi1.expand(B, -1), splits, pre, mode="refine")
    gathered = pre_activation_bounds(ch, lo1.repeat(B, 1), hi1.repeat(B, 1), splits, pre, mode="refine")
    for (a, b), (c, e) in zip(shared, gathered):      # equal up to BLAS rounding (kernels differ by layout)
        assert torch.allclose(a, c, rtol=0, atol=1e-12) and torch.allclose(b, e, rtol=0, atol=1e-12)
    start = torch.tensor([-1, 0, 1, 2, 0, 1])
    part = pre_activation_bounds(ch, lo1.expand(B, -1), hi1.expand(B, -1), splits, pre, mode="refine",
                                 refine_from=start)
    x = lo1 + torch.rand(30000, 4, generator=g, dtype=torch.float64) * (hi1 - lo1)
    zs = _pre_activations(ch, x)
    checked = 0
    for b in range(B):
        ok = torch.ones(x.shape[0], dtype=torch.bool)
        for z, s in zip(zs, splits):
            ok &= ((s[b] > 0) & (z < 0) | (s[b] < 0) & (z > 0)).sum(1) == 0
        for z, (l, u), (fl, fu) in zip(zs, part, shared):
            assert bool((z[ok] >= l[b] - 1e-9).all() and (z[ok] <= u[b] + 1e-9).all())
            assert bool((l[b] <= fl[b] + 1e-12).all() and (u[b] >= fu[b] - 1e-12).all())
        checked += int(ok.sum())
    assert checked > 1000
    for (l, u), (fl, fu) in zip(part, shared):          # domain 0 (refine_from -1) is refined fully
        assert torch.equal(l[0], fl[0]) and torch.equal(u[0], fu[0])
    # a deadline already past: no layer is refined, every domain keeps the split-clamped bounds,
    # which still hold on the sampled points and are never tighter than the refined ones
    import time
    late = pre_activation_bounds(ch, lo1.expand(B, -1), hi1.expand(B, -1), splits, pre, mode="refine",
                                 deadline=time.monotonic() - 1.0)
    clamped = pre_activation_bounds(ch, lo1.expand(B, -1), hi1.expand(B, -1), splits, pre, mode="refine",
                                    refine_from=torch.full((B,), len(pre)))
    looser = 0
    for b in range(B):
        ok = torch.ones(x.shape[0], dtype=torch.bool)
        for z, s in zip(zs, splits):
            ok &= ((s[b] > 0) & (z < 0) | (s[b] < 0) & (z > 0)).sum(1) == 0
        for z, (l, u), (cl, cu), (fl, fu) in zip(zs, late, clamped, shared):
            assert torch.equal(l[b], cl[b]) and torch.equal(u[b], cu[b])
            assert bool((z[ok] >= l[b] - 1e-9).all() and (z[ok] <= u[b] + 1e-9).all())
            assert bool((l[b] <= fl[b] + 1e-12).all() and (u[b] >= fu[b] - 1e-12).all())
            looser += int((l[b] < fl[b] - 1e-9).sum() + (u[b] > fu[b] + 1e-9).sum())
    assert looser > 0


def test_float32_steps_give_float64_sound_bounds_as_tight_as_float64_steps():
    """The alpha/beta steps run in float32; the reported bound is the chosen multipliers' bound
    in float64: it holds on sampled points like the float64 steps' bound, and is as tight (to
    float32's precision)."""
    net = random_mlp([4, 16, 16, 16, 3], 3)
    ch = to_chain(net)
    g = torch.Generator().manual_seed(5)
    B, r = 8, 2
    lo, hi, C, d, pre, splits = _split_domains(ch, g, B, r, 3, 0.1)
    out = {dt: bound_domains(ch, lo, hi, C, d, splits=splits, pre=pre, mode="refine", iterations=20,
                             stop_when_positive=False, opt_dtype=dt) for dt in (torch.float32, torch.float64)}
    low32, low64 = out[torch.float32].lower, out[torch.float64].lower
    assert low32.dtype == torch.float64
    fin = torch.isfinite(low64)
    assert bool((torch.isfinite(low32) == fin).all()) and int(fin.sum()) >= 8
    base = bound_domains(ch, lo, hi, C, d, splits=splits, pre=pre, mode="refine").lower
    gain = (low64 - base)[fin]
    assert float(gain.max()) > 1e-2                       # the steps do something here
    assert bool(((low32 - low64)[fin].abs() <= 1e-3 * (1 + low64[fin].abs())).all())
    # no sampled point of a domain (its split signs respected) falls below the float32 steps' bound
    checked = 0
    for b, m in enumerate(_margins_on_domains(ch, lo, hi, C, d, splits, 20000, g)):
        if m.shape[0] and torch.isfinite(low32[b]).all():
            assert bool((m >= low32[b] - 1e-9).all())
            checked += m.shape[0]
    assert checked > 1000


@pytest.mark.parametrize("kept", [False, True])
def test_first_layer_corrections_equal_the_plain_refinement(kept):
    """``_refine_first`` (layer 1's rows as the root's rows plus a correction over the few layer-0
    neurons a domain's relaxation changes) gives the plain pass's bounds to rounding, for a box
    shared by the domains or one box per domain, for domains whose layer-0 bounds differ from
    the root's by splits and by tighter bounds of their own, and it declines (None) when too many
    neurons differ."""
    from bounds.bab.chain_bounds import _refine_first, _refine_unstable, _clamp
    ch, g, lo1, hi1 = _chain_and_box(11, [6, 40, 30, 20, 3], 12, 1.2)
    B = 9
    pre, slopes = optimized_pre_bounds(ch, lo1, hi1, iterations=5, keep_alpha=True)
    l0, u0 = pre[0]
    uns = torch.nonzero(((l0 < 0) & (u0 > 0))[0]).flatten()
    assert uns.numel() >= 8
    splits = [torch.zeros(B, l.shape[1], dtype=torch.int8) for l, _ in pre]
    for b in range(1, B):
        pick = uns[torch.randperm(uns.numel(), generator=g)[:b % 4]]
        splits[0][b, pick] = torch.where(torch.rand(pick.numel(), generator=g) < 0.5, 1, -1).to(torch.int8)
    base = [(l.expand(B, -1).clone(), u.expand(B, -1).clone()) for l, u in pre]
    base[0][0][B - 1, uns[0]] = base[0][0][B - 1, uns[0]] / 2          # a tighter bound of domain B-1's own
    alpha = slopes if kept else None
    for lo, hi in ((lo1.expand(B, -1), hi1.expand(B, -1)), (lo1.repeat(B, 1) - 0.1 * torch.rand(B, 1, generator=g,
                                                                                               dtype=torch.float64),
                                                         hi1.repeat(B, 1))):
        outs = []
        for fast in (False, True):
            out = [_clamp(l, u, s) for (l, u), s in zip(base, splits)]
            outs.append(_refine_unstable(ch, lo, hi, out, splits, pre_alpha=alpha, first_fast=fast))
        for (a, b), (c, e) in zip(*outs):
            assert torch.allclose(a, c, rtol=0, atol=1e-9) and torch.allclose(b, e, rtol=0, atol=1e-9)
        assert not torch.equal(outs[0][1][0], base[1][0])          # the refinement did tighten layer 1
    # every layer-0 neuron of a domain changed: the plain pass is cheaper, and is used
    out = [_clamp(l, u, s) for (l, u), s in zip(base, splits)]
    wide = out[0][0].clone()
    wide[0] = wide[0] - 1.0
    dom, neu = torch.nonzero((out[1][0] < 0) & (out[1][1] > 0), as_tuple=True)
    c, r = (hi1 + lo1) / 2, (hi1 - lo1) / 2
    assert _refine_first(ch, c, r, True, wide, out[0][1], dom, neu) is None
    assert _refine_first(ch, c, r, True, *out[0], dom, neu) is not None
