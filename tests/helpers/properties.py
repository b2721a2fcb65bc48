"""VNN-LIB properties for the tests: random boxes and conjunctions on random networks, and the
text of a 2-D box property."""
from __future__ import annotations

import numpy as np
import torch

from certify.spec.vnnlib import Region, VnnlibProperty
from helpers.networks import random_mlp


def random_case(seed, sizes):
    """A random MLP (numpy seed ``seed``), a box, and a conjunction A y <= b whose thresholds lie
    near the sampled outputs (both verdicts occur): (net, prop, lo, hi, A, b)."""
    rng = np.random.default_rng(seed)
    net = random_mlp(sizes, rng, name="random")
    n_in, n_out = sizes[0], sizes[-1]
    c = rng.uniform(-1, 1, n_in)
    w = rng.uniform(0.2, 1.0)
    lo, hi = c - w, c + w
    k = rng.integers(1, 3)
    A = rng.normal(size=(k, n_out))
    with torch.no_grad():
        ys = net(torch.tensor(rng.uniform(lo, hi, (400, n_in)), dtype=torch.float32)).double().numpy()
    # thresholds near the sampled range, so that both verdicts occur
    b = np.quantile(ys @ A.T, rng.uniform(0.0, 0.08), axis=0) - rng.uniform(0, 0.3) * (rng.random() < 0.5)
    prop = VnnlibProperty("random", n_in, n_out, [Region(lo, hi, [(A, b)])])
    return net, prop, lo, hi, A, b


def box_text(lo, hi, rows):
    """VNN-LIB text over 2 inputs and 3 outputs: the box [lo, hi] and the violation "Y_i <= c for
    every (i, c) in rows"."""
    s = "".join(f"(declare-const X_{i} Real)\n" for i in range(2))
    s += "".join(f"(declare-const Y_{i} Real)\n" for i in range(3))
    for i in range(2):
        s += f"(assert (>= X_{i} {lo[i]!r}))\n(assert (<= X_{i} {hi[i]!r}))\n"
    for i, c in rows:
        s += f"(assert (<= Y_{i} {c!r}))\n"
    return s
