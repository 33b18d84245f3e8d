"""Tuning jobs: MetaSchedule + XGBoost over RPC (local servers, the emulated phone), the database they write,
resuming without measuring anything twice, devices and jobs that die, and compiling with the tuned kernels.

Small on purpose (a 3-conv net at 12x12, 4 trials per layer): what is checked is the machinery and the
numerics of the applied schedules, never speed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from helpers.cnn_models import export_onnx, library8, prune_weight, torch_out
from torch import nn

from tvm_pattern import cli
from tvm_pattern.compiler import compile_command, compile_file, cpu_pipeline, import_onnx, load
from tvm_pattern.errors import RPCError, TvmPatternError
from tvm_pattern.rpc import Server, Tracker, free_port
from tvm_pattern.targets import resolve_target
from tvm_pattern.transform import PatternSparseConv2d
from tvm_pattern.tune import (
    RECORD_FILE,
    WORKLOAD_FILE,
    extract_tasks,
    open_database,
    tune,
    tune_file,
    tuned_kernel,
)

TOL = {"atol": 1e-4, "rtol": 1e-4}
TRIALS = 4
# one batch per layer, small search; records adopted unconfirmed (kernels this small time alike: test_confirm.py)
SEARCH = {"trials_per_iter": TRIALS, "population": 32, "progress": False, "confirm": False}


class ThreeConv(nn.Module):
    """Three pruned 3x3 convs (+bias +ReLU); ``b`` and ``c`` have the same shapes and kept-kernel count, so
    their workloads are identical: one tuning task serves both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """(ONNX path, input, PyTorch's output) of the pruned ThreeConv."""
    torch.manual_seed(0)
    model = ThreeConv()
    with torch.no_grad():
        for conv in (model.a, model.b, model.c):
            conv.weight.copy_(torch.from_numpy(prune_weight(conv.weight.numpy(), library8(), keep=0.5)))
    model.eval()
    x = torch.randn(1, 4, 12, 12)
    path = export_onnx(model, x, tmp_path_factory.mktemp("net") / "net.onnx")
    return path, x, torch_out(model, x)


@pytest.fixture(scope="module")
def tracker():
    with Tracker() as tracker:
        yield tracker


def address(tracker: Tracker) -> str:
    return "{}:{}".format(*tracker.address)


@pytest.fixture(scope="module")
def tuned(net, tracker, tmp_path_factory):
    """The net tuned over RPC by two local servers under one key: (work dir, results, each server's log)."""
    work = tmp_path_factory.mktemp("tuned")
    with Server(tracker=tracker.address, key="pair") as one, Server(tracker=tracker.address, key="pair") as two:
        results = tune_file(net[0], "x86", work, TRIALS, address(tracker), "pair", echo=None, **SEARCH)
        logs = [one.log_tail(10_000), two.log_tail(10_000)]
    return work, results, logs


def lines(path: Path) -> list[dict]:
    """Every line of a MetaSchedule JSON database file, parsed (fails on a cut line)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def distinct_schedules(work: Path, task) -> tuple[int, int]:
    """(records of ``task``, distinct scheduled modules among them)."""
    database = open_database(work)
    workload = database.commit_workload(task.mod)
    mods = [r.as_measure_candidate().sch.mod for r in database.get_all_tuning_records() if r.workload.same_as(workload)]
    distinct: list = []
    for mod in mods:
        if not any(tvm_ffi.structural_equal(mod, other) for other in distinct):
            distinct.append(mod)
    return len(mods), len(distinct)


def test_extract_tasks_one_per_distinct_workload(net):
    """Three sparse convs, two of them identical workloads: two tasks, each with the real arrays of its layer."""
    tasks = extract_tasks(import_onnx(net[0]), "x86", library8())
    assert len(tasks) == 2
    assert [t.name.split("_")[3] for t in tasks] == ["1x4x12x12", "1x8x12x12"]
    for task in tasks:
        assert len(task.arrays) == 6 and task.arrays[-1].shape == (8,)  # FKW arrays, thread splits, then the bias


@pytest.mark.slow
def test_tune_over_rpc_on_two_servers(tuned):
    """Every layer got its trials, measured by both servers of the key; MetaSchedule's files parse line by line."""
    work, results, logs = tuned
    assert [(r.trials, r.measured) for r in results] == [(TRIALS, TRIALS)] * 2
    assert all(r.best_us is not None and r.best_us > 0 for r in results)
    assert all("load_module" in log for log in logs), "a server measured nothing"
    assert len(lines(work / WORKLOAD_FILE)) == 2
    records = lines(work / RECORD_FILE)
    assert len(records) == 2 * TRIALS
    assert all(min(record[1][1]) < 1 for record in records)  # run seconds of successful runs (failed: 1e10)


