"""Runs on a real Dask cluster on 127.0.0.1: a scheduler and two worker processes started here as
separate processes (one offering a GPU resource), the commands run as separate driver processes
with --cluster. Distributed records must equal local ones (all but timing), every input must be
recorded exactly once when a worker or the driver is killed with SIGKILL mid-run, a failing task
must become unknown records, and nothing binds or talks beyond 127.0.0.1. Every process started
here is killed at the end."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from certify.cli.main import main  # noqa: E402
from certify.errors import CertifyError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
SMOOTH = ["smooth", "digits-cnn", "--count", "12", "--samples", "100000", "--sigma", "0.25"]
BOUNDS = ["bounds", "digits-cnn", "--count", "40", "--batch", "8", "--eps", "0.01", "--quiet"]


def wait_for(cond, timeout: float, what: str, step: float = 0.2):
    """Poll ``cond()`` until it returns something true; fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def kill_group(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV, cwd=log.parent,
                            start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, a client of this process): a scheduler and two workers of one thread,
    the second offering GPU=1, all on 127.0.0.1."""
    d = tmp_path_factory.mktemp("cluster")
    procs = []
    client = None
    try:
        address = start_scheduler(d, procs)
        for k, extra in enumerate(([], ["--resources", "GPU=1"])):
            start_worker(d, procs, address, f"w{k}", extra)
        client = distributed.Client(address, timeout=30)
        client.wait_for_workers(2, timeout=120)
        yield address, client
    finally:
        if client is not None:
            client.close(timeout=30)
        for p in procs:
            kill_group(p)


def start_scheduler(d: Path, procs: list) -> str:
    """Start a scheduler on 127.0.0.1 (appended to ``procs``); its address."""
    sfile = d / "scheduler.json"
    procs.append(start([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sfile)],
                       d / "scheduler.log"))
    wait_for(lambda: sfile.exists() and sfile.stat().st_size > 0, 60, "the scheduler file")
    address = wait_for(lambda: json.loads(sfile.read_text()).get("address"), 10, "the scheduler address")
    assert address.startswith("tcp://127.0.0.1:")
    return address


def start_worker(d: Path, procs: list, address: str, name: str, extra: list[str]) -> None:
    """Start a worker of one thread on 127.0.0.1 (appended to ``procs``)."""
    procs.append(start([sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1", "--no-dashboard",
                        "--dashboard-address", "127.0.0.1:0", "--nthreads", "1", "--nworkers", "1", "--name", name]
                       + extra, d / f"{name}.log"))


def read(path: Path) -> tuple[dict, list[dict]]:
    header, recs = None, []
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        if "provenance" in d:
            header = d["provenance"]
        else:
            recs.append(d)
    return header, recs


def by_idx(recs: list[dict]) -> dict[int, dict]:
    """Records keyed by input, timing dropped; every input must appear exactly once."""
    idx = [r["idx"] for r in recs]
    assert len(idx) == len(set(idx)), f"an input recorded twice: {sorted(idx)}"
    return {r["idx"]: {k: v for k, v in r.items() if k != "seconds"} for r in recs}


def certify_proc(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "certify"] + args, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def local_smooth(tmp_path_factory) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("local") / "smooth.jsonl"
    assert main(SMOOTH + ["--out", str(out)]) == 0
    return by_idx(read(out)[1])


def test_cluster_flags_are_checked(tmp_path, capsys):
    for bad in ("localhost:1", "local:0", "tcp://127.0.0.1", "http://127.0.0.1:8786"):
        assert main(BOUNDS + ["--cluster", bad, "--out", str(tmp_path / "r.jsonl")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--cluster expects local:N" in err and bad in err
    assert main(BOUNDS + ["--task-timeout", "5"]) == 2
    assert "--task-timeout applies to --cluster" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()
    from certify.cluster import connect
    with socket.socket() as s:              # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(CertifyError, match="no Dask scheduler answered within 2 s"):
        with connect(f"tcp://127.0.0.1:{port}", timeout=2):
            pass
    assert time.monotonic() - t0 < 30


def test_workers_get_absolute_paths_and_the_model_hash(tmp_path, monkeypatch):
    import argparse
    import shutil

    from certify.cli.common import cluster_job
    from certify.models import BUNDLED
    from certify.report.provenance import file_sha256
    monkeypatch.chdir(tmp_path)
    shutil.copy(BUNDLED["digits-cnn"], "m.pt")
    (tmp_path / "digits").mkdir()           # a folder named like the built-in set is not the set
    (tmp_path / "d").mkdir()
    args = argparse.Namespace(model="m.pt", data="digits", data_dir="d", command="bounds")
    job = cluster_job(args)
    assert (job.model, job.data, job.data_dir) == (str(tmp_path / "m.pt"), "digits", str(tmp_path / "d"))
    assert job._model_sha256 == file_sha256("m.pt") and args.model == "m.pt"
    assert cluster_job(args)._token != job._token
    job = cluster_job(argparse.Namespace(model="digits-cnn", data="mnist", data_dir=None, command="bounds"))
    assert (job.model, job.data) == ("digits-cnn", "mnist")


def test_bounds_on_cluster_equals_local(cluster, tmp_path):
    address, _ = cluster
    assert main(BOUNDS + ["--out", str(tmp_path / "local.jsonl")]) == 0
    assert main(BOUNDS + ["--out", str(tmp_path / "cluster.jsonl"), "--cluster", address]) == 0
    h1, local = read(tmp_path / "local.jsonl")
    h2, dist = read(tmp_path / "cluster.jsonl")
    assert len(local) == 40 and by_idx(dist) == by_idx(local)
    assert h1["config"] == h2["config"] and h1["model_sha256"] == h2["model_sha256"]
    assert sum(r["verdict"] == "certified" for r in dist) > 0


def test_smooth_on_cluster_equals_local(cluster, local_smooth, tmp_path):
    address, _ = cluster
    out = tmp_path / "cluster.jsonl"
    assert main(SMOOTH + ["--out", str(out), "--cluster", address]) == 0
    assert by_idx(read(out)[1]) == local_smooth
    # --resume skips what a cluster run finished, also in a local run
    assert main(SMOOTH + ["--out", str(out), "--resume"]) == 0
    assert by_idx(read(out)[1]) == local_smooth


def test_failing_task_becomes_unknown(cluster, tmp_path, monkeypatch, capsys):
    """A task that raises on every try: its inputs become unknown records naming the error
    (tried twice), never certified; the other tasks' records equal a local run's."""
    import certify.cli.bounds as cli_bounds
    address, _ = cluster
    assert main(BOUNDS + ["--out", str(tmp_path / "local.jsonl")]) == 0
    tries = tmp_path / "tries.txt"
    original = cli_bounds.bounds_chunk

    def chunk(ctx, sel):
        if 9 in [ctx.idx[k] for k in sel]:
            with open(tries, "a") as f:
                f.write("x\n")
            raise RuntimeError("solver crashed on input 9")
        return original(ctx, sel)

    monkeypatch.setattr(cli_bounds, "bounds_chunk", chunk)     # a local function: pickled by value
    assert main(BOUNDS + ["--out", str(tmp_path / "cluster.jsonl"), "--cluster", address]) == 0
    assert "recorded as unknown" in capsys.readouterr().err
    assert tries.read_text().count("x") == 2
    local = by_idx(read(tmp_path / "local.jsonl")[1])
    dist = by_idx(read(tmp_path / "cluster.jsonl")[1])
    assert set(dist) == set(local)
    failed = {i for i, r in dist.items() if r["verdict"] == "unknown"}
    assert failed == set(range(8, 16))            # the batch of --batch 8 holding input 9
    for i in failed:
        assert dist[i]["predict"] == -1 and "RuntimeError: solver crashed on input 9" in dist[i]["evidence"]["error"]
        assert dist[i]["correct"] is False
    assert all(dist[i] == local[i] for i in set(local) - failed)


def test_gpu_runs_ask_for_the_gpu_resource(cluster):
    from certify.cluster import run_units, task_resources
    _, client = cluster
    assert task_resources("cpu") is None and task_resources("cuda:1") == {"GPU": 1}
    got = {}

    def worker_name(u):          # a local function: pickled by value (workers cannot import this module)
        from distributed import get_worker
        return u, get_worker().name

    run_units(list(range(6)), worker_name, client, lambda u, r: got.__setitem__(u, r[1]), device="cuda")
    assert sorted(got) == list(range(6)) and set(got.values()) == {"w1"}


def test_worker_killed_mid_run(cluster, local_smooth, tmp_path):
    """SIGKILL of a worker process while it runs a task: the task runs again, every input is
    recorded once, records equal a local run's."""
    address, client = cluster
    out = tmp_path / "k.jsonl"
    p = start([sys.executable, "-m", "certify", "--threads", "1"] + SMOOTH + ["--out", str(out), "--cluster", address],
              tmp_path / "driver.log")
    try:
        wait_for(lambda: out.exists() and len(read(out)[1]) >= 1, 120, "a first record", step=0.05)
        busy = wait_for(lambda: [w for w, keys in client.processing().items() if keys], 60, "a busy worker",
                        step=0.05)
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        assert p.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()
    finally:
        kill_group(p)
    assert by_idx(read(out)[1]) == local_smooth


