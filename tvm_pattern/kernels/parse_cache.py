"""TVMScript text -> PrimFunc, cached: in this process, and on disk across processes.

Why: the generators emit a fresh TVMScript text per layer (its patterns, group bounds and taps are literals),
and TVM's parser spends about 4 ms per line on it: 83 s of MobileNet-V2's 110 s compile at 8x. A PrimFunc
saved as a TVM FFI JSON graph (loaded without ``tvm.ir.load_json``'s pure-Python upgrade pass, which costs
as much as the parse) loads in a small fraction of the parse time, and the text alone decides the PrimFunc (for
one TVM build), so recompiling a model (``compile`` then ``bench``, the tuner's rebuilds, the tests) reuses
every kernel it generated before.

Where: ``$TVM_PATTERN_CACHE/kernels`` (default ``~/.cache/tvm-pattern/kernels``), one gzip'd JSON per text,
named by the SHA-256 of the TVM and TVM FFI versions and the text. ``TVM_PATTERN_KERNEL_CACHE=0`` turns the
disk cache off.
A file that does not load is parsed again and rewritten; a cache that cannot be written is skipped (the
compile never fails for it); files are written to a temporary name, then renamed. The folder is kept under
``MAX_BYTES``, least recently used entries deleted first.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import tvm
import tvm_ffi
from tvm_ffi.serialization import from_json_graph_str, to_json_graph_str

__all__ = ["CACHE_ENV", "MAX_BYTES", "SWITCH_ENV", "cache_dir", "clear_memory", "parse_source", "trim"]

CACHE_ENV = "TVM_PATTERN_CACHE"  # the project's cache root (as tvm_pattern.prune.checkpoints)
SWITCH_ENV = "TVM_PATTERN_KERNEL_CACHE"  # "0": no disk cache
MEMORY_ENTRIES = 256  # PrimFuncs kept in this process (least recently used dropped first)
MAX_BYTES = 512 << 20  # the disk cache is trimmed to this, least recently used files first (a tuner writes many)
TRIM_EVERY = 64  # stores between two size checks

_memory: OrderedDict[str, tvm.tirx.PrimFunc] = OrderedDict()
_stores = 0


def cache_dir() -> Path | None:
    """The disk cache's folder, or None when ``TVM_PATTERN_KERNEL_CACHE=0``."""
    if os.environ.get(SWITCH_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tvm-pattern"
    return Path(root) / "kernels"


def clear_memory() -> None:
    """Forget the PrimFuncs cached in this process (the disk cache stays)."""
    _memory.clear()


def _key(text: str) -> str:
    return hashlib.sha256(f"{tvm.__version__} {tvm_ffi.__version__}\n{text}".encode()).hexdigest()


def _load(path: Path) -> tvm.tirx.PrimFunc | None:
    try:
        func = from_json_graph_str(gzip.decompress(path.read_bytes()).decode())
        os.utime(path)  # recently used: trimmed last
    except Exception:  # missing, truncated or from another build: parse again
        return None
    return func if isinstance(func, tvm.tirx.PrimFunc) else None


def trim(folder: Path, max_bytes: int = MAX_BYTES) -> None:
    """Delete the least recently used entries until the folder holds at most ``max_bytes``."""
    entries = []
    for path in folder.glob("*.json.gz"):
        with contextlib.suppress(OSError):  # another process may delete it first
            st = path.stat()
            entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
        total -= size


def _store(path: Path, func: tvm.tirx.PrimFunc) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(gzip.compress(to_json_graph_str(func).encode(), compresslevel=1))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:  # read-only home, full disk: compile without the cache
        return
    global _stores
    _stores += 1
    if _stores % TRIM_EVERY == 1:
        trim(path.parent)


def parse_source(text: str) -> tvm.tirx.PrimFunc:
    """``tvm.script.from_source(text)``, from the cache when this text was parsed before."""
    key = _key(text)
    func = _memory.get(key)
    folder = cache_dir()
    if func is None and folder is not None:
        func = _load(folder / f"{key}.json.gz")
    if func is None:
        func = tvm.script.from_source(text)
        if folder is not None:
            _store(folder / f"{key}.json.gz", func)
    _memory[key] = func
    _memory.move_to_end(key)
    while len(_memory) > MEMORY_ENTRIES:
        _memory.popitem(last=False)
    return func
