"""``Smooth``: the smoothed classifier g(x) = argmax_c P(f(x + e) = c) of Cohen, Rosenfeld & Kolter
2019, with their ``predict`` and ``certify`` kept exactly (locuslab/smoothing ``core.py``):

* ``certify``: pick the top class from ``n0`` samples, then count it among ``n`` FRESH samples
  (the selection samples are never reused), lower-bound pA with the one-sided (1 - alpha)
  Clopper-Pearson bound, abstain if the bound is <= 1/2, else return the class and the noise
  family's radius. With probability >= 1 - alpha over the sampling, a non-abstaining answer is
  g's prediction and g is constant on the ball of that radius (in the family's norm).
* ``certify_adaptive``: the same two stages, the estimation drawn in growing rounds that stop
  once the answer is settled (``smoothing.sequential``: Clopper-Pearson bounds at alpha / J at J
  fixed looks), with the same guarantee for a sample budget of ``n_max``.
* ``predict``: top two classes among ``n`` samples; abstain unless the two-sided binomial test
  rejects "equally likely" at level ``alpha``. P(returns a class other than g(x)) <= alpha.

Noise is added in input space, before any normalization layer of the network; nothing is clipped.
A ``seed`` makes runs reproducible; ``certify(..., seed=s)`` reseeds for one call (the CLI seeds
each input by its index, so a resumed run gives the same answers as an uninterrupted one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from certify.errors import CertifyError
from certify.ir import Network
from smoothing.noise import check_sigma, convert_radius, get_noise
from smoothing.sampling import NoiseCounter, soft_log_probs
from smoothing.sequential import CONTINUE, REASONS, SequentialTest
from smoothing.stats import lower_confidence_bound, top_two_pvalue


@dataclass
class CertifyResult:
    """``prediction`` (-1 = abstain), ``radius`` (in ``norm``; 0.0 on abstain), ``pa_lower``
    (Clopper-Pearson lower bound on pA), ``counts`` (estimation counts, (K,), over ``n``
    samples), ``counts_selection`` (the n0 selection counts, (K,)). Sequential runs also give
    ``n_max`` (the budget), ``pa_upper``, ``stop`` (the reason sampling ended, see
    ``smoothing.sequential``), ``target_radius`` (None without a target), ``looks`` (how many
    of the test's looks were used) and ``level`` (alpha / number of looks, the level of each
    look's bounds)."""

    prediction: int
    radius: float
    pa_lower: float
    counts: np.ndarray
    counts_selection: np.ndarray
    norm: str
    noise: str
    sigma: float
    n0: int
    n: int
    alpha: float
    dim: int = field(default=0)
    n_max: int | None = None
    pa_upper: float | None = None
    stop: str | None = None
    target_radius: float | None = None
    looks: int | None = None
    level: float | None = None

    @property
    def abstained(self) -> bool:
        return self.prediction == Smooth.ABSTAIN

    def radius_in(self, norm: str) -> float:
        """The radius of the largest ``norm`` ball ('1', '2', 'inf') inside the certified ball
        (ball inclusion; e.g. Gaussian L-inf = L2 radius / sqrt(d))."""
        return convert_radius(self.radius, self.norm, str(norm), self.dim)

    @property
    def samples(self) -> int:
        """Noise samples drawn in all: n0 + n."""
        return self.n0 + self.n

    def evidence(self) -> dict:
        ev = {"pa_lower": self.pa_lower, "counts": self.counts.tolist(),
              "counts_selection": self.counts_selection.tolist(), "sigma": self.sigma, "noise": self.noise,
              "norm": self.norm, "n": self.n, "n0": self.n0, "alpha": self.alpha}
        if self.n_max is not None:
            ev.update(samples=self.samples, n_max=self.n_max, pa_upper=self.pa_upper, stop=self.stop,
                      target_radius=self.target_radius, looks=self.looks, level=self.level)
        return ev


def _input_shape(model, input_shape):
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    if isinstance(model, Network):
        return model.input_shape
    return None


class Smooth:
    """A smoothed classifier around ``model`` (an IR ``Network`` or a torch module returning logits).

    Args:
        model: base classifier, (B, *input_shape) -> (B, num_classes) logits.
        num_classes: K.
        noise: "gaussian" (L2), "laplace" (L1) or "uniform" (L1); see ``smoothing.noise``.
        sigma: the family's scale.
        seed: seeds the generator (None: nondeterministic).
        batch: default samples per forward pass; None: chosen from the device
            (``smoothing.sampling.auto_batch``: 1000 on a CPU, from free memory on a GPU).
        pushforward: "auto" | True | False, see ``smoothing.sampling`` (a torch module is traced to the
            IR for it when the front end can; otherwise the module runs as is).
        prefetch: "auto" | True | False: fill the next noise batch in a helper thread while the
            network runs (auto: when torch uses fewer threads than there are CPUs). Same results.
        input_shape: needed only for a torch module (an IR network knows it); else taken from x.
    """

    ABSTAIN = -1

    def __init__(self, model, num_classes: int, noise: str = "gaussian", sigma: float = 0.25,
                 seed: int | None = None, batch: int | None = 1000, pushforward="auto", prefetch="auto",
                 input_shape=None):
        if int(num_classes) < 2:
            raise CertifyError(f"num_classes must be >= 2, got {num_classes}")
        self.model = model
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.num_classes = int(num_classes)
        self.family = get_noise(noise)
        self.sigma = check_sigma(sigma)
        self.batch = None if batch is None else int(batch)
        self.pushforward = pushforward
        self.prefetch = prefetch
        self.generator = torch.Generator(device="cpu")
        self._device_generators: dict[torch.device, torch.Generator] = {}
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self._shape = _input_shape(model, input_shape)
        self._counters: dict[tuple, NoiseCounter] = {}

    @property
    def norm(self) -> str:
        return self.family.norm

    def counter(self, shape, batch: int | None = None) -> NoiseCounter:
        b = batch or self.batch
        key = (tuple(shape), None if b is None else int(b))
        if key not in self._counters:
            self._counters[key] = NoiseCounter(self.model, key[0], self.num_classes, self.family, self.sigma,
                                               key[1], self.pushforward, self.prefetch)
        return self._counters[key]

    def _reseed(self, seed):
        if seed is not None:
            self.generator.manual_seed(int(seed))
            self._device_generators.clear()

    def generator_on(self, device) -> torch.Generator:
        """This classifier's generator on ``device``: ``generator`` itself on the CPU, elsewhere
        one seeded from it (reproducible for a given seed, another stream than the CPU's)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.generator
        if device not in self._device_generators:
            seed = int(torch.randint(2 ** 62, (1,), generator=self.generator, device="cpu"))
            self._device_generators[device] = torch.Generator(device=device).manual_seed(seed)
        return self._device_generators[device]

    def counts(self, x: torch.Tensor, num: int, batch: int | None = None, on_batch=None) -> np.ndarray:
        """Class counts (K,) of the base classifier over ``num`` fresh noise samples around ``x``."""
        x = torch.as_tensor(x)
        shape = self._shape or tuple(x.shape)
        counter = self.counter(shape, batch)
        return counter.counts(x, num, self.generator_on(counter.device), on_batch)

    def certify(self, x: torch.Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch: int | None = None, seed: int | None = None, on_batch=None) -> CertifyResult:
        """Cohen et al.'s CERTIFY for one input ``x`` (per-sample shape, no batch dimension)."""
        if int(n0) < 1 or int(n) < 1:
            raise CertifyError(f"n0 and n must be >= 1, got n0={n0}, n={n}")
        if not 0 < alpha < 0.5:
            raise CertifyError(f"alpha must be in (0, 0.5), got {alpha}")
        self._reseed(seed)
        sel = self.counts(x, n0, batch, on_batch)
        c_hat = int(sel.argmax())
        est = self.counts(x, n, batch, on_batch)          # fresh samples: independent of the selection
        pa = lower_confidence_bound(int(est[c_hat]), int(n), alpha)
        dim = math.prod(self._shape or tuple(torch.as_tensor(x).shape))
        common = dict(pa_lower=pa, counts=est, counts_selection=sel, norm=self.norm, noise=self.family.name,
                      sigma=self.sigma, n0=int(n0), n=int(n), alpha=float(alpha), dim=dim)
        if pa < 0.5:
            return CertifyResult(prediction=self.ABSTAIN, radius=0.0, **common)
        return CertifyResult(prediction=c_hat, radius=float(self.family.radius(pa, self.sigma)), **common)

    def certify_adaptive(self, x: torch.Tensor, radius: float | None = None, n0: int = 100,
                         n_max: int = 100_000, alpha: float = 0.001, tol: float | None = None, first: int = 100,
                         growth: float = 2.0, batch: int | None = None, seed: int | None = None,
                         on_batch=None) -> CertifyResult:
        """CERTIFY with sequential estimation (``smoothing.sequential``) for one input ``x``.

        The class is selected from ``n0`` samples as in ``certify``; fresh estimation samples are
        then drawn up to each look (``first``, ``first * growth``, ..., ``n_max``) until the rule
        stops: with ``radius=r``, once the radius is >= r or pA is shown below the value r needs;
        without, once pA is shown below 1/2 or the radius cannot grow by more than ``tol`` (default
        sigma / 10). The radius comes from the lower bound at the last look used. Guarantee: with
        probability >= 1 - alpha, a non-abstaining answer is g's prediction and g is constant on
        the ball of that radius, as for ``certify`` with n = n_max; ``result.n`` is the number of
        estimation samples used."""
        if int(n0) < 1:
            raise CertifyError(f"n0 must be >= 1, got {n0}")
        test = SequentialTest(self.family, self.sigma, alpha, n_max, radius, tol, first, growth)
        self._reseed(seed)
        sel = self.counts(x, n0, batch, on_batch)
        c_hat = int(sel.argmax())
        est, n = np.zeros(self.num_classes, dtype=np.int64), 0
        for j, n_j in enumerate(test.looks):
            est += self.counts(x, n_j - n, batch, on_batch)   # fresh samples: independent of the selection
            n = n_j
            lo, hi, code = (float(v) for v in test.decide(int(est[c_hat]), j))
            if code != CONTINUE:
                break
        dim = math.prod(self._shape or tuple(torch.as_tensor(x).shape))
        common = dict(pa_lower=lo, counts=est, counts_selection=sel, norm=self.norm, noise=self.family.name,
                      sigma=self.sigma, n0=int(n0), n=int(n), alpha=float(alpha), dim=dim, n_max=test.n_max,
                      pa_upper=hi, stop=REASONS[int(code)], target_radius=test.radius, looks=j + 1,
                      level=test.level)
        if lo < 0.5:
            return CertifyResult(prediction=self.ABSTAIN, radius=0.0, **common)
        return CertifyResult(prediction=c_hat, radius=float(self.family.radius(lo, self.sigma)), **common)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch: int | None = None,
                seed: int | None = None) -> int:
        """Cohen et al.'s PREDICT: the top class, or -1 when the binomial test's p-value > alpha."""
        if int(n) < 1:
            raise CertifyError(f"n must be >= 1, got {n}")
        self._reseed(seed)
        counts = self.counts(x, n, batch)
        order = np.argsort(-counts, kind="stable")
        k1, k2 = int(counts[order[0]]), int(counts[order[1]])
        if top_two_pvalue(k1, k2) > alpha:
            return self.ABSTAIN
        return int(order[0])

    def sample_noise(self, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """A tensor of ``shape`` of this classifier's noise on ``device`` (default: the generator's,
        else the CPU; default generator: this one's on that device)."""
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        buf = torch.empty(tuple(shape), dtype=torch.get_default_dtype(), device=device)
        return self.family.fill(buf, self.sigma, generator if generator is not None else self.generator_on(device))

    def soft_log_probs(self, x: torch.Tensor, m: int = 8, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Soft smoothed classifier's log-probabilities (B, K) for a batch ``x`` (B, *shape), with
        ``m`` fresh noise samples per input or the given ``noise`` (m, B, *shape); differentiable."""
        if noise is None:
            noise = self.sample_noise((int(m), *x.shape), generator, x.device).to(x.dtype)
        return soft_log_probs(self.model, x, noise)
