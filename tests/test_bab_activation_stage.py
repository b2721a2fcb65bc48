"""``verify`` with the activation-split stage ("activation-split", bounds/bab/stages/graph_activation.py):
verdicts on residual / max-pool / Sigmoid / Tanh networks against dense grids, counterexamples
confirmed by onnxruntime, never a wrong verdict when cut off early, the same verdicts as the chain
fast path on chains (exact answers by MILP), and the split choice on general graphs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bounds.bab import verify
from certify.ir import Add, Conv2d, Flatten, Linear, Network, Node, ReLU, Reshape, Tanh
from certify.spec.vnnlib import Region, VnnlibProperty
from certify.vnncomp import check_counterexample_ort
from helpers.networks import DT, maxpool_2d, residual_mlp, smooth_2d
from helpers.oracles import exact_min, grid_min
from helpers.properties import random_case

NETS = {"residual": residual_mlp, "maxpool": maxpool_2d, "sigmoid": smooth_2d,
        "tanh": lambda s: smooth_2d(s, Tanh)}


def _grid_prop(net, seed, tau):
    """A box and one violation row (A y <= b) whose margin min (A y - b) over the box is tau (by a
    401 x 401 grid): unsat for tau > 0, sat for tau < 0."""
    g = np.random.default_rng(seed)
    c0, w = g.uniform(-0.5, 0.5, 2), g.uniform(0.2, 0.5)
    lo, hi = c0 - w, c0 + w
    A = g.normal(size=(1, 3))
    gm = float(grid_min(net, torch.tensor(lo), torch.tensor(hi), torch.tensor(A), torch.zeros(1, dtype=DT), 401))
    return VnnlibProperty("p", 2, 3, [Region(lo, hi, [(A, np.array([gm - tau]))])])


@pytest.mark.parametrize("kind", list(NETS))
def test_activation_stage_verdicts_agree_with_the_grid(kind, tmp_path):
    """Forced activation splitting, margins +-0.1 around the grid minimum, with and without the
    opening attack: every verdict agrees with the grid, every sat carries a point onnxruntime
    confirms, the stats name the stage, and most cases are decided."""
    decided = 0
    for seed in range(2):
        net = NETS[kind](seed)
        path = tmp_path / f"{kind}{seed}.onnx"
        net.to(torch.float32).to_onnx(str(path))
        for tau, ff in ((0.1, False), (-0.1, False), (-0.1, True)):
            prop = _grid_prop(net, seed, tau)
            res = verify(net, prop, timeout=8, method="activation-split", falsify_first=ff, use_milp=False)
            assert res.stats["method"] in ("activation-split", "root", None)
            if res.status == "sat":
                assert tau < 0
                x, y = res.counterexample
                assert prop.violated_by(x, y)
                assert check_counterexample_ort(str(path), prop, x, tol=1e-5)
            elif res.status == "unsat":
                assert tau > 0
            decided += res.status in ("sat", "unsat")
    assert decided >= 5


def test_chain_path_and_activation_stage_give_the_same_verdicts():
    """ReLU chains, margins +-0.03 around the MILP's exact minimum: the chain fast path (auto)
    and the activation-split stage (forced) both give the exact answer."""
    for seed in range(4):
        net, _, lo, hi, A, b = random_case(5200 + seed, [3, 10, 10, 2])
        tau = 0.03 if seed % 2 else -0.03
        b = b + exact_min(net, lo, hi, A, b) + tau     # min max_r (A y - b)_r = -tau: sat iff tau > 0
        prop = VnnlibProperty("p", 3, 2, [Region(lo, hi, [(A, b)])])
        want = "sat" if tau > 0 else "unsat"
        fast = verify(net, prop, timeout=20, falsify_first=False, use_milp=False, method="relu")
        gen = verify(net, prop, timeout=20, falsify_first=False, use_milp=False, method="activation-split")
        assert fast.status == gen.status == want, (seed, fast.status, gen.status)
        assert gen.stats["method"] in ("activation-split", "root") and fast.stats["method"] in ("relu", "root")


def test_cut_off_at_any_time_never_wrong(tmp_path):
    """A residual network with 16 inputs cut off after 0.05 .. 3 s: the verdict is the true
    one (sampled points decide the sat cases, which onnxruntime confirms) or timeout/unknown."""
    net = residual_mlp(5, n_in=16, width=12)
    path = tmp_path / "res16.onnx"
    net.to(torch.float32).to_onnx(str(path))
    g = np.random.default_rng(0)
    c = g.uniform(-0.5, 0.5, 16)
    lo, hi = c - 0.15, c + 0.15
    A = g.normal(size=(1, 3))
    with torch.no_grad():
        v = (net(torch.tensor(g.uniform(lo, hi, (100000, 16)))).numpy() @ A.T)[:, 0]
    for off, want in ((-0.1, "unsat"), (0.05, "sat")):      # below the sampled minimum: proved; above: violated
        prop = VnnlibProperty("p", 16, 3, [Region(lo, hi, [(A, np.array([v.min() + off]))])])
        for t in (0.05, 0.3, 3.0):
            res = verify(net, prop, timeout=t, falsify_first=False, method="activation-split")
            assert res.status in (want, "timeout", "unknown"), (off, t, res.status)
            if res.status == "sat":
                assert check_counterexample_ort(str(path), prop, res.counterexample[0], tol=1e-5)
        assert res.status == want


def _deep_residual_cnn(n_in: int, seed: int = 0) -> Network:
    """``n_in`` inputs -> a 4x8x8 image (Linear + Reshape, or the image itself for 256 inputs),
    three residual conv blocks (ReLU after each Add), a linear head to 3 outputs."""
    g = torch.Generator().manual_seed(seed)

    def conv():
        return Conv2d(torch.randn(4, 4, 3, 3, generator=g, dtype=DT) / 6, 0.1 * torch.randn(4, generator=g, dtype=DT),
                      padding=1)
    if n_in == 256:
        nodes, prev = [Node("img", Reshape((4, 8, 8)), ("input",))], "img"
    else:
        nodes = [Node("l0", Linear(torch.randn(256, n_in, generator=g, dtype=DT) / n_in ** 0.5,
                                   0.1 * torch.randn(256, generator=g, dtype=DT)), ("input",)),
                 Node("img", Reshape((4, 8, 8)), ("l0",))]
        prev = "img"
    for k in range(3):
        nodes += [Node(f"c{k}", conv(), (prev,)), Node(f"r{k}", ReLU(), (f"c{k}",)),
                  Node(f"d{k}", conv(), (f"r{k}",)), Node(f"a{k}", Add(), (f"d{k}", prev)),
                  Node(f"s{k}", ReLU(), (f"a{k}",))]
        prev = f"s{k}"
    nodes += [Node("f", Flatten(), (prev,)),
              Node("out", Linear(torch.randn(3, 256, generator=g, dtype=DT) / 16, torch.zeros(3, dtype=DT)), ("f",))]
    return Network((n_in,), nodes, name=f"deep_residual_cnn{n_in}")


def test_split_choice_on_general_graphs():
    """The same residual CNN fed by 16 inputs (mapped to the image) chooses input splitting, fed
    by the 256-pixel image itself activation splitting (the bound's spread is shared by most
    pixels); ``split_counts`` says why."""
    for n_in, width, want in ((16, 0.5, "generic-input"), (256, 0.02, "activation-split")):
        net = _deep_residual_cnn(n_in)
        c = np.random.default_rng(1).uniform(0, 1, n_in)
        with torch.no_grad():
            y = net(torch.tensor(c).unsqueeze(0))[0].numpy()
        top = int(y.argmax())
        A = np.zeros((1, 3))
        A[0, top], A[0, (top + 1) % 3] = -1.0, 1.0                    # violation: another class wins
        prop = VnnlibProperty("p", n_in, 3, [Region(c - width, c + width, [(A, np.zeros(1))])])
        res = verify(net, prop, timeout=1.0, falsify_first=False, use_milp=False)
        counts = res.stats.get("split_counts")
        assert res.stats["method"] == want, counts
        if want == "generic-input":
            assert counts["input"] <= 16 < counts["activation"]
        else:
            assert counts["activation"] < counts["input"]


def test_crown_root_when_the_optimized_root_would_not_end_in_time(monkeypatch, tmp_path):
    """Where alpha-CROWN's root passes would not end within the box's share of the time the
    search starts from CROWN's root (no root alpha-CROWN runs): verdicts still agree with the grid."""
    import bounds.bab.stages.graph_activation as ga
    monkeypatch.setattr(ga, "ROOT_PASSES", 1e12)
    for kind in ("residual", "tanh"):
        net = NETS[kind](0)
        for tau in (0.1, -0.1):
            prop = _grid_prop(net, 0, tau)
            res = verify(net, prop, timeout=8, method="activation-split", falsify_first=False, use_milp=False)
            assert res.status in (("unsat",) if tau > 0 else ("sat", "timeout")), (kind, tau, res.status)
            assert res.stats.get("time_root", 0.0) == 0.0


