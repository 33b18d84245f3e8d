"""The FKR + FKW weight format: exact round trip, the filter permutation undone, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import PatternError
from tvm_pattern.sparsity.format import infer_library, pack, unpack
from tvm_pattern.sparsity.library import PatternLibrary, best_fit


def pattern_weight(rng: np.random.Generator, o: int, i: int, k: int = 8, n: int = 4, keep: float = 0.5) -> np.ndarray:
    """A random (o, i, 3, 3) weight pruned to ``k`` patterns of ``n`` taps, ``keep`` of its kernels kept."""
    w = rng.standard_normal((o, i, 3, 3)).astype(np.float32)
    lib = PatternLibrary.extract(w.reshape(-1, 3, 3), k=k, n=n)
    masks = lib.patterns[best_fit(w.reshape(-1, 3, 3), lib.patterns)]
    w = (w.reshape(-1, 3, 3) * masks).reshape(o, i, 3, 3)
    w[rng.random((o, i)) >= keep] = 0
    return w


@settings(max_examples=40, deadline=None)
@given(
    o=st.integers(1, 12),
    i=st.integers(1, 12),
    n=st.integers(1, 9),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_round_trip_exact(o: int, i: int, n: int, keep: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = pattern_weight(rng, o, i, k=min(8, math.comb(8, n - 1)), n=n, keep=keep)
    if not w.any():
        w[0, 0, 1, 1] = 1.0
    lib = infer_library(w)
    packed = pack(w, lib)
    assert np.array_equal(unpack(packed), w)
    assert packed.nnz == int((w != 0).any(axis=(2, 3)).sum())
    assert np.array_equal(unpack(pack(w)), w)


def test_library_given_and_subset_masks() -> None:
    rng = np.random.default_rng(0)
    w = pattern_weight(rng, 6, 5)
    lib = PatternLibrary.extract(w[w.any(axis=(2, 3))].reshape(-1, 3, 3), k=8)
    w[0, 0] = 0
    w[0, 0, 1, 1] = 2.0  # only the centre: fits inside every pattern
    packed = pack(w, lib)
    assert np.array_equal(unpack(packed), w)
    assert packed.k == 8 and packed.n == 4


def test_fkr_permutation_is_recorded_and_undone() -> None:
    w = np.zeros((4, 3, 3, 3), np.float32)
    w[0, 0, 1, 1] = 1.0  # filter 0 keeps 1 kernel, filter 2 keeps 3, filter 3 keeps 2, filter 1 none
    w[2, :, 1, 1] = [2.0, 3.0, 4.0]
    w[3, :2, 1, 1] = [5.0, 6.0]
    packed = pack(w)
    assert packed.perm.tolist() == [2, 3, 0, 1]  # most kept kernels first
    assert packed.counts().sum(axis=1).tolist() == [3, 2, 1, 0]
    assert packed.weights[:3, 0].tolist() == [2.0, 3.0, 4.0]
    assert np.array_equal(unpack(packed), w)


def test_kernels_grouped_by_pattern_within_a_filter() -> None:
    rng = np.random.default_rng(3)
    w = pattern_weight(rng, 5, 16, keep=1.0)
    packed = pack(w)
    ids = packed.pattern_ids()
    for f in range(packed.out_channels):
        mine = ids[packed.filter_of() == f]
        assert np.all(np.diff(mine) >= 0), "kernels of one pattern must be contiguous"


def test_kernel_outside_library_names_the_kernel() -> None:
    rng = np.random.default_rng(1)
    w = pattern_weight(rng, 4, 4, keep=1.0)
    lib = infer_library(w)
    w[2, 3] = 1.0  # a dense kernel fits no 4-tap pattern
    with pytest.raises(PatternError, match=r"out=2, in=3"):
        pack(w, lib)


def test_mixed_sizes_without_library_raise() -> None:
    w = np.zeros((2, 2, 3, 3), np.float32)
    w[0, 0] = [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    w[1, 1] = [[0, 0, 0], [0, 1, 1], [0, 0, 1]]
    w[1, 0] = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    packed = pack(w)
    assert np.array_equal(unpack(packed), w)
    w[0, 1] = [[0, 0, 0], [1, 1, 0], [0, 0, 0]]  # 2 taps, inside none of the 3-tap masks
    with pytest.raises(PatternError, match=r"out=0, in=1"):
        pack(w)


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (np.zeros((2, 2, 3, 3), np.float32), "all zeros"),
        (np.ones((2, 2, 5, 5), np.float32), r"\(O, I, 3, 3\)"),
        (np.ones((2, 2, 3, 3), np.float64), "float32"),
        (np.full((1, 1, 3, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_weights(weight: np.ndarray, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        pack(weight)


def test_pattern_without_centre_rejected() -> None:
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0, 0, 0] = 1.0
    with pytest.raises(PatternError, match="centre"):
        pack(w)
