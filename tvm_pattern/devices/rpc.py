"""TVM RPC trackers and servers as child processes: clear errors on start, nothing left running after stop.

Why not ``tvm.rpc.Tracker`` / ``tvm.rpc.Server`` or ``python -m tvm.exec.rpc_tracker|rpc_server``: they drift
to the next free port when the one asked for is taken, serve from a second Python that re-imports TVM, and
leave grandchildren behind when killed. Here each is one Python process running TVM's own tracker / server
state in its own session (so ``stop`` kills the whole process group, per-session processes included), bound to
exactly the port asked for, with its log in a file whose tail goes into every error. ``Server`` runs any
Python given as an argv prefix, e.g. the emulated aarch64 one of ``tvm_pattern.phone``.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import RPCError

__all__ = ["Server", "Tracker", "free_port", "port_in_use", "tracker_servers", "wait_for_servers"]

log = logging.getLogger(__name__)

_LIVE: set[_Process] = set()  # started and not yet stopped; stopped at interpreter exit


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick; another process may take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True if a TCP socket is bound to ``host:port`` (as TVM's servers bind: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _listening(host: str, port: int) -> bool:
    """True if a socket listens on ``host:port`` (read from the kernel: connecting would disturb a server)."""
    import psutil

    ips = (socket.gethostbyname(host), "0.0.0.0")
    for conn in psutil.net_connections(kind="tcp4"):
        address = conn.laddr
        if conn.status == psutil.CONN_LISTEN and address and address.port == port and address.ip in ips:
            return True
    return False


def _address(tracker: tuple[str, int] | str) -> tuple[str, int]:
    """``(host, port)`` from a tuple or ``"host:port"``."""
    if isinstance(tracker, str):
        host, sep, port = tracker.rpartition(":")
        if not sep or not port.isdigit():
            raise RPCError(f"tracker address {tracker!r} is not HOST:PORT")
        return host or "127.0.0.1", int(port)
    host, port = tracker
    return str(host), int(port)


def tracker_servers(tracker: tuple[str, int] | str, timeout: float = 5.0) -> list[dict]:
    """The servers registered with a tracker: ``[{"key": "server:KEY", "addr": [host, port]}, ...]``.

    Speaks the tracker protocol directly with a short timeout (``tvm.rpc.connect_tracker`` retries for a
    minute); raises ``RPCError`` naming the address if no tracker answers there.
    """
    from tvm.rpc import base

    address = _address(tracker)
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                raise RPCError(f"{address[0]}:{address[1]} is not a TVM RPC tracker")
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            code, summary = base.recvjson(sock)
    except (OSError, RuntimeError) as err:  # refused, timed out, or closed mid-answer
        raise RPCError(f"RPC tracker at {address[0]}:{address[1]} is unreachable: {err}") from err
    if code != base.TrackerCode.SUCCESS:
        raise RPCError(f"RPC tracker at {address[0]}:{address[1]} refused a summary request ({code})")
    return list(summary["server_info"])


def _count(servers: list[dict], key: str) -> int:
    return sum(1 for s in servers if s.get("key") == f"server:{key}")


def wait_for_servers(tracker: tuple[str, int] | str, key: str, count: int = 1, timeout: float = 60.0) -> None:
    """Block until at least ``count`` servers are registered under ``key`` (servers take seconds to register)."""
    deadline = time.monotonic() + timeout
    while True:
        servers = tracker_servers(tracker)
        if _count(servers, key) >= count:
            return
        if time.monotonic() > deadline:
            keys = sorted({s.get("key", "?") for s in servers}) or ["none"]
            raise RPCError(
                f"after {timeout:.0f} s the tracker at {':'.join(map(str, _address(tracker)))} has "
                f"{_count(servers, key)} server(s) under key {key!r}, expected {count} (registered: {', '.join(keys)})"
            )
        time.sleep(0.25)


# The body of ``python -m tvm.exec.rpc_tracker`` / ``rpc_server``, run in the child itself. Why not those
# modules: they serve from a second Python they start by re-executing ``sys.executable``, which imports TVM
# again (twice the start time, under emulation ~10 s more), and TVM's FFI imports PyTorch whenever it is
# installed (~8 s here), which RPC processes never use. Kept to the TVM runtime, so the phone can run it too.
_SERVE = """import os, sys
sys.modules["torch"] = None
import logging
logging.basicConfig(level=logging.INFO)
from tvm.rpc.{module} import {state}
thread = {state}({args}).thread
while thread.is_alive():
    thread.join(2.0)
    try:
        os.kill({owner}, 0)
    except ProcessLookupError:  # the process that started it is gone (e.g. a killed notebook kernel)
        os._exit(0)
