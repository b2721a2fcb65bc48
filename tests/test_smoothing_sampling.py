"""Smoothing's sampling: ``certify`` draws fresh selection and estimation samples of the asked
sizes and reports the L-inf / L1 radii, noise has the asked scale, and class counts match the
exact probability on a linear network with and without the pushed-forward first layer."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from smoothing.core import Smooth
from smoothing.noise import sample_noise
from smoothing.stats import lower_confidence_bound


class _Recorder(torch.nn.Module):
    """Class 0 iff the first coordinate < 0.3, else 1; records every input row it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone().reshape(x.shape[0], -1))
        a = (x.reshape(x.shape[0], -1)[:, 0] < 0.3).to(x.dtype)
        return torch.stack([a, 1 - a], 1)


def test_certify_uses_fresh_samples_of_the_right_sizes():
    m = _Recorder()
    sm = Smooth(m, 2, "gaussian", sigma=0.25, seed=0, batch=37, input_shape=(3,))
    r = sm.certify(torch.zeros(3), n0=50, n=200, alpha=0.01)
    rows = torch.cat(m.seen)
    assert rows.shape[0] == 250
    assert int(r.counts_selection.sum()) == 50 and int(r.counts.sum()) == 200
    sel, est = rows[:50], rows[50:]
    assert torch.cdist(sel, est).min() > 0          # no selection sample reused
    assert int((est[:, 0] < 0.3).sum()) == int(r.counts[0])
    assert r.pa_lower == pytest.approx(lower_confidence_bound(int(r.counts[r.prediction]), 200, 0.01))
    assert r.radius == pytest.approx(0.25 * norm.ppf(r.pa_lower))
    assert r.radius_in("inf") == pytest.approx(r.radius / math.sqrt(3))
    assert r.radius_in("1") == pytest.approx(r.radius)


@pytest.mark.parametrize("name,mean_abs", [("gaussian", math.sqrt(2 / math.pi)), ("laplace", 1.0), ("uniform", 0.5)])
def test_noise_scale(name, mean_abs):
    z = sample_noise((200_000,), torch.Generator().manual_seed(1), name, sigma=2.0, dtype=torch.float64)
    assert float(z.abs().mean()) == pytest.approx(2.0 * mean_abs, rel=0.02)
    assert abs(float(z.mean())) < 0.02
    if name == "uniform":
        assert float(z.abs().max()) <= 2.0


@pytest.mark.parametrize("pushforward", [True, False])
def test_counts_match_exact_probability_linear_net(pushforward):
    """A linear 2-class IR net (first Linear out < in: the pushforward path applies): the class-0
    frequency must match the exact Phi(margin / (sigma ||w0 - w1||)) with or without pushforward."""
    from certify.ir import Linear, sequential
    g = torch.Generator().manual_seed(3)
    W = torch.randn(2, 5, generator=g)
    b = torch.randn(2, generator=g) * 0.1
    net = sequential((5,), [Linear(W, b)])
    x = torch.rand(5, generator=g) * 0.2
    sigma = 0.7
    dw = (W[0] - W[1]).double()
    p0 = float(norm.cdf(float(dw @ x.double() + (b[0] - b[1]).double()) / (sigma * float(dw.norm()))))
    n = 40_000
    sm = Smooth(net, 2, "gaussian", sigma=sigma, seed=5, pushforward=pushforward, prefetch=False)
    c = sm.counts(x, n)
    assert abs(c[0] / n - p0) < 4.5 * math.sqrt(p0 * (1 - p0) / n)


def test_auto_batch_cpu_default_and_gpu_from_free_memory(monkeypatch):
    """batch=None is 1000 on a CPU (the same counts as batch=1000); on a GPU it is the number of
    samples whose activations fill half the free memory, in multiples of 100, capped at 100,000."""
    import math

    from certify.models import load_bundled
    from smoothing import Smooth
    from smoothing.sampling import CPU_BATCH, auto_batch

    net = load_bundled("digits-mlp")
    assert auto_batch(net, (1, 8, 8), "cpu") == CPU_BATCH == 1000
    x = torch.rand(1, 8, 8)
    a = Smooth(net, 10, sigma=0.25, seed=3, batch=None).counts(x, 2500)
    b = Smooth(net, 10, sigma=0.25, seed=3, batch=1000).counts(x, 2500)
    assert (a == b).all() and a.sum() == 2500
    per = sum(math.prod(net.shape_of(n.name)) for n in net.nodes) + 64
    free = 2 ** 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 4 * free))
    got = auto_batch(net, (1, 8, 8), "cuda")
    item = torch.empty((), dtype=net.dtype).element_size()
    want = min(100_000, int(0.5 * free / (per * item)) // 100 * 100)
    assert got == want and got % 100 == 0 and 100 <= got <= 100_000
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 6, 4 * 10 ** 6))
    assert auto_batch(net, (1, 8, 8), "cuda") == max(100, int(0.5e6 / (per * item)) // 100 * 100)
