"""Every engine creates its tensors on the device of its inputs, and every result lives there.

The engines run inside ``device_trap`` (tests/helpers/device_trap.py): a tensor the library makes
without ``device=`` lands on "meta" and mixing it with the CPU inputs raises; random draws with a
generator on another device are recorded. No GPU is needed.
"""
import numpy as np
import pytest
import torch
from torch import nn

import bounds
import certify.convex as convex
from bounds.bab.verify import verify
from certify.attack import pgd_margin
from certify.errors import CertifyError
from certify.ir import Network
from certify.spec import ball, robustness_matrix
from certify.spec.vnnlib import Region, VnnlibProperty
from certify.train.loop import TrainConfig, train
from helpers.device_trap import device_trap
from helpers.networks import random_mlp, resnet
from smoothing import Smooth

CPU = torch.device("cpu")


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif hasattr(obj, "__dataclass_fields__"):
        for k in obj.__dataclass_fields__:
            yield from _tensors(getattr(obj, k))


def _on_cpu(obj):
    devices = {t.device for t in _tensors(obj)}
    assert devices <= {CPU}, devices


def _clean(found):
    assert not found, "\n".join(f"{w}: {what}" for w, what in found)


@pytest.fixture
def net():
    return random_mlp((3, 8, 8, 2), 0, bias_scale=0.1, dtype=torch.float64)


@pytest.fixture
def x():
    return torch.tensor([[0.3, 0.6, 0.5]], dtype=torch.float64)


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha", "crown-ibp"])
def test_bound_engines_stay_on_the_input_device(net, x, method):
    C = robustness_matrix(net(x).argmax(1), 2, dtype=torch.float64)
    s = ball(x, 0.05, "inf", domain=(0.0, 1.0))
    with device_trap() as found:
        res = bounds.compute_bounds(net, s, C=C, method=method)
    _clean(found)
    _on_cpu(res)
    assert bool((res.lower <= res.upper).all())


def test_bounds_with_splits_and_general_graphs_stay_on_the_device(x):
    net = random_mlp((3, 8, 8, 2), 1, bias_scale=0.1, dtype=torch.float64)
    relu = next(n.name for n in net.nodes if n.op.kind == "ReLU")
    splits = {relu: torch.tensor([[1, -1, 0, 0, 1, 0, 0, 0]], dtype=torch.int8)}
    g = resnet(0)
    xg = torch.rand((1,) + g.input_shape, dtype=torch.float64)
    with device_trap() as found:
        res = bounds.compute_bounds(net, ball(x, 0.1, "inf"), method="crown", splits=splits)
        res_g = bounds.compute_bounds(g, ball(xg, 0.01, "inf"), method="alpha")
    _clean(found)
    _on_cpu((res, res_g))


def _prop(net, x, eps):
    sgn = 1.0 if float(net(x)[0, 0] - net(x)[0, 1]) > 0 else -1.0
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    region = Region(lo[0].numpy(), hi[0].numpy(), [(np.array([[sgn, -sgn]]), np.array([0.0]))])
    return VnnlibProperty("device", net.input_size, 2, [region])


@pytest.mark.parametrize("method", ["relu", "input"])
def test_bab_verify_stays_on_the_device(net, x, method):
    prop = _prop(net, x, 0.2)
    with device_trap() as found:
        res = verify(net, prop, timeout=5, method=method, use_milp=False, workers=1)
    _clean(found)
    assert res.status in ("sat", "unsat", "unknown")


def test_bab_over_the_general_engine_stays_on_the_device():
    g = resnet(0)
    xg = torch.rand((1,) + g.input_shape, dtype=torch.float64)
    y = g(xg)[0]
    top, other = int(y.argmax()), int(y.argmin())
    A = np.zeros((1, 3))
    A[0, top], A[0, other] = -1.0, 1.0
    lo, hi = (xg - 0.01).flatten(), (xg + 0.01).flatten()
    prop = VnnlibProperty("device", g.input_size, 3, [Region(lo.numpy(), hi.numpy(), [(A, np.array([0.0]))])])
    with device_trap() as found:
        res = verify(g, prop, timeout=5, method="input", use_milp=False, workers=1)
    _clean(found)
    assert res.status in ("sat", "unsat", "unknown")


@pytest.mark.parametrize("adaptive", [False, True])
def test_smoothing_stays_on_the_device(net, x, adaptive):
    smooth = Smooth(net, 2, sigma=0.25, seed=0, batch=200)
    with device_trap() as found:
        if adaptive:
            res = smooth.certify_adaptive(x[0], radius=0.1, n0=50, n_max=800, alpha=0.01, first=100)
        else:
            res = smooth.certify(x[0], n0=50, n=500, alpha=0.01)
        lp = smooth.soft_log_probs(x, m=4)
    _clean(found)
    assert res.n <= 800 and res.prediction in (-1, 0, 1)
    assert lp.device == CPU and lp.shape == (1, 2)