@pytest.mark.slow
def test_compile_with_database_equals_pytorch(net, tuned, tmp_path):
    """compile --db: every sparse layer gets its tuned kernel (the twin layers share one record); numerics hold."""
    path, x, expected = net
    echoed: list[str] = []
    out = compile_command(path, "x86", tmp_path / "net.so", echo=echoed.append, database=tuned[0])
    assert sum(line.endswith(", tuned") for line in echoed) == 3
    assert "3 with tuned kernels" in echoed[-1]
    np.testing.assert_allclose(load(out)(x.numpy()), expected, **TOL)
    assert np.abs(expected).max() > 1e-2


@pytest.mark.slow
def test_tuned_kernels_are_the_compiled_functions(net, tuned):
    """After the Relax pipeline (fusion included) each sparse conv is still its own PrimFunc, and it is the kernel
    of its task's best record: the sparse kernel is opaque, so what was measured is what runs."""
    target = resolve_target("x86")
    mod = import_onnx(net[0])
    database = open_database(tuned[0])
    kernels = [tuned_kernel(task, database, target) for task in extract_tasks(mod, target)]
    sparse = PatternSparseConv2d(target=target, dense_kernel=True, database=database)
    with target:
        lowered = cpu_pipeline(target)(sparse(mod))
    prims = [f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    compiled = [f for f in prims if int(f.attrs.get("op_pattern", 0)) == 8]
    assert len(sparse.summary) == 3 and all(r.tuned for r in sparse.summary)
    assert len(compiled) == 2  # layers b and c call one PrimFunc: their tuned kernels are identical

    def same(func, kernel) -> bool:
        return tvm_ffi.structural_equal(func.body, kernel.body, map_free_vars=True)

    assert [sum(same(f, k) for f in compiled) for k in kernels] == [1, 1]
    assert not any(same(f, k) for f in prims if f not in compiled for k in kernels)


@pytest.mark.slow
def test_resume_measures_nothing_twice(net, tuned, tmp_path):
    """Rerun with the same trials: nothing measured. Ask for more: only the difference, none a repeat."""
    work = tmp_path / "resume"
    shutil.copytree(tuned[0], work)
    before = len(lines(work / RECORD_FILE))
    again = tune_file(net[0], "x86", work, TRIALS, echo=None, **SEARCH)
    assert [(r.trials, r.measured) for r in again] == [(TRIALS, 0)] * 2
    assert len(lines(work / RECORD_FILE)) == before
    more = tune_file(net[0], "x86", work, TRIALS + 2, echo=None, **SEARCH)
    assert [(r.trials, r.measured) for r in more] == [(TRIALS + 2, 2)] * 2
    for task in extract_tasks(import_onnx(net[0]), "x86"):
        assert distinct_schedules(work, task) == (TRIALS + 2, TRIALS + 2)


@pytest.mark.slow
def test_server_killed_mid_job(net, tracker, tmp_path):
    """The only server dies during a job: it stops with a clear RPCError, keeps what was measured, and the
    database compiles; a rerun would continue."""
    path, x, expected = net
    work = tmp_path / "killed"
    tasks = extract_tasks(import_onnx(path), "x86")[:1]
    server = Server(tracker=tracker.address, key="dying").start()
    records = work / RECORD_FILE

    def kill_after_first_batch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (records.exists() and len(records.read_text().splitlines()) >= 2):
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_batch, daemon=True)
    killer.start()
    try:
        with pytest.raises(RPCError, match=r"no RPC server is left under key 'dying'.*run the same command again"):
            tune(tasks, "x86", work, 10, address(tracker), "dying", trials_per_iter=2, population=16, progress=False)
    finally:
        killer.join(10)
        server.stop()
    kept = lines(records)
    assert 2 <= len(kept) < 10
    assert all(min(record[1][1]) < 1 for record in kept)  # runs lost with the server are not recorded as failures
    reports: list = []
    out = compile_file(path, "x86", tmp_path / "net.so", reports=reports, database=work)
    assert reports[0].tuned and not reports[1].tuned
    np.testing.assert_allclose(load(out)(x.numpy()), expected, **TOL)


def test_unreachable_tracker_or_no_server(net, tracker):
    """No tracker at the address: a clear RPCError at once. A tracker without servers for the key: after the wait."""
    tasks = extract_tasks(import_onnx(net[0]), "x86")[:1]
    port = free_port()
    started = time.monotonic()
    with pytest.raises(RPCError, match=f"RPC tracker at 127.0.0.1:{port} is unreachable"):
        tune(tasks, "x86", Path("/nonexistent-not-created"), 2, f"127.0.0.1:{port}", "any", wait_servers=5)
    assert time.monotonic() - started < 20
    with pytest.raises(RPCError, match=r"0 server\(s\) under key 'nobody'"):
        tune(tasks, "x86", Path("/nonexistent-not-created"), 2, address(tracker), "nobody", wait_servers=2)
    with pytest.raises(TvmPatternError, match="--key"):
        tune(tasks, "x86", Path("/nonexistent-not-created"), 2, address(tracker), None)


