"""The emulated phone and its RPC processes fail clearly and leave nothing running.

Covers: qemu or the cross compiler missing, a port already taken, a server that dies while starting or
mid-session, registration with a tracker under a key, and ``tvm-pattern phone serve`` stopped by Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import torch
import tvm
from helpers.cnn_models import SmallCNN, export_onnx, library8, prune_model

from tvm_pattern.compiler import compile_file
from tvm_pattern.errors import RPCError, TvmPatternError
from tvm_pattern.phone import EmulatedPhone, arm64_sources
from tvm_pattern.rpc import Server, Tracker, free_port, tracker_servers, wait_for_servers


@pytest.fixture(scope="module")
def phone() -> EmulatedPhone:
    phone = EmulatedPhone()
    phone.setup()
    return phone


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def still_running(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still run (zombies waiting for a reaper do not)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def round_trip(remote) -> np.ndarray:
    """A tensor to the phone and back."""
    return tvm.runtime.tensor(np.arange(6, dtype=np.float32), remote.cpu()).numpy()


def test_qemu_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    phone = EmulatedPhone(tmp_path / "phone")
    with pytest.raises(RPCError, match="qemu-aarch64-static is not on PATH: install the Debian package qemu-user"):
        phone.setup()
    with pytest.raises(RPCError, match="qemu-user-static"):
        phone.server()
    assert list(tmp_path.iterdir()) == []


def test_arm64_sources_follow_the_host_apt_config(tmp_path):
    """The phone's apt sources: this machine's Debian release entries (one-line and deb822), arm64 only."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k/debian.gpg] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\ndeb http://other.example/x stable main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://third.example/apt\nSuites: bookworm\nComponents: extra\n"
    )
    assert arm64_sources(tmp_path, "bookworm").splitlines() == [
        "deb [arch=arm64 signed-by=/k/debian.gpg] http://mirror.example/debian bookworm main",
        "deb [arch=arm64] http://mirror.example/debian-security bookworm-security main",
        "deb [arch=arm64] http://mirror.example/debian-security bookworm-updates main",
    ]
    with pytest.raises(RPCError, match="no Debian apt source for release trixie"):
        arm64_sources(tmp_path, "trixie")


def test_cross_compiler_missing(monkeypatch, tmp_path):
    """compile_file for arm without aarch64-linux-gnu-g++ names it and its package, and writes nothing."""
    model = prune_model(SmallCNN(), library8())
    onnx = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "small.onnx")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    with pytest.raises(TvmPatternError, match=r"aarch64-linux-gnu-g\+\+, which is not on PATH.*package g\+\+-aarch64"):
        compile_file(onnx, "arm", out / "model.so")
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_phone_runs_aarch64_python_with_tvm(phone):
    result = phone.run("-c", "import platform, sys, tvm; print(platform.machine(), sys.executable, tvm.__version__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["aarch64", str(phone.python), "0.27.0.post1"]


@pytest.mark.slow
def test_port_in_use(phone):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = phone.server(port=port)
        with pytest.raises(RPCError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
        assert not server.alive and server.proc is None
        with pytest.raises(RPCError, match=f"port {port} on 127.0.0.1 is already in use"):
            Tracker(port=port).start()


def test_start_failure_shows_output():
    """A server whose Python dies while starting: the error carries the exit status and its last output."""
    server = Server(python=[sys.executable, "-c", "import sys; sys.exit('no TVM here: boom')"])
    with pytest.raises(RPCError, match=r"exited with status 1 while starting(?s:.*)no TVM here: boom"):
        server.start(timeout=60)
    assert server.proc is None and not server.alive


def test_tracker_unreachable():
    port = free_port()
    with pytest.raises(RPCError, match=f"RPC tracker at 127.0.0.1:{port} is unreachable"):
        wait_for_servers(("127.0.0.1", port), "phone", timeout=1)
    with pytest.raises(RPCError, match=f"RPC tracker at 127.0.0.1:{port} is unreachable"):
        Server(tracker=f"127.0.0.1:{port}").start()


@pytest.mark.slow
def test_server_ends_when_its_owner_is_killed():
    """A process that started a server dies without ``stop`` (SIGKILL, e.g. a notebook kernel shut down after
    a failed cell): the server notices within seconds and ends, nothing is left running."""
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from tvm_pattern.rpc import Server\n"
         "server = Server().start()\n"
         "print(server.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pid = int(owner.stdout.readline())
        pids = process_tree(pid)
        assert pids and still_running(pids) == pids
    finally:
        owner.kill()
        owner.wait(30)
    deadline = time.monotonic() + 30
    while still_running(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert still_running(pids) == []


@pytest.mark.slow
def test_server_dies_mid_session(phone):
    """The phone dies (every process of its server killed) with a session open: the next call says so."""
    server = phone.server().start()
    try:
        remote = server.connect()
        np.testing.assert_array_equal(round_trip(remote), np.arange(6))
        pids = process_tree(server.pid)
        assert len(pids) >= 2  # the server and the session's process
        os.killpg(server.pid, signal.SIGKILL)
        server.proc.wait(30)
        died = rf"RPC server on 127.0.0.1:{server.port} \(key 'phone'\) has died"
        with pytest.raises(RPCError, match=died), server.errors():
            round_trip(remote)
        del remote
    finally:
        server.stop()
    assert still_running(pids) == []


@pytest.mark.slow
def test_tracker_registration(phone):
    """A phone server registered under a key is listed by the tracker as soon as start() returns."""
    with Tracker() as tracker, phone.server(tracker=tracker.address, key="test-phone") as server:
        listed = tracker_servers(tracker.address)
        assert {"key": "server:test-phone", "addr": ["127.0.0.1", server.port]} in listed
        wait_for_servers(tracker.address, "test-phone", count=1, timeout=1)
        with pytest.raises(RPCError, match=r"0 server\(s\) under key 'other', expected 1"):
            wait_for_servers(tracker.address, "other", timeout=0.5)
        remote = server.connect()  # through the tracker: the server only accepts the tracker's match key
        np.testing.assert_array_equal(round_trip(remote), np.arange(6))
        del remote
        pids = process_tree(server.pid) + process_tree(tracker.pid)
    assert still_running(pids) == []
    with pytest.raises(RPCError, match="unreachable"):
        tracker_servers(tracker.address, timeout=1)


@pytest.mark.slow
def test_cli_serve_until_interrupted(phone):
    """`tvm-pattern phone serve --port N` serves until Ctrl-C, then stops its server and exits 0."""
    from tvm import rpc

    port = free_port()
    cli = subprocess.Popen(
        [sys.executable, "-m", "tvm_pattern", "phone", "serve", "--port", str(port), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("serving on" in line for line in lines):
            assert cli.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        remote = rpc.connect("127.0.0.1", port, key="phone")
        np.testing.assert_array_equal(round_trip(remote), np.arange(6))
        del remote
        pids = process_tree(cli.pid)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    reader.join(10)
    output = "".join(lines)
    assert f"serving on 127.0.0.1:{port} under key 'phone'" in output and "stopping" in output
    assert still_running(pids) == []