def test_driver_killed_then_resumed(cluster, local_smooth, tmp_path):
    """SIGKILL of the driver mid-run, then --resume against the same cluster: 0 lost, 0
    duplicated, the first run's records kept as they were."""
    address, _ = cluster
    out = tmp_path / "d.jsonl"
    cmd = [sys.executable, "-m", "certify", "--threads", "1"] + SMOOTH + ["--out", str(out), "--cluster", address]
    p = start(cmd, tmp_path / "driver.log")
    try:
        wait_for(lambda: out.exists() and len(read(out)[1]) >= 1, 120, "a first record", step=0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        kill_group(p)
    before = read(out)[1]
    assert by_idx(before) == {i: local_smooth[i] for i in by_idx(before)}   # and those as a local run writes them
    r = certify_proc(cmd[3:] + ["--resume"])
    assert r.returncode == 0, r.stderr
    after = read(out)[1]
    assert after[:len(before)] == before
    assert by_idx(after) == local_smooth


def test_vnncomp_on_cluster(cluster, shared_dir, tmp_path, capsys):
    address, _ = cluster
    out = tmp_path / "v.csv"
    assert main(["vnncomp", str(shared_dir / "vnncomp/test"), "--ground-truth",
                 str(shared_dir / "vnncomp/ground_truth.csv"), "--out", str(out), "--cluster", address]) == 0
    stdout = capsys.readouterr().out
    assert "solved 5 (sat 1, unsat 4)" in stdout and "WRONG 0" in stdout and "score 50" in stdout
    import csv
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 5 and all(row["correct"] == "yes" for row in rows)


def test_run_units_retries_timeouts_and_local_cluster(tmp_path):
    """On a local:2 cluster: a unit that fails once succeeds on its retry, one that always fails
    is reported after two tries, one past its timeout is given up (its worker restarted), each
    unit is delivered exactly once."""
    from certify.cluster import connect, run_units

    def fn(u):
        marker = tmp_path / f"try-{u}"
        with open(marker, "a") as f:
            f.write("x")
        if u == 1:
            time.sleep(120)
        if u == 2 and marker.read_text() == "x":
            raise ValueError("first try of 2")
        if u == 3:
            raise ValueError("always 3")
        return u * u

    results, failures = {}, {}
    with connect("local:2") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert all(w.startswith("tcp://127.0.0.1:") for w in workers)
        pids = set(client.run(os.getpid).values())
        t0 = time.monotonic()
        run_units(list(range(6)), fn, client, lambda u, r: results.__setitem__(u, r),
                  lambda u, m: failures.__setitem__(u, m), timeout=lambda u: 3.0 if u == 1 else None)
        assert time.monotonic() - t0 < 60
        # the worker of the abandoned unit was ended and its nanny started a new process
        wait_for(lambda: set(client.run(os.getpid, on_error="ignore").values()) - pids, 60, "a restarted worker")
    assert results == {0: 0, 2: 4, 4: 16, 5: 25}
    assert set(failures) == {1, 3}
    assert failures[1].startswith("timed out: still running after 3 s")
    assert failures[3] == "ValueError: always 3"
    assert (tmp_path / "try-3").read_text() == "xx" and (tmp_path / "try-2").read_text() == "xx"


def test_lost_scheduler_is_an_error_not_a_hang(tmp_path):
    """The scheduler killed mid-run: run_units stops with a CertifyError within seconds, the
    results that arrived before delivered once."""
    from certify.cluster import connect, run_units
    procs = []
    try:
        address = start_scheduler(tmp_path, procs)
        start_worker(tmp_path, procs, address, "w", [])
        got = []

        def slow(u):
            time.sleep(1.0)
            return u

        def on_result(u, r):
            got.append(u)
            if len(got) == 2:
                os.killpg(procs[0].pid, signal.SIGKILL)

        with connect(address) as client:
            t0 = time.monotonic()
            with pytest.raises(CertifyError, match="--cluster: lost the scheduler.*rerun with --resume"):
                run_units(list(range(8)), slow, client, on_result)
            assert time.monotonic() - t0 < 120
        assert len(got) == len(set(got)) >= 2
    finally:
        for p in procs:
            kill_group(p)