@pytest.mark.slow
def test_killed_tuning_process_keeps_its_records(net, tmp_path):
    """SIGKILL a tuning job mid-run: every record written so far parses, and the database compiles."""
    path, x, expected = net
    work = tmp_path / "job"
    script = (
        "from tvm_pattern.tune import tune_file\n"
        f"tune_file({str(path)!r}, 'x86', {str(work)!r}, 12, echo=None, trials_per_iter=2, population=16,"
        " progress=False)\n"
    )
    log = tmp_path / "job.log"
    with log.open("wb") as out:
        job = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=out, stderr=out)
    records = work / RECORD_FILE
    try:
        deadline = time.monotonic() + 300
        while not (records.exists() and len(records.read_text().splitlines()) >= 2):
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no record after 300 s"
            time.sleep(0.1)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    open_database(work)  # drops a last line cut by the kill, if the kill hit a write (logged)
    kept = lines(records)
    assert 2 <= len(kept) < 24 and lines(work / WORKLOAD_FILE)
    out = compile_file(path, "x86", tmp_path / "net.so", database=work)
    np.testing.assert_allclose(load(out)(x.numpy()), expected, **TOL)


@pytest.mark.slow
def test_open_database_repairs_a_cut_line(tuned, tmp_path):
    """A record cut short by a kill mid-write is dropped; a missing database is a clear error."""
    work = tmp_path / "cut"
    shutil.copytree(tuned[0], work)
    with (work / RECORD_FILE).open("a") as f:
        f.write('[0, [["Sch')
    assert len(open_database(work).get_all_tuning_records()) == 2 * TRIALS
    assert len(lines(work / RECORD_FILE)) == 2 * TRIALS
    with pytest.raises(TvmPatternError, match="holds no tuning database"):
        open_database(tmp_path / "missing")


@pytest.mark.slow
def test_cli_tune_and_compile(net, tuned, tmp_path, capsys):
    """`tvm-pattern tune` continues a database (nothing left to measure here), `compile --db` uses it."""
    path, x, expected = net
    work = tmp_path / "cli"
    shutil.copytree(tuned[0], work)
    assert cli.main(["tune", str(path), "--trials", str(TRIALS), "--work-dir", str(work), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 distinct pattern-sparse layer(s)" in out and out.count(f"{TRIALS} trials (0 new") == 2
    assert cli.main(["compile", str(path), "--out", str(tmp_path / "net.so"), "--db", str(work)]) == 0
    assert "3 with tuned kernels" in capsys.readouterr().out
    np.testing.assert_allclose(load(tmp_path / "net.so")(x.numpy()), expected, **TOL)
    assert cli.main(["compile", str(path), "--out", str(tmp_path / "x.so"), "--db", str(tmp_path / "none")]) == 2
    assert "holds no tuning database" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_on_emulated_phone(net, tracker, tmp_path, monkeypatch):
    """Tune for the Arm target on the emulated aarch64 phone over RPC, compile with the database, run the library
    on the phone: equal to PyTorch (emulated times mean nothing; the applied schedules must be right)."""
    from tvm import relax

    from tvm_pattern.phone import EmulatedPhone

    monkeypatch.delenv("TVM_NDK_CC", raising=False)  # the phone runs glibc: Debian's cross linker
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    path, x, expected = net
    phone = EmulatedPhone()
    phone.setup()
    work = tmp_path / "phone"
    with phone.server(tracker=tracker.address, key="phone-tune") as server:
        results = tune_file(path, "arm", work, 2, address(tracker), "phone-tune", echo=None, trials_per_iter=2,
                            population=16, timeout=120, progress=False, confirm=False)  # fmt: skip
        assert [(r.trials, r.measured) for r in results] == [(2, 2)] * 2
        assert all(r.best_us is not None for r in results)
        reports: list = []
        lib = compile_file(path, "arm", tmp_path / "net_arm.so", reports=reports, database=work)
        assert [r.tuned for r in reports] == [True] * 3
        remote = server.connect()
        remote.upload(str(lib))
        dev = remote.cpu()
        with server.errors():
            vm = relax.VirtualMachine(remote.load_module(lib.name), dev)
            got = vm["main"](tvm.runtime.tensor(x.numpy(), dev)).numpy()
        del vm, remote
    np.testing.assert_allclose(got, expected, **TOL)
