"""PyTorch models on the command line without pickle: a class module:Class importable from the
current directory (constructor arguments from --model-args JSON, weights from a state_dict file
loaded with weights_only=True), a torch.export program (.pt2) whose archive is checked before
torch.export.load sees it, and the errors a user meets on the way."""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import pytest
import torch

from certify.cli.main import main
from certify.errors import CertifyError
from certify.frontends.exported import check_archive, load_exported
from certify.report.records import read_result_file

MARKER = "PWNED"

MODULE = '''
import torch


class Net(torch.nn.Module):
    def __init__(self, width=16, act="relu"):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, width)
        self.act = torch.nn.ReLU() if act == "relu" else torch.nn.Tanh()
        self.fc2 = torch.nn.Linear(width, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


class NotAModule:
    pass
'''


class _Evil:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A folder with the user's module and weights, made the current directory."""
    (tmp_path / "user_models.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))      # so the test itself can build the reference
    import importlib

    import user_models
    importlib.reload(user_models)
    torch.manual_seed(0)
    net = user_models.Net(width=24)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    return tmp_path, net


def _margins(path):
    return [r.evidence.get("margin_lower") for r in read_result_file(str(path))[1]]


def test_class_with_weights_and_model_args_equals_its_onnx_export(user_dir, capsys):
    d, net = user_dir
    from certify.frontends.torch import from_module
    from_module(net, (1, 8, 8)).to_onnx(str(d / "ref.onnx"))
    assert main(["bounds", "user_models:Net", "--weights", "net.pt", "--model-args", '{"width": 24}', "--count", "5",
                 "--quiet", "--out", "a.jsonl"]) == 0
    assert main(["bounds", "ref.onnx", "--count", "5", "--quiet", "--out", "b.jsonl"]) == 0
    a, b = _margins(d / "a.jsonl"), _margins(d / "b.jsonl")
    assert len(a) == 5 and all((x is None) == (y is None) for x, y in zip(a, b))
    assert all(abs(u - v) < 1e-5 for x, y in zip(a, b) if x for u, v in zip(x, y))
    head = read_result_file(str(d / "a.jsonl"))[0]
    assert head["model"] == "user_models:Net" and head["config"]["--weights"] == "net.pt"
    assert head["model_sha256"] is not None                 # the weights file's
    assert main(["info", "user_models:Net", "--model-args", "[24]", "--input-shape", "1", "8", "8"]) == 0
    assert "Linear" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["info", "user_models:Net", "--weights", "net.pt"], "needs the input shape"),
    (["bounds", "user_models:Net", "--weights", "net.pt"], "does not fit model user_models:Net"),
    (["bounds", "user_models:Net", "--model-args", "{width: 24}"], "--model-args is not JSON"),
    (["bounds", "user_models:Net", "--model-args", "3"], "must be a JSON object"),
    (["bounds", "user_models:Net", "--model-args", '{"depth": 3}'], "unexpected keyword argument 'depth'"),
    (["bounds", "user_models:Nope"], "has no torch.nn.Module subclass 'Nope'"),
    (["bounds", "user_models:NotAModule"], "has no torch.nn.Module subclass 'NotAModule'"),
    (["bounds", "no_such_pkg.models:Net"], "cannot import module 'no_such_pkg.models'"),
    (["bounds", "user_models:Net", "--weights", "missing.pt"], "weights file missing.pt does not exist"),
    (["bounds", "user_models:Net", "--weights", "evil.pt"], "never loads"),
    (["bounds", "user_models:Net", "--weights", "list.pt"], "is not a state_dict"),
    (["bounds", "digits-mlp", "--weights", "net.pt"], "apply to a torch class model"),
])
def test_class_model_mistakes_are_one_line(user_dir, capsys, argv, needle):
    d, _ = user_dir
    torch.save(_Evil(d / MARKER), d / "evil.pt")
    torch.save([torch.zeros(2)], d / "list.pt")
    assert main(argv + ["--count", "2"] if argv[0] == "bounds" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (d / MARKER).exists()


class _ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = torch.nn.functional.avg_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.view(x.size(0), -1)) * 0.5


@pytest.mark.parametrize("dynamic", [False, True])
def test_exported_program_loads_and_matches_the_module(tmp_path, dynamic):
    torch.manual_seed(1)
    m = _ConvNet().eval()
    m.bn.running_mean.uniform_(-0.2, 0.2)
    m.bn.running_var.uniform_(0.5, 2.0)
    kw = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamic else {}
    ep = torch.export.export(m, (torch.rand(2, 1, 8, 8),), **kw)
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    net = load_exported(str(tmp_path / "m.pt2"))
    assert net.input_shape == (1, 8, 8) and net.output_shape == (10,)
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert float((net(x) - m(x)).abs().max()) < 1e-5
    assert main(["bounds", str(tmp_path / "m.pt2"), "--count", "3", "--quiet"]) == 0


def _tamper(src, dst, edit):
    """Copy the zip archive ``src`` to ``dst``, ``edit(name, bytes) -> bytes | None`` per member
    (None drops it), plus the members ``edit`` returns for the name None."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for name in zin.namelist():
            data = edit(name[len(root) + 1:], zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for rel, data in (edit(None, b"") or {}).items():
            zout.writestr(f"{root}/{rel}", data)


def test_pt2_archives_that_could_run_code_are_refused(tmp_path):
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.export.save(torch.export.export(m, (torch.rand(1, 1, 8, 8),)), str(tmp_path / "ok.pt2"))
    check_archive(str(tmp_path / "ok.pt2"))
    marker = tmp_path / MARKER
    evil = pickle.dumps(_Evil(marker), protocol=2)

    def pickled_weights(rel, data):
        if rel and rel.endswith("weights_config.json"):
            c = json.loads(data)
            for v in c["config"].values():
                v["use_pickle"] = True
            return json.dumps(c).encode()
        return None if rel is None else data

    def evil_inputs(rel, data):
        return (evil if rel.startswith("data/sample_inputs/") else data) if rel else None

    def aoti(rel, data):
        return {"data/aotinductor/model/model.so": b"\x7fELF"} if rel is None else data

    def opaque(rel, data):
        return {"data/constants/opaque_obj_0": evil} if rel is None else data

    for name, edit, needle in (("pickled.pt2", pickled_weights, "stored pickled"),
                               ("inputs.pt2", evil_inputs, "are not plain tensors"),
                               ("aoti.pt2", aoti, "which a plain torch.export.save does not write"),
                               ("opaque.pt2", opaque, "is a pickled object")):
        _tamper(tmp_path / "ok.pt2", tmp_path / name, edit)
        with pytest.raises(CertifyError, match=needle):
            load_exported(str(tmp_path / name))
        assert main(["info", str(tmp_path / name)]) == 2
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(CertifyError, match="not a torch.export archive"):
        load_exported(str(tmp_path / "junk.pt2"))
    assert not marker.exists()
    # the payload is live: unpickled plainly, it runs
    pickle.loads(io.BytesIO(evil).read())
    assert marker.exists()