def test_smoothing_of_a_module_stays_on_the_device(x):
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    smooth = Smooth(model, 2, sigma=0.25, seed=0, batch=200)
    with device_trap() as found:
        res = smooth.certify(x[0], n0=50, n=300, alpha=0.01)
    _clean(found)
    assert res.prediction in (-1, 0, 1)


def test_pgd_attack_stays_on_the_device(net, x):
    C = robustness_matrix(net(x).argmax(1), 2, dtype=torch.float64)
    with device_trap() as found:
        out = pgd_margin(net, ball(x, 0.1, "inf", domain=(0.0, 1.0)), C, per_row=True, steps=5, restarts=2)
    _clean(found)
    _on_cpu(out)


def test_lp_moves_its_solver_results_to_the_input_device(net, x):
    C = robustness_matrix(net(x).argmax(1), 2, dtype=torch.float64)
    with device_trap() as found:
        res = convex.lp(net, x, eps=0.05, C=C, domain=(0.0, 1.0))
    _clean(found)
    _on_cpu(res)
    assert all(s == "optimal" for st in res.status for s in st)


@pytest.mark.parametrize("objective", ["standard", "crown-ibp"])
def test_a_training_step_stays_on_the_device(objective):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    X, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    cfg = TrainConfig(objective=objective, epochs=1, batch_size=4, eps=0.01, num_classes=3)
    with device_trap() as found:
        hist = train(model, X, y, cfg, max_batches=2)
    _clean(found)
    assert np.isfinite(hist[-1]["loss"])


def test_network_to_moves_and_casts(net):
    assert net.device == CPU
    n32 = net.to(torch.float32)
    assert n32.dtype == torch.float32 and n32.device == CPU
    both = net.to(device="cpu", dtype=torch.float32)
    assert both.dtype == torch.float32
    same = net.to("cpu")
    assert same.dtype == torch.float64 and isinstance(same, Network)
    meta = net.to(device="meta")
    assert meta.device == torch.device("meta") and meta.dtype == torch.float64


def test_asking_for_a_missing_device_is_a_clear_error():
    from certify.cli.common import resolve_device
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else CPU)
    if not torch.cuda.is_available():
        with pytest.raises(CertifyError, match="--device cuda.*cpu"):
            resolve_device("cuda")
    with pytest.raises(CertifyError, match="--device"):
        resolve_device("tpu")


def test_the_trap_catches_a_tensor_made_without_a_device():
    import os

    from helpers.device_trap import ROOT
    ns = {}
    code = ("import torch\n"
            "def add_zeros(x):\n    return x + torch.zeros(x.shape)\n"
            "def add_zeros_here(x):\n    return x + torch.zeros(x.shape, device=x.device)\n"
            "def draw():\n    return torch.Generator()\n")
    exec(compile(code, os.path.join(ROOT, "bounds", "probe.py"), "exec"), ns)
    x = torch.ones(3)
    with device_trap() as found:
        with pytest.raises(RuntimeError, match="device"):
            ns["add_zeros"](x)
        assert torch.equal(ns["add_zeros_here"](x), x)
        ns["draw"]()
    assert [what for _, what in found] == ["torch.Generator() without a device"]
    assert torch.equal(ns["add_zeros"](x), x)     # outside the trap: the default device again