def test_activation_split_creates_its_tensors_on_the_inputs_device():
    """Under the device trap (a tensor the library makes without ``device=`` breaks the run) the
    activation-split stage proves a margin of the helpers' residual CNN by branching."""
    from helpers.device_trap import device_trap
    from helpers.networks import resnet
    g = resnet(0)
    torch.manual_seed(0)
    xg = torch.rand((1,) + g.input_shape, dtype=torch.float64)
    y = g(xg)[0]
    top, other = int(y.argmax()), int(y.argmin())
    A = np.zeros((1, 3))
    A[0, top], A[0, other] = 1.0, -1.0                      # violation: the top class below the last
    lo, hi = (xg - 0.05).flatten(), (xg + 0.05).flatten()
    prop = VnnlibProperty("device", g.input_size, 3, [Region(lo.numpy(), hi.numpy(), [(A, np.array([0.0]))])])
    with device_trap() as found:
        res = verify(g, prop, timeout=10, method="activation-split", use_milp=False, workers=1, falsify_first=False)
    assert not found, found
    assert res.status == "unsat" and res.stats["domains"] > 1


def test_a_root_bound_longer_than_the_timeout_ends_at_the_deadline():
    """On a convolutional network whose root CROWN bound takes longer than the whole timeout, the
    choice between the searches, their roots and the searches all stop at the deadline: the verdict
    is a timeout, returned within a fraction of a second of it."""
    import time

    g = torch.Generator().manual_seed(0)

    def conv(o, i):
        return Conv2d(torch.randn(o, i, 3, 3, generator=g, dtype=DT) / (3 * i ** 0.5), None, 1, 1)

    nodes, prev = [], "input"
    for k, (o, i) in enumerate([(16, 3), (16, 16), (16, 16)]):
        nodes += [Node(f"c{k}", conv(o, i), (prev,)), Node(f"r{k}", ReLU(), (f"c{k}",))]
        prev = f"r{k}"
    nodes += [Node("f", Flatten(), (prev,)),
              Node("o", Linear(torch.randn(3, 16 * 24 * 24, generator=g, dtype=DT) / 100, None), ("f",))]
    net = Network((3, 24, 24), nodes, name="wide-cnn")
    c = torch.rand(3 * 24 * 24, generator=g, dtype=DT).numpy()
    A = np.array([[1.0, -1.0, 0.0]])
    prop = VnnlibProperty("p", net.input_size, 3, [Region(c - 0.5, c + 0.5, [(A, np.array([-1e3]))])])
    t = time.monotonic()
    res = verify(net, prop, timeout=1.0, falsify_first=False, use_milp=False)
    assert res.status == "timeout" and time.monotonic() - t < 1.8, (res.status, time.monotonic() - t)
