"""The kernel parse cache: a cached PrimFunc is exactly what parsing its text gives, and a bad cache never breaks
a compile."""

import os
import time

import numpy as np
import pytest
import tvm
import tvm_ffi

from tvm_pattern.kernels import parse_cache
from tvm_pattern.kernels.block_sparse import BlockLinearKnobs, block_sparse_linear
from tvm_pattern.kernels.parse_cache import CACHE_ENV, KERNELS_ENV, kernels_dir, parse_source, trim
from tvm_pattern.sparsity.blocks import pack

SOURCE = """
@T.prim_func(s_tir=True)
def scale(x: T.Buffer((T.int64(8),), 'float32'), y: T.Buffer((T.int64(8),), 'float32')):
    for i in range({n}):
        y[i] = x[i] * T.float32({k})
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    return tmp_path / "kernels"


@pytest.fixture
def parses(monkeypatch):
    """The texts ``tvm.script.from_source`` really parsed."""
    calls, real = [], tvm.script.from_source
    monkeypatch.setattr(tvm.script, "from_source", lambda t: calls.append(t) or real(t))
    return calls


def files(folder):
    return sorted(folder.glob("*.json.gz")) if folder.exists() else []


def test_the_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "root"))
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert kernels_dir() == tmp_path / "root" / "kernels"
    monkeypatch.setenv(KERNELS_ENV, str(tmp_path / "mine"))
    assert kernels_dir() == tmp_path / "mine"
    for off in ("0", "off", "OFF"):
        monkeypatch.setenv(KERNELS_ENV, off)
        assert kernels_dir() is None


def test_a_second_parse_loads_the_same_primfunc_from_disk(cache, parses):
    text = SOURCE.format(n=8, k=2)
    first = parse_source(text)
    assert len(files(cache)) == 1 and parses == [text]
    again = parse_source(text)
    assert parses == [text]  # loaded, not parsed
    tvm.ir.assert_structural_equal(again, first)
    assert not again.same_as(first) and not parse_source(text).same_as(again)  # every call gets its own object


def test_different_texts_never_share_an_entry(cache):
    a, b = parse_source(SOURCE.format(n=8, k=2)), parse_source(SOURCE.format(n=8, k=3))
    assert len(files(cache)) == 2
    assert not tvm_ffi.structural_equal(a, b)


def test_a_corrupt_entry_is_parsed_again_and_rewritten(cache, parses):
    text = SOURCE.format(n=4, k=5)
    parse_source(text)
    (entry,) = files(cache)
    entry.write_bytes(b"not gzip")
    tvm.ir.assert_structural_equal(parse_source(text), tvm.script.from_source(text))
    assert parse_cache._load(entry) is not None  # rewritten whole
    assert len(parses) == 3  # first parse, the re-parse, the reference


def test_switched_off_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "0")
    parse_source(SOURCE.format(n=8, k=7))
    assert files(cache) == []


def test_an_unwritable_cache_does_not_stop_the_compile(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(KERNELS_ENV, str(blocker / "kernels"))
    text = SOURCE.format(n=8, k=9)
    tvm.ir.assert_structural_equal(parse_source(text), tvm.script.from_source(text))


def test_a_primfunc_that_cannot_be_saved_is_still_returned(cache, monkeypatch):
    def refuse(obj, metadata=None):
        raise RuntimeError("cannot serialise")

    monkeypatch.setattr(parse_cache, "to_json_graph_str", refuse)
    text = SOURCE.format(n=8, k=11)
    tvm.ir.assert_structural_equal(parse_source(text), tvm.script.from_source(text))
    assert files(cache) == [] and not list(cache.parent.glob("**/*.tmp"))


def test_trim_keeps_the_most_recently_used_and_drops_stale_temporaries(cache):
    for k in range(4):
        parse_source(SOURCE.format(n=8, k=k))
    entries = files(cache)
    for age, path in enumerate(entries):  # distinct times, in name order
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    newest = entries[-1]
    stale, fresh = cache / "x.json.gz123.tmp", cache / "y.json.gz456.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * parse_cache.STALE_TMP_S
    os.utime(stale, (old, old))
    trim(cache, max_bytes=newest.stat().st_size)  # room for one entry
    assert files(cache) == [newest]
    assert not stale.exists() and fresh.exists()


def test_a_generated_kernel_computes_the_same_from_a_warm_cache(cache, parses):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 24)).astype(np.float32) * (rng.random((16, 24)) < 0.3)
    x = rng.standard_normal((1, 24)).astype(np.float32)
    outs = []
    for _ in range(2):  # cold, then warm (from disk)
        k = block_sparse_linear(pack(w, 4), BlockLinearKnobs(unroll=2, threads=1))
        f = tvm.compile(tvm.IRModule({"main": k.func}), target="llvm")
        out = tvm.runtime.tensor(np.zeros(k.out_shape, np.float32))
        f(tvm.runtime.tensor(x), *[tvm.runtime.tensor(a) for a in k.arrays], out)
        outs.append(out.numpy())
    assert len(files(cache)) == 1 and len(parses) == 1  # the warm round parsed nothing
    np.testing.assert_allclose(outs[0], x @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs[1], outs[0])
