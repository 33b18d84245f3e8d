"""An emulated aarch64 "phone": Debian's arm64 Python and TVM's aarch64 wheels under qemu-user, serving TVM RPC.

Why: ARM code must run to be tested, and no phone is at hand. ``EmulatedPhone.setup`` builds a root file
system without root rights, debootstrap or binfmt (see /work/shared/notes/emulated-devices.md):

- Debian's arm64 ``python3.11`` and ``libstdc++6`` with their dependencies, downloaded by apt with a private
  configuration (arm64 lists of this machine's Debian sources, an empty dpkg status) and unpacked by ``dpkg -x``;
- TVM's runtime and the Python packages the RPC server imports, as manylinux_2_28_aarch64 wheels from PyPI,
  installed with ``pip --target`` (TVM's compiler library is dropped: the phone only runs code);
- a wrapper script ``python`` that runs that interpreter under ``qemu-aarch64-static -L ROOTFS`` and is its
  ``sys.executable`` (whatever re-executes Python on the phone, e.g. TVM's ``tvm.exec.rpc_server``, works
  only through it without binfmt).

Times under emulation say nothing about a phone: use it for correctness only.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import RPCError
from . import rpc

__all__ = ["DEBIAN_PACKAGES", "WHEELS", "EmulatedPhone", "PhoneServer", "default_root", "qemu", "serve"]

DEBIAN_PACKAGES = ("python3.11", "libstdc++6")
# aarch64 wheels, pinned: the versions this project is tested with on the host (apache-tvm-ffi 0.1.15 segfaults)
WHEELS = {
    "apache-tvm": "0.27.0.post1",
    "apache-tvm-ffi": "0.1.14.post1",
    "numpy": "2.4.6",
    "ml_dtypes": "0.6.0",
    "typing_extensions": "4.16.0",
    "tornado": "6.6.1",
    "psutil": "7.2.2",
    "cloudpickle": "3.1.3",
}
PLATFORM = ("--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", "--only-binary=:all:")
QEMU = "qemu-aarch64-static"
STAMP_FORMAT = 1  # bump when the layout of the root file system changes
CACHE_ENV = "TVM_PATTERN_CACHE"  # same variable as tvm_pattern.checkpoints (not imported: it pulls in torch)


def default_root() -> Path:
    """``$TVM_PATTERN_CACHE/phone``, else ``~/.cache/tvm-pattern/phone``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tvm-pattern") / "phone"


def qemu() -> str:
    """The qemu-user binary, or an ``RPCError`` naming the Debian package."""
    path = shutil.which(QEMU)
    if path is None:
        raise RPCError(f"{QEMU} is not on PATH: install the Debian package qemu-user-static")
    return path


def _stamp() -> dict:
    return {"format": STAMP_FORMAT, "debian": list(DEBIAN_PACKAGES), "wheels": WHEELS}


class PhoneServer(rpc.Server):
    """An ``rpc.Server`` on the emulated phone; a longer start timeout (TVM imports slowly under emulation)."""

    def start(self, timeout: float = 300.0) -> PhoneServer:
        super().start(timeout)
        return self


