"""A battery of user mistakes across every command, run in-process through ``main(argv)``: each must
exit 2 (or the status its case names) with exactly one stderr line that names the problem, no
traceback, no change to any file that existed before, and no code run from a malicious file (the
attacker's marker file never appears)."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from certify.cli.main import main

MARKER = "PWNED"      # created by every malicious payload below, if it ever runs


class _Evil:
    """Pickles to a call of os.system that creates the marker file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _vnnlib(n_in: int, n_out: int, body: str) -> str:
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    decl += "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    return decl + body


def _box(n_in: int, lo=0.0, hi=1.0) -> str:
    return "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n" for i in range(n_in))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    marker = d / MARKER
    from certify.frontends.torch import from_module
    from certify.models import load_bundled
    from certify.models.zoo import FORMAT, TRAIN_FORMAT

    # ---- models
    load_bundled("digits-mlp").to_onnx(str(d / "mlp.onnx"))
    good = (d / "mlp.onnx").read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "garbage.onnx").write_bytes(bytes(np.random.RandomState(0).randint(0, 256, 4000, dtype=np.uint8)))
    (d / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (d / "text.onnx").write_text("this is not a network\n")
    (d / "garbage.onnx.gz").write_bytes(b"\x1f\x8b garbage")
    (d / "model.txt").write_text("weights")
    (d / "adir.onnx").mkdir()
    for op in ("Softmax", "Erf"):
        g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
        (d / f"{op.lower()}.onnx").write_bytes(helper.make_model(g).SerializeToString())
    from_module(torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5)),
                (3,)).to_onnx(str(d / "five.onnx"))
    from_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1)), (1, 8, 8)).to_onnx(str(d / "one.onnx"))
    (d / "empty.pt").write_bytes(b"")
    (d / "garbage.pt").write_bytes(b"\x00\x01junk" * 50)
    mod = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(mod, d / "module.pt")
    torch.save(_Evil(marker), d / "evil.pt")
    with open(d / "evil_raw.pt", "wb") as f:
        pickle.dump(_Evil(marker), f, protocol=2)
    torch.save({"format": TRAIN_FORMAT, "epoch": 1, "model": mod.state_dict()}, d / "checkpoint.pt")
    torch.save({"format": FORMAT, "model": "custom", "input_shape": [1, 8, 8], "num_classes": 10,
                "state_dict": mod.state_dict(), "meta": {}}, d / "custom.pt")
    torch.save({"format": FORMAT, "model": "digits-mlp", "input_shape": [1, 8, 8], "num_classes": 10,
                "state_dict": mod.state_dict(), "meta": {}}, d / "misfit.pt")
    torch.save({"format": FORMAT, "model": "digits-mlp"}, d / "damaged.pt")
    torch.save(mod.state_dict(), d / "plain_state.pt")

    # ---- data
    for name, proto in (("evil.pkl", 2), ("evil_p0.pkl", 0), ("evil_p4.bin", 4)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=proto)
    (d / "evil_dir").mkdir()
    with open(d / "evil_dir" / "test_batch", "wb") as f:
        pickle.dump(_Evil(marker), f, protocol=2)
    (d / "evil_root" / "cifar10").mkdir(parents=True)
    with open(d / "evil_root" / "cifar10" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(marker)}, f, protocol=2)
    np.savez(d / "objects.npz", images=np.array([_Evil(marker)], dtype=object), labels=np.array([0]))
    with open(d / "evilpickle.npz", "wb") as f:
        pickle.dump(_Evil(marker), f, protocol=2)
    (d / "garbage.bin").write_bytes(b"\x01\x02garbage bytes")
    (d / "stack.pkl").write_bytes(b"\x80\x02.")       # a pickle that ends at once: 'stack underflow'
    (d / "notdict.pkl").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    (d / "empty.npz").write_bytes(b"")
    (d / "zipjunk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(d / "keys.npz", foo=np.zeros(3))
    np.save(d / "single.npy", np.zeros((2, 8, 8)))
    (d / "single.npz").write_bytes((d / "single.npy").read_bytes())
    np.savez(d / "cifarlike.npz", images=np.zeros((4, 3, 32, 32), np.uint8), labels=np.zeros(4, np.int64))
    np.savez(d / "labels_big.npz", images=np.zeros((4, 1, 8, 8), np.float32), labels=np.array([0, 1, 2, 42]))
    np.savez(d / "labels_neg.npz", images=np.zeros((4, 1, 8, 8), np.float32), labels=np.array([0, -1, 2, 3]))
    np.savez(d / "labels_float.npz", images=np.zeros((4, 1, 8, 8), np.float32), labels=np.array([0.5, 1, 2, 3]))
    np.savez(d / "nan.npz", images=np.full((4, 1, 8, 8), np.nan, np.float32), labels=np.zeros(4, np.int64))
    np.savez(d / "bright.npz", images=np.full((4, 1, 8, 8), 7.0, np.float32), labels=np.zeros(4, np.int64))
    np.savez(d / "count.npz", images=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    np.savez(d / "zeros.npz", images=np.zeros((4, 1, 8, 8), np.float32), labels=np.arange(4))
    np.savez(d / "flat.npz", images=np.zeros((4, 64), np.float32), labels=np.zeros(4, np.int64))
    np.savez(d / "none.npz", images=np.zeros((0, 1, 8, 8), np.float32), labels=np.zeros(0, np.int64))
    (d / "idx_bad").mkdir()
    (d / "idx_bad" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3)
    (d / "idx_bad" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big"))
    (d / "emptydir").mkdir()

    # ---- VNN-LIB (for mlp.onnx: 64 inputs, 10 outputs; five.onnx: 3 inputs, 5 outputs)
    ok_body = _box(3) + "(assert (<= Y_0 Y_1))\n"
    (d / "ok5.vnnlib").write_text(_vnnlib(3, 5, ok_body))
    (d / "three_outputs.vnnlib").write_text(_vnnlib(3, 3, ok_body))
    (d / "two_inputs.vnnlib").write_text(_vnnlib(2, 5, _box(2) + "(assert (<= Y_0 Y_1))\n"))
    (d / "empty.vnnlib").write_text("")
    (d / "unbalanced.vnnlib").write_text(_vnnlib(3, 5, _box(3) + "(assert (<= Y_0 Y_1)\n"))
    (d / "extra_close.vnnlib").write_text(_vnnlib(3, 5, _box(3) + "(assert (<= Y_0 Y_1)))\n"))
    (d / "unknown_op.vnnlib").write_text(_vnnlib(3, 5, _box(3) + "(assert (xor Y_0 Y_1))\n"))
    (d / "strict.vnnlib").write_text(_vnnlib(3, 5, _box(3) + "(assert (< Y_0 Y_1))\n"))
    (d / "undeclared.vnnlib").write_text(_vnnlib(3, 5, _box(3) + "(assert (<= Y_0 Y_7))\n"))
    (d / "range.vnnlib").write_text(_vnnlib(3, 5, "(declare-const Y_9 Real)\n" + ok_body))
    (d / "unbounded.vnnlib").write_text(_vnnlib(3, 5, "(assert (>= X_0 0))\n(assert (<= X_1 1))\n"))
    (d / "noassert.vnnlib").write_text(_vnnlib(3, 5, ""))
    (d / "twice.vnnlib").write_text(_vnnlib(3, 5, "(declare-const X_0 Real)\n" + ok_body))
    (d / "badtype.vnnlib").write_text("(declare-const X_0 Int)\n")
    (d / "badnum.vnnlib").write_text(_vnnlib(3, 5, _box(3) + "(assert (<= Y_0 1.2.3))\n"))
    (d / "binary.vnnlib").write_bytes(b"\xff\xfe\x00garbage\x80")
    (d / "garbage.vnnlib.gz").write_bytes(b"\x1f\x8bnot gzip")
    (d / "mixed.vnnlib").write_text(_vnnlib(3, 5, _box(3) + "(assert (<= X_0 Y_1))\n"))
    (d / "outside.vnnlib").write_text("(assert (<= Y_0 Y_1))\n" + _vnnlib(3, 5, ""))

    # ---- VNN-COMP folders
    (d / "bench").mkdir()
    (d / "bench" / "five.onnx").write_bytes((d / "five.onnx").read_bytes())
    (d / "bench" / "ok5.vnnlib").write_text((d / "ok5.vnnlib").read_text())
    (d / "bench" / "instances.csv").write_text("five.onnx,ok5.vnnlib,10\n")
    (d / "bench_badinst").mkdir()
    (d / "bench_badinst" / "instances.csv").write_text("five.onnx,ok5.vnnlib,notanumber\n")
    (d / "bench_noinst").mkdir()
    (d / "gt_bad.csv").write_text("a,b,c\n1,2,3\n")
    (d / "notresults.csv").write_text("my,own,table\n1,2,3\n")

    # ---- result files
    (d / "torn.jsonl").write_text('{"idx": 0, "label": 1, "pre')
    (d / "header_only.jsonl").write_text('{"provenance": {"command": "bounds"}}\n')
    (d / "badverdict.jsonl").write_text('{"idx": 0, "label": 1, "predict": 1, "engine": "bounds", "method": "crown", '
                                        '"verdict": "safe"}\n{"idx": 1}\n')
    (d / "notobject.jsonl").write_text('[1, 2, 3]\n{"idx": 1}\n')
    (d / "strid.jsonl").write_text('{"idx": "a", "label": 1, "predict": 1, "engine": "bounds", "method": "crown", '
                                   '"verdict": "certified"}\n\n')
    (d / "midgarbage.jsonl").write_text('{"idx": 0, "label": 1, "predict": 1, "engine": "bounds", "method": '
                                        '"crown", "verdict": "certified", "eps": 0.1}\n{"idx": 1, "lab\n'
                                        '{"idx": 2, "label": 1, "predict": 1, "engine": "bounds", "method": '
                                        '"crown", "verdict": "certified", "eps": 0.1}\n')
    (d / "plain.txt").write_text("hello world\n")
    (d / "cohen_bad.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\tabc\t1\t0.1\n")
    (d / "cohen_empty.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    (d / "empty.jsonl").write_text("")
    (d / "binary.jsonl").write_bytes(good[:200])
    (d / "existing.png").write_bytes(b"mine")
    (d / "existing.jsonl").write_text("my notes\n")
    (d / "afile").write_text("a file, not a folder")
    (d / "outdir").mkdir()

    # ---- configuration files and exported programs
    (d / "unknown_key.yaml").write_text("model: digits-mlp\nepss: 0.1\n")
    (d / "bad_value.yaml").write_text("eps: nan\n")
    (d / "old_key.yaml").write_text("n: 3\n")
    (d / "other_command.yaml").write_text("command: train\n")
    (d / "not_mapping.yaml").write_text("[1, 2]\n")
    (d / "bad.toml").write_text("eps = \n")
    (d / "run.ini").write_text("eps=1\n")
    (d / "garbage.pt2").write_bytes(b"PK\x03\x04garbage")
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.export.save(torch.export.export(lin, (torch.rand(1, 1, 8, 8),)), str(d / "ok.pt2"))
    import zipfile
    with zipfile.ZipFile(d / "ok.pt2") as zin, zipfile.ZipFile(d / "evil.pt2", "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if "/data/sample_inputs/" in name:
                data = pickle.dumps(_Evil(marker), protocol=2)
            zout.writestr(name, data)
    (d / "ok.pt2").unlink()

    # ---- finished runs to resume
    assert main(["bounds", "digits-mlp", "--count", "3", "--eps", "0.01", "--quiet", "--out", str(d / "b.jsonl")]) == 0
    assert main(["smooth", "digits-mlp", "--max", "2", "--samples", "200", "--n0", "20", "--out", str(d / "s.jsonl")]) == 0
    assert main(["lp", "digits-mlp", "--count", "1", "--eps", "0.01", "--quiet", "--out", str(d / "lp.jsonl")]) == 0
    assert main(["bounds", "digits-mlp", "--count", "2", "--norm", "2", "--eps", "0.1", "--quiet",
                 "--out", str(d / "b2.jsonl")]) == 0
    from certify.report.records import ResultWriter
    from certify.report.records import lock_file
    held = ResultWriter(str(d / "held.jsonl"), resume=False)        # other runs holding their locks
    held_csv = os.open(d / "held.csv", os.O_RDWR | os.O_CREAT)
    lock_file(held_csv, str(d / "held.csv"))
    yield d
    held.close()
    os.close(held_csv)


def _d(argv, d: Path) -> list[str]:
    return [a.format(d=d) for a in argv]


M = "digits-mlp"
B = ["bounds", M, "--count", "2"]
LP = ["lp", M, "--count", "1"]
SM = ["smooth", M, "--max", "2", "--samples", "100", "--n0", "10"]
# (case id, argv with {d} for the fixture folder, text the error line must contain, exit status)
CASES = [
    # ---------------------------------------------------------------- global flags
    ("threads-0", ["--threads", "0", "info", M], "--threads: must be at least 1", 2),
    ("threads-neg", ["--threads", "-2", "info", M], "--threads: must be at least 1", 2),
    ("threads-text", ["--threads", "two", "info", M], "expected an integer", 2),
    ("unknown-command", ["frobnicate"], "invalid choice", 2),
    ("demo-bad-model", ["demo", "--model", "nope"], "invalid choice", 2),
    ("demo-n-0", ["demo", "--count", "0"], "--count: must be at least 1", 2),
    # ---------------------------------------------------------------- models (certify info)
    ("model-missing", ["info", "{d}/nope.onnx"], "does not exist", 2),
    ("model-empty-onnx", ["info", "{d}/empty.onnx"], "empty file", 2),
    ("model-garbage-onnx", ["info", "{d}/garbage.onnx"], "garbage.onnx", 2),
    ("model-truncated-onnx", ["info", "{d}/truncated.onnx"], "truncated.onnx", 2),
    ("model-text-onnx", ["info", "{d}/text.onnx"], "text.onnx", 2),
    ("model-garbage-gz", ["info", "{d}/garbage.onnx.gz"], "not a readable ONNX model", 2),
    ("model-unknown-ext", ["info", "{d}/model.txt"], "unknown model format", 2),
    ("model-directory", ["info", "{d}/adir.onnx"], "is a directory", 2),
    ("model-erf", ["info", "{d}/erf.onnx"], "Erf", 2),
    ("model-empty-pt", ["info", "{d}/empty.pt"], "empty.pt", 2),
    ("model-garbage-pt", ["info", "{d}/garbage.pt"], "not a certify checkpoint", 2),
    ("model-pickled-module", ["info", "{d}/module.pt"], "export the model to ONNX", 2),
    ("model-malicious-pt", ["info", "{d}/evil.pt"], "never loads", 2),
    ("model-malicious-raw-pt", ["info", "{d}/evil_raw.pt"], "never loads", 2),
    ("model-train-state", ["info", "{d}/checkpoint.pt"], "holds no config.json naming the architecture", 2),
    ("model-custom-arch", ["info", "{d}/custom.pt"], "'custom' is not in the zoo", 2),
    ("model-misfit-weights", ["info", "{d}/misfit.pt"], "do not fit architecture", 2),
    ("model-damaged-ckpt", ["info", "{d}/damaged.pt"], "damaged certify checkpoint", 2),
    ("model-plain-state-dict", ["info", "{d}/plain_state.pt"], "not a certify checkpoint", 2),
    ("model-bounds-one-output", B[:1] + ["{d}/one.onnx", "--count", "2"], "K >= 2", 2),
    ("model-bounds-wrong-shape", B[:1] + ["{d}/five.onnx", "--count", "2"], "expects input shape", 2),
    ("model-smooth-garbage", ["smooth", "{d}/garbage.onnx"], "garbage.onnx", 2),
    ("model-lp-missing", ["lp", "{d}/missing.onnx"], "does not exist", 2),
    ("model-milp-malicious", ["milp", "{d}/evil.pt"], "never loads", 2),
    ("model-sdp-softmax", ["sdp", "{d}/softmax.onnx"], "Softmax", 2),
    ("model-check-missing", ["check", "{d}/nope.onnx"], "does not exist", 2),
    ("model-check-one-output", ["check", "{d}/one.onnx"], "K >= 2", 2),
    # ---------------------------------------------------------------- bounds numbers and choices
    ("bounds-eps-neg", B + ["--eps", "-1"], "--eps: must be >= 0", 2),
    ("bounds-eps-nan", B + ["--eps", "nan"], "--eps: must be >= 0, got nan", 2),
    ("bounds-eps-text", B + ["--eps", "small"], "expected a number", 2),
    ("bounds-n-0", ["bounds", M, "--count", "0"], "--count/--max: must be at least 1", 2),
    ("bounds-n-neg", ["bounds", M, "--count", "-3"], "--count/--max: must be at least 1", 2),
    ("bounds-skip-0", B + ["--skip", "0"], "--skip: must be at least 1", 2),
    ("bounds-start-neg", B + ["--start", "-1"], "--start: must be >= 0", 2),
    ("bounds-start-past-end", B + ["--start", "100000"], "no inputs selected", 2),
    ("bounds-batch-0", B + ["--batch", "0"], "--batch: must be at least 1", 2),
    ("bounds-tol-0", B + ["--radius", "--tol", "0"], "--tol: must be a finite number > 0", 2),
    ("bounds-tol-nan", B + ["--tol", "nan"], "--tol: must be a finite number > 0", 2),
    ("bounds-max-radius-neg", B + ["--radius", "--max-radius", "-1"], "--max-radius: must be a finite number > 0", 2),
    ("bounds-max-radius-inf", B + ["--radius", "--max-radius", "inf"], "--max-radius", 2),
    ("bounds-iterations-neg", B + ["--method", "alpha", "--iterations", "-1"], "--iterations: must be >= 0", 2),
    ("bounds-lr-0", B + ["--lr", "0"], "--lr: must be a finite number > 0", 2),
    ("bounds-domain-reversed", B + ["--domain", "1", "0"], "--domain needs LO < HI", 2),
    ("bounds-domain-nan", B + ["--domain", "nan", "1"], "--domain: must be a finite number", 2),
    ("bounds-method", B + ["--method", "deepz"], "invalid choice: 'deepz'", 2),
    ("bounds-norm", B + ["--norm", "3"], "invalid choice: '3'", 2),
    ("bounds-precision", B + ["--precision", "float16"], "invalid choice", 2),
    ("bounds-unknown-flag", B + ["--epss", "0.1"], "unrecognized arguments: --epss", 2),
    ("bounds-resume-no-out", B + ["--resume"], "--resume needs --out", 2),
    # ---------------------------------------------------------------- data sets and data files
    ("data-unknown-name", B + ["--data", "imagenet"], "neither a known data set (digits, mnist", 2),
    ("data-mnist-no-dir", B + ["--data", "mnist", "--data-dir", "{d}/emptydir"], "no test data found", 2),
    ("data-malicious-pickle", B + ["--data", "{d}/evil.pkl"], "refusing global posix.system", 2),
    ("data-malicious-p0", B + ["--data", "{d}/evil_p0.pkl"], "not a data file certify reads", 2),
    ("data-malicious-p4", B + ["--data", "{d}/evil_p4.bin"], "refusing global posix.system", 2),
    ("data-malicious-test-batch", B + ["--data", "{d}/evil_dir"], "refusing global", 2),
    ("data-malicious-data-dir", B + ["--data", "cifar10", "--data-dir", "{d}/evil_root"], "refusing global", 2),
    ("data-object-npz", B + ["--data", "{d}/objects.npz"], "allow_pickle=False", 2),
    ("data-pickle-as-npz", B + ["--data", "{d}/evilpickle.npz"], "cannot read npz file", 2),
    ("data-garbage-file", B + ["--data", "{d}/garbage.bin"], "not a data file certify reads", 2),
    ("data-stack-underflow", B + ["--data", "{d}/stack.pkl"], "not a CIFAR-10 python batch", 2),
    ("data-pickled-list", B + ["--data", "{d}/notdict.pkl"], "no b'data'/b'labels'", 2),
    ("data-empty-npz", B + ["--data", "{d}/empty.npz"], "cannot read npz file", 2),
    ("data-zip-junk", B + ["--data", "{d}/zipjunk.npz"], "cannot read npz file", 2),
    ("data-npz-keys", B + ["--data", "{d}/keys.npz"], "npz needs arrays 'images' and 'labels'", 2),
    ("data-npy-as-npz", B + ["--data", "{d}/single.npz"], "not an .npz archive", 2),
    ("data-wrong-shape", B + ["--data", "{d}/cifarlike.npz"], "expects input shape (1, 8, 8)", 2),
    ("data-label-too-big", B + ["--data", "{d}/labels_big.npz", "--count", "4"], "label 42", 2),
    ("data-label-negative", B + ["--data", "{d}/labels_neg.npz"], "non-negative integers", 2),
    ("data-label-float", B + ["--data", "{d}/labels_float.npz"], "labels integers", 2),
    ("data-nan-pixels", B + ["--data", "{d}/nan.npz"], "outside [0, 1]", 2),
    ("data-bright-pixels", B + ["--data", "{d}/bright.npz"], "outside [0, 1]", 2),
    ("data-count-mismatch", B + ["--data", "{d}/count.npz"], "4 images but 3 labels", 2),
    ("data-flat-images", B + ["--data", "{d}/flat.npz"], "(N, C, H, W)", 2),
    ("data-no-images", B + ["--data", "{d}/none.npz"], "holds no test images", 2),
    ("data-truncated-idx", B + ["--data", "{d}/idx_bad"], "truncated idx file", 2),
    ("data-empty-folder", B + ["--data", "{d}/emptydir"], "no test data found", 2),
    ("data-split", B + ["--split", "validation"], "invalid choice: 'validation'", 2),
    ("data-smooth-malicious", SM + ["--data", "{d}/evil.pkl"], "refusing global", 2),
    ("data-lp-malicious", LP + ["--data", "{d}/evil_dir"], "refusing global", 2),
    ("data-check-malicious", ["check", M, "--data", "{d}/evil.pkl"], "refusing global", 2),
    ("data-train-malicious", ["train", "--model", M, "--data", "{d}/evil.pkl", "--out", "{d}/run_evil"],
     "refusing global", 2),
    ("data-check-imagenet", ["check", M, "--data", "imagenet"], "neither a known data set", 2),
    # ---------------------------------------------------------------- outputs
    ("out-exists", B + ["--out", "{d}/existing.jsonl"], "exists; pass --resume", 2),
    ("out-directory", B + ["--out", "{d}/outdir"], "is a directory", 2),
    ("out-under-a-file", B + ["--out", "{d}/afile/r.jsonl"], "cannot write result file", 2),
    ("out-disk-full", B + ["--out", "/dev/full"], "No space left on device", 2),
    ("out-resume-and-overwrite", B + ["--out", "{d}/new1.jsonl", "--resume", "--overwrite"], "exclude each other", 2),
    ("out-locked", B + ["--out", "{d}/held.jsonl", "--resume"], "being written by another certify run", 2),
    ("out-locked-overwrite", B + ["--out", "{d}/held.jsonl", "--overwrite"], "being written by another", 2),
    ("out-resume-not-records", B + ["--out", "{d}/existing.jsonl", "--resume"], "existing.jsonl:1: not a result", 2),
    ("out-resume-binary", B + ["--out", "{d}/binary.jsonl", "--resume"], "binary data", 2),
    ("out-resume-midfile-garbage", B + ["--out", "{d}/midgarbage.jsonl", "--resume"], "midgarbage.jsonl:2:", 2),
    ("out-lp-directory", LP + ["--out", "{d}/outdir"], "is a directory", 2),
    ("out-smooth-disk-full", SM + ["--out", "/dev/full"], "No space left on device", 2),
    ("out-smooth-cohen-no-out", SM + ["--format", "cohen"], "give --out FILE.jsonl", 2),
    ("out-smooth-cohen-same", SM + ["--format", "cohen", "--out", "{d}/x.tsv"], "which is --out itself", 2),
    # ---------------------------------------------------------------- resume mismatches
    ("resume-eps", ["bounds", M, "--count", "3", "--eps", "0.02", "--out", "{d}/b.jsonl", "--resume"],
     "--eps 0.02 != 0.01 in", 2),
    ("resume-method", ["bounds", M, "--count", "3", "--eps", "0.01", "--method", "ibp", "--out", "{d}/b.jsonl",
                       "--resume"], "--method ibp != crown in", 2),
    ("resume-norm", ["bounds", M, "--count", "3", "--eps", "0.01", "--norm", "2", "--out", "{d}/b.jsonl", "--resume"],
     "--norm 2 != inf in", 2),
    ("resume-radius", ["bounds", M, "--count", "3", "--eps", "0.01", "--radius", "--out", "{d}/b.jsonl", "--resume"],
     "--radius on != off", 2),
    ("resume-model", ["bounds", "digits-cnn", "--count", "3", "--eps", "0.01", "--out", "{d}/b.jsonl", "--resume"],
     "model digits-cnn", 2),
    ("resume-split", ["bounds", M, "--count", "3", "--eps", "0.01", "--split", "train", "--out", "{d}/b.jsonl",
                      "--resume"], "--split train != test", 2),
    ("resume-data", ["bounds", M, "--count", "3", "--eps", "0.01", "--data", "{d}/zeros.npz", "--out", "{d}/b.jsonl",
                     "--resume"], "--data {d}/zeros.npz != digits in", 2),
    ("resume-bounds-on-smooth", ["bounds", M, "--count", "2", "--out", "{d}/s.jsonl", "--resume"],
     "command bounds != smooth in", 2),
    ("resume-smooth-on-bounds", SM + ["--out", "{d}/b.jsonl", "--resume"], "command smooth != bounds in", 2),
    ("resume-smooth-sigma", ["smooth", M, "--max", "2", "--samples", "200", "--n0", "20", "--sigma", "0.5",
                             "--out", "{d}/s.jsonl", "--resume"], "--sigma 0.5 != 0.25", 2),
    ("resume-smooth-n", ["smooth", M, "--max", "2", "--samples", "300", "--n0", "20", "--out", "{d}/s.jsonl", "--resume"],
     "--samples 300 != 200", 2),
    ("resume-smooth-seed", ["smooth", M, "--max", "2", "--samples", "200", "--n0", "20", "--seed", "3",
                            "--out", "{d}/s.jsonl", "--resume"], "--seed 3 != 0", 2),
    ("resume-smooth-noise", ["smooth", M, "--max", "2", "--samples", "200", "--n0", "20", "--noise", "laplace",
                             "--out", "{d}/s.jsonl", "--resume"], "--noise laplace != gaussian", 2),
    ("resume-lp-on-milp", ["milp", M, "--count", "1", "--eps", "0.01", "--out", "{d}/lp.jsonl", "--resume"],
     "command milp != lp", 2),
    ("resume-lp-time-limit", ["lp", M, "--count", "1", "--eps", "0.01", "--time-limit", "5", "--out", "{d}/lp.jsonl",
                              "--resume"], "--time-limit 5 != unset", 2),
    ("resume-l2-eps", ["bounds", M, "--count", "2", "--norm", "2", "--eps", "0.2", "--out", "{d}/b2.jsonl", "--resume"],
     "--eps 0.2 != 0.1", 2),
    # ---------------------------------------------------------------- lp / sdp / milp numbers
    ("lp-eps-nan", LP + ["--eps", "nan"], "--eps: must be >= 0, got nan", 2),
    ("lp-time-limit-0", LP + ["--time-limit", "0"], "--time-limit: must be a finite number > 0", 2),
    ("lp-tol-neg", LP + ["--radius", "--tol", "-1"], "--tol: must be a finite number > 0", 2),
    ("lp-max-radius-0", LP + ["--radius", "--max-radius", "0"], "--max-radius", 2),
    ("lp-solver", LP + ["--solver", "gurobi"], "invalid choice: 'gurobi'", 2),
    ("lp-domain", LP + ["--domain", "0.5", "0.5"], "--domain needs LO < HI", 2),
    ("sdp-iters-0", ["sdp", M, "--count", "1", "--iters", "0"], "--iters: must be at least 1", 2),
    ("sdp-max-iters-neg", ["sdp", M, "--count", "1", "--max-iters", "-5"], "--max-iters: must be at least 1", 2),
    ("milp-norm", ["milp", M, "--count", "1", "--norm", "2"], "an L2 ball is a second-order-cone constraint", 2),
    ("milp-mode", ["milp", M, "--count", "1", "--mode", "fast"], "invalid choice: 'fast'", 2),
    ("milp-time-nan", ["milp", M, "--count", "1", "--time-limit", "nan"], "--time-limit", 2),
    # ---------------------------------------------------------------- smooth numbers
    ("smooth-sigma-0", SM + ["--sigma", "0"], "--sigma: must be a finite number > 0", 2),
    ("smooth-sigma-neg", SM + ["--sigma", "-0.5"], "--sigma: must be a finite number > 0", 2),
    ("smooth-sigma-nan", SM + ["--sigma", "nan"], "--sigma: must be a finite number > 0", 2),
    ("smooth-n-0", ["smooth", M, "--samples", "0"], "--samples: must be at least 1", 2),
    ("smooth-n0-0", ["smooth", M, "--n0", "0"], "--n0: must be at least 1", 2),
    ("smooth-alpha-big", SM + ["--alpha", "0.7"], "--alpha must be in (0, 0.5)", 2),
    ("smooth-alpha-nan", SM + ["--alpha", "nan"], "--alpha must be in (0, 0.5)", 2),
    ("smooth-batch-0", SM + ["--batch", "0"], "--batch: must be at least 1", 2),
    ("smooth-max-0", ["smooth", M, "--max", "0"], "--max: must be at least 1", 2),
    ("smooth-noise", SM + ["--noise", "cauchy"], "invalid choice: 'cauchy'", 2),
    # ---------------------------------------------------------------- curve
    ("curve-missing", ["curve", "{d}/nope.jsonl"], "cannot read result file", 2),
    ("curve-binary-onnx", ["curve", "{d}/mlp.onnx"], "binary data", 2),
    ("curve-empty", ["curve", "{d}/empty.jsonl"], "empty result file", 2),
    ("curve-torn-only", ["curve", "{d}/torn.jsonl"], "holds no result records", 2),
    ("curve-header-only", ["curve", "{d}/header_only.jsonl"], "holds no result records", 2),
    ("curve-bad-verdict", ["curve", "{d}/badverdict.jsonl"], "unknown verdict 'safe'", 2),
    ("curve-not-object", ["curve", "{d}/notobject.jsonl"], "neither JSON-lines records", 2),
    ("curve-string-idx", ["curve", "{d}/strid.jsonl"], "idx must be an integer", 2),
    ("curve-text", ["curve", "{d}/plain.txt"], "neither JSON-lines records nor Cohen", 2),
    ("curve-cohen-bad-row", ["curve", "{d}/cohen_bad.tsv"], "not a Cohen-format row", 2),
    ("curve-cohen-header-only", ["curve", "{d}/cohen_empty.tsv"], "holds no result records", 2),
    ("curve-directory", ["curve", "{d}/outdir"], "cannot read result file", 2),
    ("curve-bad-extension", ["curve", "{d}/b.jsonl", "--out", "{d}/c.jpgx"], "unknown image format 'jpgx'", 2),
    ("curve-no-extension", ["curve", "{d}/b.jsonl", "--out", "{d}/plot"], "unknown image format", 2),
    ("curve-out-directory", ["curve", "{d}/b.jsonl", "--out", "{d}/outdir.png", "--csv", "{d}/outdir"],
     "is a directory", 2),
    ("curve-out-exists", ["curve", "{d}/b.jsonl", "--out", "{d}/existing.png"], "exists; pass --overwrite", 2),
    ("curve-out-no-folder", ["curve", "{d}/b.jsonl", "--out", "{d}/nofolder/c.png"], "does not exist", 2),
    ("curve-labels-count", ["curve", "{d}/b.jsonl", "{d}/s.jsonl", "--label", "one"], "--label given 1 times", 2),
    ("curve-mixed-norms", ["curve", "{d}/b.jsonl", "{d}/s.jsonl"], "--allow-mixed-norms", 2),
    ("curve-radii-neg", ["curve", "{d}/b.jsonl", "--radii", "0", "-1"], "--radii: must be >= 0", 2),
    ("curve-step-0", ["curve", "{d}/b.jsonl", "--step", "0"], "--step: must be a finite number > 0", 2),
    ("curve-format", ["curve", "{d}/b.jsonl", "--format", "html"], "invalid choice: 'html'", 2),
    # ---------------------------------------------------------------- vnnlib
    ("vnnlib-missing-model", ["vnnlib", "{d}/nope.onnx", "{d}/ok5.vnnlib"], "does not exist", 2),
    ("vnnlib-garbage-model", ["vnnlib", "{d}/garbage.onnx", "{d}/ok5.vnnlib"], "garbage.onnx", 2),
    ("vnnlib-parse-only-garbage", ["vnnlib", "{d}/garbage.onnx", "{d}/ok5.vnnlib", "--parse-only"],
     "garbage.onnx", 2),
    ("vnnlib-missing-prop", ["vnnlib", "{d}/five.onnx", "{d}/nope.vnnlib"], "no such VNN-LIB file", 2),
    ("vnnlib-empty", ["vnnlib", "{d}/five.onnx", "{d}/empty.vnnlib"], "no assert in the file", 2),
    ("vnnlib-three-outputs", ["vnnlib", "{d}/five.onnx", "{d}/three_outputs.vnnlib"],
     "declares 3 outputs (Y_i) but the network has 5 outputs", 2),
    ("vnnlib-two-inputs", ["vnnlib", "{d}/five.onnx", "{d}/two_inputs.vnnlib"], "declares 2 inputs", 2),
    ("vnnlib-unbalanced", ["vnnlib", "{d}/five.onnx", "{d}/unbalanced.vnnlib"], "is never closed", 2),
    ("vnnlib-extra-close", ["vnnlib", "{d}/five.onnx", "{d}/extra_close.vnnlib"], "unbalanced ')'", 2),
    ("vnnlib-unknown-op", ["vnnlib", "{d}/five.onnx", "{d}/unknown_op.vnnlib"], "unknown operator 'xor'", 2),
    ("vnnlib-strict", ["vnnlib", "{d}/five.onnx", "{d}/strict.vnnlib"], "operator '<' is not supported", 2),
    ("vnnlib-undeclared", ["vnnlib", "{d}/five.onnx", "{d}/undeclared.vnnlib"], "Y_7 is not declared", 2),
    ("vnnlib-out-of-range", ["vnnlib", "{d}/five.onnx", "{d}/range.vnnlib"], "Y_9 is out of range", 2),
    ("vnnlib-unbounded", ["vnnlib", "{d}/five.onnx", "{d}/unbounded.vnnlib"], "has no upper bound", 2),
    ("vnnlib-no-assert", ["vnnlib", "{d}/five.onnx", "{d}/noassert.vnnlib"], "no assert", 2),
    ("vnnlib-declared-twice", ["vnnlib", "{d}/five.onnx", "{d}/twice.vnnlib"], "declared twice", 2),
    ("vnnlib-bad-type", ["vnnlib", "{d}/five.onnx", "{d}/badtype.vnnlib"], "type 'Int' is not supported", 2),
    ("vnnlib-bad-number", ["vnnlib", "{d}/five.onnx", "{d}/badnum.vnnlib"], "'1.2.3'", 2),
    ("vnnlib-binary", ["vnnlib", "{d}/five.onnx", "{d}/binary.vnnlib"], "cannot read VNN-LIB file", 2),
    ("vnnlib-garbage-gz", ["vnnlib", "{d}/five.onnx", "{d}/garbage.vnnlib.gz"], "cannot read VNN-LIB file", 2),
    ("vnnlib-mixed-atom", ["vnnlib", "{d}/five.onnx", "{d}/mixed.vnnlib"], "mixes inputs and outputs", 2),
    ("vnnlib-undeclared-first", ["vnnlib", "{d}/five.onnx", "{d}/outside.vnnlib"], "X_0 has no lower bound", 2),
    ("vnnlib-for-digits", ["vnnlib", M, "{d}/ok5.vnnlib"], "declares 3 inputs (X_i) but the network has 64", 2),
    ("vnnlib-timeout-nan", ["vnnlib", "{d}/five.onnx", "{d}/ok5.vnnlib", "--timeout", "nan"],
     "--timeout: must be a finite number > 0, got nan", 2),
    ("vnnlib-timeout-0", ["vnnlib", "{d}/five.onnx", "{d}/ok5.vnnlib", "--timeout", "0"], "--timeout", 2),
    ("vnnlib-timeout-neg", ["vnnlib", "{d}/five.onnx", "{d}/ok5.vnnlib", "--timeout", "-1"], "--timeout", 2),
    ("vnnlib-timeout-inf", ["vnnlib", "{d}/five.onnx", "{d}/ok5.vnnlib", "--timeout", "inf"], "--timeout", 2),
    ("vnnlib-out-directory", ["vnnlib", "{d}/five.onnx", "{d}/ok5.vnnlib", "--out", "{d}/outdir"],
     "is a directory", 2),
    ("vnnlib-out-exists", ["vnnlib", "{d}/five.onnx", "{d}/ok5.vnnlib", "--out", "{d}/existing.jsonl"],
     "already exists", 2),
    ("vnnlib-method", ["vnnlib", "{d}/five.onnx", "{d}/ok5.vnnlib", "--method", "magic"], "invalid choice", 2),
    # ---------------------------------------------------------------- vnncomp
    ("vnncomp-missing-dir", ["vnncomp", "{d}/nobench", "--out", "{d}/r1.csv"], "does not exist", 2),
    ("vnncomp-no-instances", ["vnncomp", "{d}/bench_noinst", "--out", "{d}/r2.csv"], "instances file", 2),
    ("vnncomp-bad-instances", ["vnncomp", "{d}/bench_badinst", "--out", "{d}/r3.csv"], "expected 'onnx,vnnlib,timeout'", 2),
    ("vnncomp-missing-gt", ["vnncomp", "{d}/bench", "--out", "{d}/r4.csv", "--ground-truth", "{d}/no.csv"],
     "ground truth file", 2),
    ("vnncomp-no-out", ["vnncomp", "{d}/bench"], "the following arguments are required: --out", 2),
    ("vnncomp-timeout-scale", ["vnncomp", "{d}/bench", "--out", "{d}/r5.csv", "--timeout-scale", "0"],
     "--timeout-scale", 2),
    ("vnncomp-every", ["vnncomp", "{d}/bench", "--out", "{d}/r6.csv", "--every", "0"], "--every", 2),
    ("vnncomp-limit", ["vnncomp", "{d}/bench", "--out", "{d}/r7.csv", "--limit", "-1"], "--limit", 2),
    ("vnncomp-gt-columns", ["vnncomp", "{d}/bench", "--out", "{d}/r8.csv", "--ground-truth", "{d}/gt_bad.csv"],
     "needs the columns onnx, vnnlib, truth", 2),
    ("vnncomp-out-not-results", ["vnncomp", "{d}/bench", "--out", "{d}/notresults.csv"],
     "is not a certify vnncomp results CSV", 2),
    ("vnncomp-out-binary", ["vnncomp", "{d}/bench", "--out", "{d}/mlp.onnx"], "not a results CSV (binary data)", 2),
    ("vnncomp-out-locked", ["vnncomp", "{d}/bench", "--out", "{d}/held.csv"], "being written by another", 2),
    ("vnncomp-out-directory", ["vnncomp", "{d}/bench", "--out", "{d}/outdir"], "is a directory", 2),
    # ---------------------------------------------------------------- train
    ("train-epochs-0", ["train", "--epochs", "0", "--out", "{d}/run1"], "--epochs must be at least 1", 2),
    ("train-out-file", ["train", "--model", M, "--out", "{d}/afile"], "is a file", 2),
    ("train-resume-nothing", ["train", "--model", M, "--out", "{d}/run2", "--resume"], "no checkpoint.pt", 2),
    ("train-model", ["train", "--model", "resnet1000", "--out", "{d}/run3"], "invalid choice: 'resnet1000'", 2),
    ("train-objective", ["train", "--objective", "magic", "--out", "{d}/run4"], "invalid choice: 'magic'", 2),
    ("train-eps-nan", ["train", "--eps", "nan", "--out", "{d}/run5"], "--eps: must be a finite number", 2),
    ("train-lr-neg", ["train", "--lr", "-1", "--out", "{d}/run6"], "--lr: must be a finite number > 0", 2),
    ("train-sigma-0", ["train", "--objective", "gaussian", "--sigma", "0", "--out", "{d}/run7"],
     "--sigma must be positive", 2),
    ("train-alpha", ["train", "--alpha", "2", "--out", "{d}/run8"], "--alpha must be in (0, 0.5)", 2),
    ("train-data", ["train", "--model", M, "--data", "imagenet", "--out", "{d}/run9"], "neither a known data set", 2),
    ("train-batch-0", ["train", "--batch-size", "0", "--out", "{d}/run10"], "--batch-size must be at least 1", 2),
    ("train-warmup-neg", ["train", "--warmup-epochs", "-1", "--out", "{d}/run11"], "--warmup-epochs must be >= 0", 2),
    # ---------------------------------------------------------------- check
    ("check-eps-nan", ["check", M, "--eps", "nan"], "--eps: must be >= 0", 2),
    ("check-n-0", ["check", M, "--count", "0"], "--count/--max: must be at least 1", 2),
    ("check-samples-0", ["check", M, "--samples", "0"], "--samples: must be at least 1", 2),
    ("check-milp-time", ["check", M, "--milp-time", "0"], "--milp-time", 2),
    ("check-wrong-shape", ["check", M, "--data", "{d}/cifarlike.npz"], "expects input shape", 2),
    ("check-labels", ["check", M, "--data", "{d}/labels_big.npz", "--count", "4"], "label 42", 2),
    # ---------------------------------------------------------------- renamed flags
    ("renamed-bounds-n", ["bounds", M, "--n", "3"], "--n is not an option of certify bounds: use --count", 2),
    ("renamed-lp-n", ["lp", M, "--n", "3"], "use --count for the number of inputs", 2),
    ("renamed-smooth-n", ["smooth", M, "--n", "1000"], "use --samples for the Monte-Carlo sample count", 2),
    ("renamed-train-eval-n", ["train", "--eval-n", "5", "--out", "{d}/run12"], "use --eval-count", 2),
    ("renamed-train-n-smooth", ["train", "--n-smooth", "5", "--out", "{d}/run13"], "use --samples", 2),
    # ---------------------------------------------------------------- configuration files
    ("config-unknown-key", ["bounds", "--config", "{d}/unknown_key.yaml"], "unknown key 'epss' for certify bounds", 2),
    ("config-bad-value", ["bounds", M, "--config", "{d}/bad_value.yaml"], "key 'eps': must be >= 0, got nan", 2),
    ("config-old-key", ["bounds", M, "--config", "{d}/old_key.yaml"], "key 'n': use --count", 2),
    ("config-other-command", ["bounds", M, "--config", "{d}/other_command.yaml"], "is for certify train", 2),
    ("config-not-mapping", ["lp", M, "--config", "{d}/not_mapping.yaml"], "expected a mapping", 2),
    ("config-bad-toml", ["smooth", M, "--config", "{d}/bad.toml"], "not valid TOML", 2),
    ("config-unknown-format", ["check", M, "--config", "{d}/run.ini"], "unknown format", 2),
    ("config-missing", ["info", M, "--config", "{d}/none.yaml"], "does not exist", 2),
    ("config-directory", ["info", M, "--config", "{d}/outdir.yaml"], "does not exist", 2),
    ("config-print-unknown", ["bounds", "--config", "{d}/unknown_key.yaml", "--print-config"], "unknown key", 2),
    # ---------------------------------------------------------------- torch models
    ("class-missing-module", ["bounds", "no_such_module_here:Net", "--count", "1"], "cannot import module", 2),
    ("class-no-class", ["bounds", "torch.nn:NoSuchLayer", "--count", "1"], "has no torch.nn.Module subclass", 2),
    ("class-bad-json", ["bounds", "torch.nn:Linear", "--model-args", "[64,", "--count", "1"], "is not JSON", 2),
    ("class-bad-args", ["bounds", "torch.nn:Linear", "--model-args", '{{"width": 3}}', "--count", "1"],
     "unexpected keyword argument 'width'", 2),
    ("class-malicious-weights", ["bounds", "torch.nn:Linear", "--model-args", "[64, 10]", "--weights", "{d}/evil.pt",
                                 "--count", "1"], "never loads", 2),
    ("class-weights-missing", ["bounds", "torch.nn:Linear", "--model-args", "[64, 10]", "--weights", "{d}/no.pt",
                               "--count", "1"], "does not exist", 2),
    ("class-weights-misfit", ["info", "torch.nn:Linear", "--model-args", "[64, 10]", "--weights", "{d}/plain_state.pt",
                              "--input-shape", "64"], "does not fit model torch.nn:Linear", 2),
    ("class-no-shape", ["info", "torch.nn:Linear", "--model-args", "[64, 10]"], "needs the input shape", 2),
    ("class-shape-wrong", ["info", "torch.nn:Linear", "--model-args", "[64, 10]", "--input-shape", "3"],
     "weight of shape (10, 64) does not fit input shape (3,)", 2),
    ("weights-not-class", ["bounds", M, "--weights", "{d}/plain_state.pt"], "apply to a torch class model", 2),
    ("input-shape-zero", ["info", M, "--input-shape", "0"], "--input-shape: must be at least 1", 2),
    ("pt2-garbage", ["info", "{d}/garbage.pt2"], "not a torch.export archive", 2),
    ("pt2-malicious", ["bounds", "{d}/evil.pt2", "--count", "1"], "are not plain tensors", 2),
    # ---------------------------------------------------------------- norms and domains
    ("milp-norm-1", ["milp", M, "--count", "1", "--norm", "1"], "milp takes L-inf balls only, not --norm 1", 2),
    ("lp-norm-1", LP + ["--norm", "1"], "invalid choice: '1'", 2),
    ("bounds-norm-3", B + ["--norm", "3"], "invalid choice: '3'", 2),
    ("domain-and-no-domain", B + ["--domain", "0", "1", "--no-domain"], "exclude each other", 2),
    ("sdp-solver", ["sdp", M, "--count", "1", "--solver", "mosek"], "invalid choice: 'mosek'", 2),
]


def _snapshot(d: Path) -> dict:
    return {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != MARKER}


def test_battery_is_large_and_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 120 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("argv, needle, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(bad, argv, needle, code, capsys):
    before = _snapshot(bad)
    got = main(_d(argv, bad))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in out + err
    assert got == code, (got, err)
    assert len(lines) == 1, err
    assert needle.format(d=bad) in lines[0], lines[0]
    assert lines[0].startswith("certify")
    assert not (bad / MARKER).exists(), "a malicious file ran code"
    after = _snapshot(bad)
    assert {p: after.get(p) for p in before} == before, "a file that existed was changed"


def test_the_malicious_payloads_are_live(tmp_path):
    """The battery's payload does run code when unpickled plainly, so its 'no marker' check can fail."""
    data = pickle.dumps({b"data": _Evil(tmp_path / "live"), b"labels": [0]}, protocol=2)
    pickle.loads(data, encoding="bytes")
    assert (tmp_path / "live").exists()
