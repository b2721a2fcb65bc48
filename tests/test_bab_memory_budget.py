"""Branch and bound within a memory budget: a small budget means fewer domains per bound call
(ReLU splitting on chains, activation splitting on any graph, input splitting's bound calls), and
the verdicts stay the exact ones (MILP minimum on small random networks)."""
from __future__ import annotations

import time

import torch

from bounds.bab.activation_split import SplitOptions, activation_split_bab, call_bytes, prepare_root
from bounds.bab.chain import to_chain
from bounds.bab.chain_bounds import bound_domains, domain_bytes, pre_activation_bounds, refine_chunk
from bounds.bab.falsify import Falsifier
from bounds.bab.input_split import boxes_per_call, staged_bounds
from bounds.bab.relu_split import relu_split_bab
from bounds.memory import available_memory, domains_within, search_budget
from helpers.oracles import exact_min
from helpers.properties import random_case


def _cases(n: int = 4):
    """Random [3, 8, 8, 2] chains whose exact minimum of max_r (A y - b)_r is -tau: (net, lo, hi,
    C, d, truth, try_points)."""
    for seed in range(n):
        net, prop, lo, hi, A, b = random_case(4100 + seed, [3, 8, 8, 2])
        tau = 0.03 if seed % 2 else -0.03
        b = b + exact_min(net, lo, hi, A, b) + tau
        fal = Falsifier(net, prop)
        tp = (lambda xs, fal=fal, A=A, b=b: fal.check_points(xs.double(), [(torch.tensor(A), torch.tensor(b))]))
        yield net, torch.tensor(lo), torch.tensor(hi), torch.tensor(A), -torch.tensor(b), \
            ("unsat" if tau < 0 else "sat"), tp


def _stats():
    return {"domains": 0, "bound_calls": 0, "time_bound": 0.0, "time_falsify": 0.0}


def test_budget_helpers():
    assert available_memory() > 0 and 0 < search_budget() < available_memory()
    assert domains_within(100, 1000, 256) == 10
    assert domains_within(100, 10 ** 9, 256) == 256
    assert domains_within(100, 10, 256) == 2 and domains_within(100, 10, 256, least=1) == 1


def test_relu_split_tiny_budget_smaller_batches_same_verdicts():
    """A budget of 8 domains' call size: 4 domains per call instead of 64, verdicts exact."""
    for net, lo, hi, C, d, truth, tp in _cases():
        chain = to_chain(net)
        call, kept = domain_bytes(chain, C.shape[0])
        assert call > kept > 0
        big, tiny = _stats(), _stats()
        v_big, _ = relu_split_bab(chain, lo, hi, C, d, time.monotonic() + 20, tp, big, batch=64, memory=1 << 40)
        v_tiny, _ = relu_split_bab(chain, lo, hi, C, d, time.monotonic() + 20, tp, tiny, batch=64, memory=8 * call)
        assert big["split_batch"] == 64 and tiny["split_batch"] == 4
        assert v_big == v_tiny == truth
        assert tiny["bound_calls"] >= big["bound_calls"]


def test_relu_split_open_domains_past_the_budget_end_unknown():
    """Open domains that outgrow the budget drop their warm starts, then end the search
    ``unknown``, never with a verdict the search has not reached."""
    net, prop, lo, hi, A, b = random_case(9, [2, 12, 12, 2])     # needs ~1000 domains
    assert exact_min(net, lo, hi, A, b) > 1e-3
    chain = to_chain(net)
    C, d = torch.tensor(A), -torch.tensor(b)
    st = _stats()
    call, kept = domain_bytes(chain, C.shape[0])
    verdict, _ = relu_split_bab(chain, torch.tensor(lo), torch.tensor(hi), C, d, time.monotonic() + 20,
                                lambda xs: None, st, batch=8, iterations=0, recompute=False, memory=8 * call)
    assert verdict == "unknown"
    assert st["open_domains"] * domain_bytes(chain, C.shape[0], warm_start=False)[1] > 4 * call
    assert st["worst_open_lower"] <= exact_min(net, lo, hi, A, b) + 1e-9