COMMANDS = [
    ["bounds", "digits-mlp", "--count", "2"],
    ["lp", "digits-mlp", "--count", "1"],
    ["smooth", "digits-mlp", "--count", "1", "--samples", "100"],
    ["check", "digits-mlp", "--count", "1"],
    ["demo", "--count", "1"],
    ["train", "--model", "digits-mlp", "--epochs", "1", "--subset", "50", "--no-eval"],
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer when no GPU is there")
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_every_computing_command_refuses_a_missing_gpu_in_one_line(argv, tmp_path, capsys):
    from certify.cli.main import main
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "run")]
    assert main(argv + ["--device", "cuda:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda:0" in err[0] and "available: cpu" in err[0]
    assert not (tmp_path / "run").exists()


def test_verify_commands_take_a_device(tmp_path, capsys):
    from certify.cli.main import main
    for argv in (["vnnlib", "m.onnx", "p.vnnlib"], ["vnncomp", str(tmp_path), "--out", str(tmp_path / "r.csv")]):
        assert main(argv + ["--device", "gpu"]) == 2
        assert "--device must be cpu, cuda, cuda:N or auto, got 'gpu'" in capsys.readouterr().err


def test_bounds_on_the_cpu_device_match_the_default_run(capsys):
    from certify.cli.main import main
    assert main(["bounds", "digits-mlp", "--count", "4", "--quiet"]) == 0
    default = capsys.readouterr().out.split(",")[:2]
    assert main(["bounds", "digits-mlp", "--count", "4", "--quiet", "--device", "auto"]) == 0
    assert capsys.readouterr().out.split(",")[:2] == default


def _train_once(amp: bool, objective: str = "standard"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(1)
    X, y = torch.rand(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    cfg = TrainConfig(objective=objective, epochs=1, batch_size=16, num_classes=3, amp=amp, eps=0.05)
    return model, train(model, X, y, cfg, device="cpu")


@pytest.mark.parametrize("objective", ["standard", "pgd", "gaussian"])
def test_mixed_precision_training_runs_in_bfloat16_on_the_cpu(objective):
    _, plain = _train_once(False, objective)
    model, amp = _train_once(True, objective)
    assert all(p.dtype == torch.float32 for p in model.parameters())     # the weights stay float32
    a, b = plain[-1]["loss"], amp[-1]["loss"]
    assert np.isfinite(b) and a != b and abs(a - b) < 0.05 * abs(a)       # autocast changed the arithmetic, a little


@pytest.mark.parametrize("objective", ["ibp", "crown-ibp", "trades", "smoothadv"])
def test_mixed_precision_is_refused_where_bounds_or_attacks_need_full_precision(objective):
    with pytest.raises(CertifyError, match=f"amp.*not '{objective}'"):
        TrainConfig(objective=objective, amp=True)


def test_convex_results_follow_the_input_device(net, x):
    res = convex.milp(net, x, eps=0.05, C=robustness_matrix(net(x).argmax(1), 2, dtype=torch.float64),
                      domain=(0.0, 1.0), mode="full")
    meta = res.to("meta")
    assert meta.lower.device.type == "meta" and meta.upper.device.type == "meta"
    assert meta.status == res.status and res.lower.device == CPU


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/device_gpu.sh)")


@cuda_only
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha"])
def test_cuda_bounds_equal_the_cpu_ones(method):
    from helpers.networks import cnn_bn
    for net in (random_mlp((3, 16, 16, 4), 2, dtype=torch.float64), cnn_bn(0)):
        X = torch.rand((3,) + net.input_shape, dtype=torch.float64)
        C = robustness_matrix(net(X).argmax(1), net.output_size, dtype=torch.float64)
        cpu = bounds.compute_bounds(net, ball(X, 0.05, "inf"), C, method=method).lower.detach()
        gpu = bounds.compute_bounds(net.to(device="cuda"), ball(X.cuda(), 0.05, "inf"), C.cuda(), method=method)
        assert gpu.lower.device.type == "cuda"
        assert float((gpu.lower.detach().cpu() - cpu).abs().max()) <= 1e-6


@cuda_only
def test_cuda_verify_smoothing_and_amp_training_run(net, x):
    prop = _prop(net, x, 0.2)
    assert verify(net.to(device="cuda"), prop, timeout=10).status == verify(net, prop, timeout=10).status
    res = Smooth(net.to(device="cuda"), 2, sigma=0.25, seed=0).certify(x[0], n0=100, n=2000, alpha=0.01)
    assert int(res.counts.sum()) == 2000
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    cfg = TrainConfig(objective="standard", epochs=1, batch_size=4, num_classes=3, amp=True)
    hist = train(model, torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,)), cfg, device="cuda")
    assert np.isfinite(hist[-1]["loss"]) and next(model.parameters()).device.type == "cuda"


def test_bounded_follows_its_inputs_device(net, x):
    import certify
    b = certify.Bounded(net)
    with device_trap() as found:
        out = [b(x), b.bounds(x, eps=0.05, C=robustness_matrix(torch.tensor([0]), 2)),
               b.intermediate(x, eps=0.05), b.radius(x, [0], norm="inf"), b.intermediate(x, eps=0.05, method="alpha", nodes=b.node_names()[1:2])]
        res = b.verify(x, eps=0.05, labels=[int(net(x).argmax())], timeout=5)
    _clean(found)
    _on_cpu(out)
    assert res[0].status in ("sat", "unsat", "unknown") and out[1].lower.shape == (1, 1)


@pytest.mark.parametrize("name", ["cnn_bn", "resnet", "mixed"])
def test_every_op_rule_stays_on_the_device(name):
    from helpers.networks import ALL, centers
    net = ALL[name]()
    X = centers(net)
    with device_trap() as found:
        out = [bounds.compute_bounds(net, ball(X, 0.02, "inf"), method=m) for m in ("ibp", "crown", "alpha")]
        out.append(bounds.compute_bounds(net, ball(X, 0.05, "2"), method="crown"))
    _clean(found)
    _on_cpu(out)
