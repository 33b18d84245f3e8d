"""The block-sparse format of 1x1 conv / linear weights: exact round trip, the detected block height, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import TvmPatternError
from tvm_pattern.sparsity.blocks import block_columns, detect, pack, unpack


def block_weight(rng: np.random.Generator, o: int, i: int, group: int, keep: float) -> np.ndarray:
    """A random (o, i) weight whose blocks of ``group`` rows keep the same ~``keep`` of the columns."""
    w = rng.standard_normal((o, i)).astype(np.float32)
    nb = -(-o // group)
    cols = rng.random((nb, i)) < keep
    return w * np.repeat(cols, group, axis=0)[:o]


@settings(max_examples=50, deadline=None)
@given(o=st.integers(1, 40), i=st.integers(1, 40), g=st.sampled_from([1, 2, 4, 8, 16]),
       pg=st.sampled_from([None, 1, 2, 3, 4, 8, 16]), keep=st.floats(0, 1), seed=st.integers(0, 5))
def test_round_trip(o, i, g, pg, keep, seed):
    w = block_weight(np.random.default_rng(seed), o, i, g, keep)
    packed = pack(w, pg)
    assert packed.blocks == -(-o // packed.group)
    np.testing.assert_array_equal(unpack(packed), w)
    assert packed.stored >= np.count_nonzero(w)
    for b in range(packed.blocks):  # each block's columns ascending, each block's rows read from the weight
        cols = packed.cols[packed.offsets[b]:packed.offsets[b + 1]]
        assert np.all(np.diff(cols) > 0)
        rows = w[b * packed.group:(b + 1) * packed.group][:, cols]
        np.testing.assert_array_equal(packed.block_weights(b)[:len(rows)], rows)


@pytest.mark.parametrize("g", [2, 4, 8, 16])
def test_detects_the_pruned_block_height(g):
    w = block_weight(np.random.default_rng(g), 256, 512, g, 1 / 8)
    assert detect(w) == g
    packed = pack(w)
    assert packed.group == g
    assert packed.density == pytest.approx(np.count_nonzero(w) / w.size)


def test_unstructured_weights_pick_small_blocks():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)).astype(np.float32) * (rng.random((64, 256)) < 0.125)
    assert detect(w) <= 2  # the union over G rows of random columns grows with G
    assert detect(np.ones((64, 256), np.float32)) == 16  # dense: fewest columns to index


def test_conv_weights_and_column_union():
    w = np.zeros((5, 3, 1, 1), np.float32)
    w[0, 1] = w[1, 2] = w[4, 0] = 1.0
    packed = pack(w, 2)
    assert packed.kept.tolist() == [2, 0, 1]  # rows 0-1 keep {1, 2}, rows 2-3 nothing, row 4 (+ padding) {0}
    assert block_columns(w.reshape(5, 3) != 0, 2).sum() == 3
    np.testing.assert_array_equal(unpack(packed), w.reshape(5, 3))


def test_bad_input():
    with pytest.raises(TvmPatternError, match="weight must be"):
        pack(np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(TvmPatternError, match="group"):
        pack(np.ones((2, 3), np.float32), 0)
    with pytest.raises(TvmPatternError, match="candidate"):
        detect(np.ones((2, 3), np.float32), ())
