"""TVMScript text -> PrimFunc, cached on disk across processes.

Why: the generators emit a fresh TVMScript text per layer (its patterns, group bounds and taps are literals),
and TVM's parser spends about 4 ms per line on it: most of MobileNet-V2's two-minute compile at 8x. A PrimFunc
saved as a TVM FFI JSON graph loads in a small fraction of the parse time (``tvm.ir.load_json`` would not:
its Python-side upgrade pass re-encodes the whole graph and costs as much as the parse), and the text alone
decides the PrimFunc for one TVM build, so recompiling a model (``compile`` then ``bench``, the tuner's
rebuilds, the tests) reuses every kernel it generated before.

Where: ``$TVM_PATTERN_KERNEL_CACHE`` if set (``0`` / ``off``: no disk cache), else
``$TVM_PATTERN_CACHE/kernels`` (default ``~/.cache/tvm-pattern/kernels``); one gzip'd JSON per text, named by
the SHA-256 of the TVM build (version, commit), the TVM FFI version, this format's version and the text.
A file that does not load is parsed again and rewritten; a cache that cannot be written is skipped (the
compile never fails for it); files are written to a temporary name, then renamed. The folder is kept under
``MAX_BYTES``, least recently used entries deleted first.

Every call returns a PrimFunc of its own (parsed, or loaded from its file), never one shared with an earlier
call: a first version that also kept the objects in memory handed two identical layers one shared PrimFunc, and
the tuner then lost one layer's record (tests/tune/test_tune.py); the cause inside TVM / MetaSchedule was not
pinned down, so nothing is shared.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import tempfile
import time
from pathlib import Path

import tvm
import tvm_ffi
from tvm_ffi.serialization import from_json_graph_str, to_json_graph_str

__all__ = ["CACHE_ENV", "KERNELS_ENV", "MAX_BYTES", "kernels_dir", "parse_source", "trim"]

CACHE_ENV = "TVM_PATTERN_CACHE"  # the project's cache root (as tvm_pattern.prune.checkpoints)
KERNELS_ENV = "TVM_PATTERN_KERNEL_CACHE"  # this cache's folder, or "0" / "off": no disk cache
FORMAT = 1  # bumped when what a cached entry holds changes
MAX_BYTES = 512 << 20  # the disk cache is trimmed to this, least recently used files first (a tuner writes many)
TRIM_EVERY = 64  # stores between two size checks
STALE_TMP_S = 3600  # a temporary file this old was left by a killed process

_stores = 0


def kernels_dir() -> Path | None:
    """The disk cache's folder, or None when ``TVM_PATTERN_KERNEL_CACHE`` is ``0`` / ``off``."""
    folder = os.environ.get(KERNELS_ENV, "").strip()
    if folder.lower() in ("0", "off", "false", "no"):
        return None
    if folder:
        return Path(folder)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tvm-pattern") / "kernels"


@functools.cache
def _build() -> str:
    """What identifies the TVM that parses: source builds of different commits share a version string."""
    commit = ""
    with contextlib.suppress(Exception):
        commit = tvm.support.libinfo().get("GIT_COMMIT_HASH") or ""
    return f"tvm {tvm.__version__} {commit} tvm-ffi {tvm_ffi.__version__} format {FORMAT}"


def _key(text: str) -> str:
    return hashlib.sha256(f"{_build()}\n{text}".encode()).hexdigest()


def _load(path: Path) -> tvm.tirx.PrimFunc | None:
    try:
        func = from_json_graph_str(gzip.decompress(path.read_bytes()).decode())
    except Exception:  # missing, truncated or from another build: parse again
        return None
    with contextlib.suppress(OSError):  # recently used: trimmed last (a trim racing us costs nothing)
        os.utime(path)
    return func if isinstance(func, tvm.tirx.PrimFunc) else None


def trim(folder: Path, max_bytes: int = MAX_BYTES) -> None:
    """Delete the least recently used entries until the folder holds at most ``max_bytes``, and temporary files
    that killed processes left behind."""
    entries, now = [], time.time()
    for path in folder.iterdir() if folder.is_dir() else ():
        with contextlib.suppress(OSError):  # another process may delete it first
            st = path.stat()
            if path.name.endswith(".tmp"):
                if now - st.st_mtime > STALE_TMP_S:
                    path.unlink()
            elif path.name.endswith(".json.gz"):
                entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
        total -= size


def _store(path: Path, func: tvm.tirx.PrimFunc) -> None:
    global _stores
    try:
        data = gzip.compress(to_json_graph_str(func).encode(), compresslevel=1)
    except Exception:  # an object the FFI cannot serialise: no disk entry
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:  # read-only home, full disk: compile without the cache
        return
    _stores += 1
    if (_stores - 1) % TRIM_EVERY == 0:
        trim(path.parent)


def parse_source(text: str) -> tvm.tirx.PrimFunc:
    """``tvm.script.from_source(text)``, loaded from the disk cache when this text was parsed before."""
    folder = kernels_dir()
    path = None if folder is None else folder / f"{_key(text)}.json.gz"
    func = None if path is None else _load(path)
    if func is None:
        func = tvm.script.from_source(text)
        if path is not None:
            _store(path, func)
    return func