def test_activation_split_tiny_budget_smaller_batches_same_verdicts():
    """The general search's call size from the network's sizes: a budget of 8 domains' worth
    bounds 4 per call instead of 64, verdicts exact."""
    for net, lo, hi, C, d, truth, tp in _cases():
        root = prepare_root(net, lo, hi, C, d)
        call = call_bytes(root.graph, root.pre, root.alpha, C.shape[0], torch.float32)
        out = {}
        for memory in (1 << 40, 8 * call):
            st = {}
            v, _ = activation_split_bab(net, lo, hi, C, d, time.monotonic() + 20, tp, st, root=root,
                                        options=SplitOptions(batch=64, memory=memory))
            out[memory] = (v, st["split_batch"])
        assert out[1 << 40] == (truth, 64) and out[8 * call] == (truth, 4)


def _same(u: torch.Tensor, v: torch.Tensor) -> bool:
    """The same arithmetic up to float64 rounding (a BLAS call on 6 boxes need not sum in the
    order it does on 1); infinities must match exactly."""
    return u.shape == v.shape and torch.allclose(u, v, rtol=0.0, atol=1e-12)


def test_staged_bounds_in_groups_equal_one_call():
    """Input splitting's bound calls within a budget of one box: the same bounds box by box."""
    net, prop, lo, hi, A, b = random_case(5, [3, 16, 16, 2])
    chain = to_chain(net)
    g = torch.Generator().manual_seed(0)
    c = torch.tensor(lo) + (torch.tensor(hi) - torch.tensor(lo)) * torch.rand(6, 3, dtype=torch.float64, generator=g)
    l, h = c - 0.1, c + 0.1
    C, d = torch.tensor(A).unsqueeze(0).expand(6, -1, -1), -torch.tensor(b).unsqueeze(0).expand(6, -1)
    assert boxes_per_call(chain, C.shape[1], 1) == 1
    whole = staged_bounds(chain, l, h, C, d, 0, "refine", instability=True)
    parts = staged_bounds(chain, l, h, C, d, 0, "refine", instability=True, memory=1)
    assert _same(whole.lower, parts.lower) and _same(whole.lam_in, parts.lam_in)
    assert _same(whole.instability, parts.instability)
    assert all(_same(a, x) and _same(b_, y) for (a, b_), (x, y) in zip(whole.pre, parts.pre))


def test_refinement_in_chunks_within_the_budget_equals_one_chunk():
    """The per-domain CROWN refinement of a deeper chain, one (domain, neuron) pair at a time
    (a budget of 1 byte) and in one chunk: the same bounds."""
    net, prop, lo, hi, A, b = random_case(7, [3, 16, 16, 16, 2])
    chain = to_chain(net)
    assert refine_chunk(chain, 1) == 1 and refine_chunk(chain, None) == 8192
    lo1, hi1 = torch.tensor(lo).reshape(1, -1), torch.tensor(hi).reshape(1, -1)
    root = pre_activation_bounds(chain, lo1, hi1)
    g = torch.Generator().manual_seed(1)
    splits = [torch.randint(-1, 2, (6, n), dtype=torch.int8, generator=g) * (torch.rand(6, n, generator=g) < 0.2)
              for n in chain.hidden_sizes]
    C, d = torch.tensor(A).unsqueeze(0).expand(6, -1, -1), -torch.tensor(b).unsqueeze(0).expand(6, -1)
    kw = dict(splits=splits, pre=root, mode="refine")
    one = bound_domains(chain, lo1.expand(6, -1), hi1.expand(6, -1), C, d, **kw)
    many = bound_domains(chain, lo1.expand(6, -1), hi1.expand(6, -1), C, d, memory=1, **kw)
    assert _same(one.lower, many.lower)
    assert all(_same(a, x) and _same(b_, y) for (a, b_), (x, y) in zip(one.pre, many.pre))
    clamped = pre_activation_bounds(chain, lo1.expand(6, -1), hi1.expand(6, -1), splits, root, recompute=False)
    assert any(bool((l > c).any()) for (l, _), (c, _) in zip(one.pre[1:], clamped[1:]))   # the refinement tightened