sys.exit("the RPC loop ended")
"""


def _serve_args(module: str, state: str, **kwargs) -> list[str]:
    """``-c PROGRAM``: start ``tvm.rpc.<module>.<state>(**kwargs)`` and serve while this process lives.

    Why watch this process: ``stop`` and the atexit hook cannot run when it is killed (a notebook kernel shut
    down after a failed cell), and the server runs in its own session, so nothing else would end it.
    """
    args = ", ".join(f"{name}={value!r}" for name, value in kwargs.items())
    return ["-c", _SERVE.format(module=module, state=state, args=args, owner=os.getpid())]


class _Process:
    """A TVM RPC process (``_SERVE``) in its own session, logging to a temp file; base of Tracker and Server."""

    kind = "process"

    def __init__(self, host: str, port: int | None, python: list[str] | None, env: dict | None) -> None:
        self.host = host
        self.port = port
        self.python = list(python) if python else [sys.executable]
        self.env = dict(env) if env else None
        self.proc: subprocess.Popen | None = None
        self._log: Path | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self.port is None:
            raise RPCError(f"{self.kind} has no port before start()")
        return self.host, self.port

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _args(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _launch(self, timeout: float) -> None:
        """Start the child on a checked port, then wait for ``_ready``; on any failure stop it and raise."""
        if self.alive:
            raise RPCError(f"{self.kind} at {self.host}:{self.port} is already running")
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.host, self.port):
            raise RPCError(f"cannot start the {self.kind}: port {self.port} on {self.host} is already in use")
        fd, log_path = tempfile.mkstemp(prefix=f"tvm-pattern-{self.kind.replace(' ', '-')}-", suffix=".log")
        self._log = Path(log_path)
        env = {**os.environ, **(self.env or {})}
        with os.fdopen(fd, "wb") as log_file:
            self.proc = subprocess.Popen(
                [*self.python, *self._args()], stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        _LIVE.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready():
            if not self.alive:
                raise RPCError(
                    f"the {self.kind} on {self.host}:{self.port} exited with status {self.proc.returncode} while "
                    f"starting; its output ends with:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RPCError(
                    f"the {self.kind} on {self.host}:{self.port} was not ready after {timeout:.0f} s; "
                    f"its output ends with:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the child printed (stdout and stderr), for error messages."""
        if self._log is None or not self._log.exists():
            return "(no output)"
        text = self._log.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        """Kill the child's whole process group (and any descendant that left it), wait, remove the log."""
        _LIVE.discard(self)
        proc, self.proc = self.proc, None
        if proc is not None:
            _kill_tree(proc, timeout)
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    def __enter__(self):
        return self.start() if not self.alive else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30.0):
        raise NotImplementedError


def _kill_tree(proc: subprocess.Popen, timeout: float) -> None:
    """SIGKILL the process group led by ``proc`` plus any descendant found outside it, then reap them all."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the child's pid
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("process %d did not exit %.0f s after SIGKILL", proc.pid, timeout)
    psutil.wait_procs(descendants, timeout=timeout)


class Tracker(_Process):
    """``python -m tvm.exec.rpc_tracker`` on ``host:port`` (None: a free port); ready when it answers."""

    kind = "RPC tracker"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        super().__init__(host, port, None, {"TVM_USE_RUNTIME_LIB": "1"})  # no compiler needed: starts faster

    def _args(self) -> list[str]:
        return _serve_args("tracker", "PopenTrackerServerState", host=self.host, port=self.port,
                           port_end=self.port + 1)  # fmt: skip

    def _ready(self) -> bool:
        try:
            tracker_servers(self.address, timeout=1.0)
        except RPCError:
            return False
        return True

    def start(self, timeout: float = 30.0) -> Tracker:
        self._launch(timeout)
        return self


class Server(_Process):
    """``python -m tvm.exec.rpc_server`` on ``host:port``, registered under ``key`` if a tracker is given.

    ``python`` is the command prefix that runs Python (default: this interpreter), e.g. an emulator's wrapper;
    ``env`` is added to the environment. ``start`` returns once the server listens and, with a tracker, once
    the tracker lists it.
    """

    kind = "RPC server"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        tracker: tuple[str, int] | str | None = None,
        key: str = "local",
        python: list[str] | None = None,
        env: dict | None = None,
    ) -> None:
        super().__init__(host, port, python, env)
        self.tracker = _address(tracker) if tracker is not None else None
        self.key = key

    def _args(self) -> list[str]:
        return _serve_args("server", "PopenRPCServerState", host=self.host, port=self.port, port_end=self.port + 1,
                           tracker_addr=self.tracker, key=self.key)  # fmt: skip

    def _ready(self) -> bool:
        if not _listening(self.host, self.port):
            return False
        if self.tracker is None:
            return True
        servers = tracker_servers(self.tracker)
        return any(s.get("key") == f"server:{self.key}" and int(s["addr"][1]) == self.port for s in servers)

    def start(self, timeout: float = 60.0) -> Server:
        if self.tracker is not None:
            tracker_servers(self.tracker)  # fail now, naming the tracker, rather than time out later
        self._launch(timeout)
        return self

    def connect(self, session_timeout: float = 0):
        """A ``tvm.rpc.RPCSession`` on this server: through the tracker if registered with one (the server
        then only accepts the match key the tracker hands out), else directly."""
        from tvm import rpc

        if not self.alive:
            raise RPCError(f"the {self.kind} on {self.host}:{self.port} is not running")
        with self.errors():
            if self.tracker is not None:
                return rpc.connect_tracker(*self.tracker).request(self.key, session_timeout=session_timeout)
            return rpc.connect(self.host, self.port, key=self.key, session_timeout=session_timeout)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn a TVM error raised while talking to this server into an ``RPCError`` that says the server died.

        Why: a dead peer surfaces as a bare socket or ``RPCSessionTimeoutError`` message from the FFI.
        Errors raised while the server still runs pass through unchanged.
        """
        try:
            yield
        except Exception as err:
            if isinstance(err, RPCError) or self.alive:
                raise
            raise RPCError(
                f"the {self.kind} on {self.host}:{self.port} (key {self.key!r}) has died "
                f"(exit status {self._status()}): {err}"
            ) from err

    def _status(self) -> str:
        return "unknown" if self.proc is None or self.proc.returncode is None else str(self.proc.returncode)


@atexit.register
def _stop_all() -> None:
    """Nothing we started outlives this interpreter."""
    for process in list(_LIVE):
        process.stop()