class EmulatedPhone:
    """An aarch64 Linux userland under qemu-user that runs TVM's RPC server.

    ``phone.setup()`` builds it once (cached under ``root``); ``with phone.server() as server:`` runs an RPC
    server on it, ``server.connect()`` gives a ``tvm.rpc.RPCSession``.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    @property
    def python(self) -> Path:
        """The wrapper that runs the phone's Python 3.11 (use it as an argv prefix)."""
        return self.root / "python"

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    def is_ready(self) -> bool:
        """True if a complete root file system with the current pinned versions is in place."""
        stamp = self.root / "stamp.json"
        try:
            return json.loads(stamp.read_text()) == _stamp() and self.python.is_file()
        except (OSError, ValueError):
            return False

    def setup(self, progress: bool = True) -> Path:
        """Build the root file system unless an up-to-date one exists; returns ``root``.

        Built in a temporary folder next to ``root`` and renamed into place, under a lock file, so an
        interrupted or concurrent setup never leaves a half-built phone. Downloads about 110 MB.
        """
        qemu()
        if self.is_ready():
            return self.root
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.root.parent / f".{self.root.name}.lock"):
            if self.is_ready():  # built by another process while we waited
                return self.root
            say = _reporter(progress)
            started = time.monotonic()
            for pattern in (f".{self.root.name}.*.tmp", f".{self.root.name}.*.old"):  # left by a killed setup
                for stale in self.root.parent.glob(pattern):
                    shutil.rmtree(stale, ignore_errors=True)
            tmp = self.root.parent / f".{self.root.name}.{os.getpid()}.tmp"
            try:
                _build(tmp, say)
                _replace_dir(tmp, self.root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            say(f"ready in {time.monotonic() - started:.0f} s: {self.root}")
        return self.root

    def server(self, port: int | None = None, tracker: tuple[str, int] | str | None = None,
               key: str = "phone") -> PhoneServer:
        """An RPC server on the phone (not started: ``with phone.server() as s`` or ``.start()``)."""
        qemu()
        if not self.is_ready():
            raise RPCError(f"the emulated phone in {self.root} is not set up: run `tvm-pattern phone setup`")
        return PhoneServer("127.0.0.1", port, tracker, key, python=[str(self.python)])

    def run(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """Run the phone's Python with ``args`` (e.g. ``"-c", "import tvm"``); output captured as text."""
        return subprocess.run([str(self.python), *args], capture_output=True, text=True, timeout=timeout,
                              check=False)  # fmt: skip


def _reporter(progress: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if progress:
            print(f"phone setup: {message}", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the duration (released when the process dies, too)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``; a stale ``dest`` is moved aside first and removed after."""
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _build(tmp: Path, say: Callable[[str], None]) -> None:
    """Everything ``setup`` does, inside ``tmp``: debs, wheels, wrapper, a check, the stamp last."""
    rootfs = tmp / "rootfs"
    rootfs.mkdir(parents=True)
    debs = _download_debs(tmp / "apt", say)
    say(f"unpacking {len(debs)} Debian packages")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(rootfs)], f"unpacking {deb.name}")
    shutil.rmtree(tmp / "apt")
    wheels = _download_wheels(tmp / "wheels", say)
    site = rootfs / "usr" / "lib" / "python3" / "dist-packages"
    say(f"installing {len(wheels)} wheels into the phone's Python")
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
          *PLATFORM, *map(str, wheels)], "pip install --target (aarch64 wheels)")  # fmt: skip
    shutil.rmtree(tmp / "wheels")
    (site / "tvm" / "lib" / "libtvm_compiler.so").unlink(missing_ok=True)  # 250 MB the phone never loads
    # qemu -L falls back to the host's files for paths missing in the rootfs: keep Python off the host's packages
    (rootfs / "usr" / "local" / "lib" / "python3.11" / "dist-packages").mkdir(parents=True, exist_ok=True)
    _write_wrapper(tmp / "python")
    say("checking the phone's Python imports TVM (under emulation)")
    check = EmulatedPhone(tmp).run("-c", "import tvm, numpy; print(tvm.__version__)", timeout=600)
    if check.returncode != 0 or WHEELS["apache-tvm"].split(".post")[0] not in check.stdout:
        raise RPCError(f"the emulated phone's Python cannot import tvm:\n{(check.stdout + check.stderr)[-2000:]}")
    (tmp / "stamp.json").write_text(json.dumps(_stamp(), indent=1))


WRAPPER = """#!/bin/sh
# aarch64 Python 3.11 under qemu-user, written by tvm_pattern.phone. sys.executable is this script, so the
# TVM RPC server can re-execute it for its workers (no binfmt registration needed).
here=$(dirname "$(readlink -f "$0")")
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP LD_LIBRARY_PATH LD_PRELOAD VIRTUAL_ENV
export PYTHONNOUSERSITE=1 TVM_USE_RUNTIME_LIB=1
exec {qemu} -L "$here/rootfs" -0 "$here/python" "$here/rootfs/usr/bin/python3.11" "$@"
"""


def _write_wrapper(path: Path) -> None:
    path.write_text(WRAPPER.format(qemu=qemu()))
    path.chmod(0o755)


def _run(cmd: list[str], what: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a setup command; on failure an ``RPCError`` saying what failed and how it ended."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError as err:
        raise RPCError(f"{what}: {cmd[0]} is not installed") from err
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RPCError(f"{what} failed (exit status {result.returncode}):\n{tail}")
    return result


def _download_debs(apt_dir: Path, say: Callable[[str], None]) -> list[Path]:
    """Download ``DEBIAN_PACKAGES`` and their dependencies for arm64 with a private apt configuration.

    The host's dpkg is untouched (no ``--add-architecture``): the lists, the empty status file and the
    archive cache all live in ``apt_dir``.
    """
    for sub in ("lists/partial", "archives/partial", "sources.list.d", "preferences.d"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(arm64_sources())
    (apt_dir / "status").write_text("")
    options = {
        "APT::Architecture": "arm64",
        "APT::Architectures": "arm64",
        "APT::Sandbox::User": getpass.getuser(),
        "Dir::Etc::SourceList": apt_dir / "sources.list",
        "Dir::Etc::SourceParts": apt_dir / "sources.list.d",
        "Dir::Etc::Preferences": apt_dir / "preferences",
        "Dir::Etc::PreferencesParts": apt_dir / "preferences.d",
        "Dir::State": apt_dir,
        "Dir::State::Lists": apt_dir / "lists",
        "Dir::State::status": apt_dir / "status",
        "Dir::Cache": apt_dir,
        "Dir::Cache::Archives": apt_dir / "archives",
    }
    apt = ["apt-get", "-q", *[arg for k, v in options.items() for arg in ("-o", f"{k}={v}")]]
    say("apt-get update (arm64 package lists, private configuration)")
    _run([*apt, "update"], "apt-get update for arm64")
    say(f"downloading {' '.join(DEBIAN_PACKAGES)} and dependencies for arm64")
    try:
        _run([*apt, "install", "-y", "--download-only", "--no-install-recommends", *DEBIAN_PACKAGES],
             "apt-get install --download-only")  # fmt: skip
    except RPCError as err:
        raise RPCError(f"downloading the arm64 Debian packages {', '.join(DEBIAN_PACKAGES)}: {err}") from err
    debs = sorted((apt_dir / "archives").glob("*.deb"))
    if not debs:
        raise RPCError(f"apt downloaded no arm64 package for {', '.join(DEBIAN_PACKAGES)}")
    return debs


def arm64_sources(etc: Path = Path("/etc/apt"), codename: str | None = None) -> str:
    """This machine's Debian sources (its release, -updates, -security), as one-line entries for arm64.

    Why the host's: they name the mirror this machine may reach; arm64 is served from the same archives.
    """
    codename = codename if codename is not None else _os_release().get("VERSION_CODENAME", "")
    suites = {codename, f"{codename}-updates", f"{codename}-security"}
    entries = []
    for uri, suite, signed_by in _host_sources(etc):
        if suite in suites:
            options = "arch=arm64" + (f" signed-by={signed_by}" if signed_by else "")
            entries.append(f"deb [{options}] {uri} {suite} main\n")
    if not codename or not entries:
        raise RPCError(f"found no Debian apt source for release {codename or '?'} in /etc/apt: the phone needs "
                       "Debian's arm64 packages (python3.11, libstdc++6)")  # fmt: skip
    return "".join(dict.fromkeys(entries))


def _os_release() -> dict[str, str]:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {k: v.strip().strip('"') for k, v in pairs}


_ONE_LINE = re.compile(r"deb\s+(?:\[(?P<options>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)\s+(?P<components>.+)")


def _host_sources(etc: Path) -> Iterator[tuple[str, str, str]]:
    """(URI, suite, Signed-By) of every ``deb`` entry with component main in the apt sources under ``etc``."""
    one_line = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in filter(Path.is_file, one_line):
        for line in path.read_text().splitlines():
            match = _ONE_LINE.match(line.split("#", 1)[0].strip())
            if match and "main" in match["components"].split():
                options = dict(o.split("=", 1) for o in (match["options"] or "").split() if "=" in o)
                yield match["uri"], match["suite"], options.get("signed-by", "")
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for block in path.read_text().split("\n\n"):
            fields = _deb822(block)
            if "deb" in fields.get("Types", "").split() and "main" in fields.get("Components", "").split() \
                    and fields.get("Enabled", "yes") != "no":
                for uri in fields.get("URIs", "").split():
                    for suite in fields.get("Suites", "").split():
                        yield uri, suite, fields.get("Signed-By", "")


def _deb822(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip()
    return fields


def _download_wheels(dest: Path, say: Callable[[str], None]) -> list[Path]:
    """The pinned aarch64 wheels, one ``pip download`` each so a failure names its package."""
    dest.mkdir(parents=True)
    for i, (name, version) in enumerate(WHEELS.items(), 1):
        say(f"[{i}/{len(WHEELS)}] downloading the aarch64 wheel {name}=={version}")
        try:
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PLATFORM, "-d", str(dest),
                  f"{name}=={version}"], f"pip download {name}=={version}")  # fmt: skip
        except RPCError as err:
            raise RPCError(f"cannot download the aarch64 wheel {name}=={version} for the phone: {err}") from err
    return sorted(dest.glob("*.whl"))


def serve(port: int | None = None, tracker: str | None = None, key: str = "phone", root: Path | None = None,
          progress: bool = True, echo: Callable[[str], None] = print) -> int:
    """``tvm-pattern phone serve``: set up if needed, run an RPC server on the phone until Ctrl-C or SIGTERM.

    Returns 0 after a requested stop; raises ``RPCError`` (with the server's last output) if it dies.
    """
    phone = EmulatedPhone(root)
    phone.setup(progress)

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    server = phone.server(port, tracker, key)
    # SIGTERM's default skips the cleanup; SIGINT may come ignored from a parent (a background job)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        echo("starting the TVM RPC server on the emulated phone (takes ~10 s under emulation)")
        server.start()
        where = f", registered with the tracker {server.tracker[0]}:{server.tracker[1]}" if server.tracker else ""
        echo(f"serving on {server.host}:{server.port} under key {key!r}{where}; Ctrl-C to stop")
        while server.alive:
            time.sleep(0.5)
        raise RPCError(f"the RPC server on the phone exited with status {server.proc.returncode}; "
                       f"its output ends with:\n{server.log_tail()}")  # fmt: skip
    except KeyboardInterrupt:
        echo("stopping")
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
