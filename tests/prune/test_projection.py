"""Euclidean projections onto the pattern, connectivity and block-connectivity sets, against brute force."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import PatternError
from tvm_pattern.prune.projection import (
    block_mask,
    check_block,
    check_kernel_block,
    connectivity_mask,
    kept_columns,
    kept_kernels,
    pattern_mask,
    project_block,
    project_connectivity,
    project_patterns,
)
from tvm_pattern.sparsity.library import candidate_patterns

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, k=st.sampled_from([4, 6, 8, 12]), seed=st.integers(0, 2**31 - 1))
def test_pattern_projection_is_the_closest_library_point(shape, k, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, 3, 3, generator=gen)
    lib = torch.from_numpy(candidate_patterns(4)[torch.randperm(56, generator=gen)[:k].numpy()])
    z = project_patterns(w, lib)
    for o, i in itertools.product(range(shape[0]), range(shape[1])):
        # Brute force: the library pattern minimising ||w - w * p||.
        dists = [float((w[o, i] - w[o, i] * p).square().sum()) for p in lib]
        best = lib[int(np.argmin(dists))]
        assert torch.equal(z[o, i], w[o, i] * best)
        assert (z[o, i] != 0).sum() <= 4


@settings(max_examples=40, deadline=None)
@given(shape=shapes, alpha=st.floats(1.0, 10.0), seed=st.integers(0, 2**31 - 1))
def test_connectivity_projection_keeps_the_largest_kernels(shape, alpha, seed):
    w = torch.randn(*shape, 3, 3, generator=torch.Generator().manual_seed(seed))
    keep = kept_kernels(shape[0] * shape[1], alpha)
    y = project_connectivity(w, keep)
    norms = w.flatten(2).norm(dim=-1).flatten()
    kept = (y.flatten(2) != 0).any(-1).flatten()
    assert int(kept.sum()) == keep
    # Every kept kernel is at least as large as every dropped one, and kept kernels are untouched.
    if keep < norms.numel():
        assert norms[kept].min() >= norms[~kept].max()
    assert torch.equal(y.flatten(2)[kept.view(shape)], w.flatten(2)[kept.view(shape)])


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 7), cols=st.integers(1, 4), block=st.integers(2, 4), alpha=st.floats(1.0, 4.0),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_kernelblock_connectivity_is_the_nearest_point_with_as_many_groups(out, cols, block, alpha, seed):
    """Blocks of ``block`` filters keep the same input channels, about ``keep`` kernels' worth; among every
    choice of that many (block, channel) groups, the projection is the nearest to ``w`` (brute force)."""
    w = torch.randn(out, cols, 3, 3, generator=torch.Generator().manual_seed(seed))
    keep = kept_kernels(out * cols, alpha)
    mask = connectivity_mask(w, keep, block)[:, :, 0, 0]
    for start in range(0, out, block):
        assert (mask[start: start + block] == mask[start]).all()
    groups = -(-out // block) * cols
    count = int(mask[::block].sum())
    assert count >= 1 and abs(int(mask.sum()) - keep) <= block
    energy = w.square().sum((2, 3))
    best = float("inf")
    for pick in itertools.combinations(range(groups), count):
        m = torch.zeros(groups, dtype=torch.bool)
        m[list(pick)] = True
        full = m.view(-1, cols).repeat_interleave(block, 0)[:out]
        best = min(best, float(energy[~full].sum()))
    assert float(energy[~mask].sum()) <= best + 1e-5
    assert torch.equal(project_connectivity(w, keep, block), w * mask[:, :, None, None])


def test_kernel_block_one_is_per_kernel_auto_blocks_wide_convs_and_bad_blocks_are_named():
    w = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(connectivity_mask(w, 8, 1), connectivity_mask(w, 8))
    assert torch.equal(connectivity_mask(w, 8, "auto"), connectivity_mask(w, 8))  # 5 input channels: per kernel
    wide = torch.randn(12, 256, 3, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(connectivity_mask(wide, 853, "auto"), connectivity_mask(wide, 853, 6))
    for bad in (0, -2, 1.5, True, "6"):
        with pytest.raises(PatternError, match="kernel_block"):
            check_kernel_block(bad)


def test_kept_kernels_rounds_total_over_alpha():
    assert kept_kernels(1024, 3.6) == 284
    assert kept_kernels(3, 3.6) == 1
    assert kept_kernels(10, 1.0) == 10


@pytest.mark.parametrize("alpha", [0.5, 0.0, -2.0, float("nan")])
def test_alpha_below_one_is_rejected(alpha):
    with pytest.raises(PatternError, match="alpha must be >= 1"):
        kept_kernels(100, alpha)


def test_bad_shapes_are_named():
    with pytest.raises(PatternError, match=r"\(O, I, 3, 3\)"):
        project_patterns(torch.randn(4, 4, 5, 5), torch.from_numpy(candidate_patterns(4)))
    with pytest.raises(PatternError, match="cannot keep"):
        connectivity_mask(torch.randn(2, 2, 3, 3), 5)


# --- 1x1 convs and linear layers: block connectivity ------------------------------------------------------


def block_supports(out: int, cols: int, keep: int, block: int):
    """Every admissible support: per block of ``block`` rows, one set of ``keep`` columns (all combinations)."""
    blocks = [range(b, min(b + block, out)) for b in range(0, out, block)]
    for choice in itertools.product(itertools.combinations(range(cols), keep), repeat=len(blocks)):
        mask = torch.zeros(out, cols, dtype=torch.bool)
        for rows, kept in zip(blocks, choice, strict=True):
            mask[rows.start: rows.stop, list(kept)] = True
        yield mask


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 4), cols=st.integers(1, 4), block=st.integers(1, 5), alpha=st.floats(1.0, 4.0),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_block_projection_is_the_nearest_admissible_point(out, cols, block, alpha, seed):
    w = torch.randn(out, cols, generator=torch.Generator().manual_seed(seed))
    keep = kept_columns((out, cols), alpha, block)
    mask = block_mask(w, keep, block)
    # exactly `keep` columns per row, the same columns for every row of a block (the last may be shorter)
    assert (mask.sum(1) == keep).all()
    for start in range(0, out, block):
        rows = mask[start: start + block]
        assert (rows == rows[0]).all()
    best = min(float((w - w * m).square().sum()) for m in block_supports(out, cols, keep, block))
    assert float((w - project_block(w, keep, block)).square().sum()) <= best + 1e-6


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 12), cols=st.integers(1, 12), alpha=st.floats(1.0, 12.0), seed=st.integers(0, 2**31 - 1))
def test_unstructured_keeps_the_largest_entries(out, cols, alpha, seed):
    w = torch.randn(out, cols, 1, 1, generator=torch.Generator().manual_seed(seed))
    keep = kept_columns(tuple(w.shape), alpha, "unstructured")
    assert keep == max(1, round(out * cols / alpha))
    mask = block_mask(w, keep, "unstructured")
    assert mask.shape == w.shape and int(mask.sum()) == keep
    if keep < w.numel():
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_block_mask_on_a_1x1_conv_keeps_one_eighth_of_the_columns():
    w = torch.randn(10, 64, 1, 1, generator=torch.Generator().manual_seed(0))
    keep = kept_columns(tuple(w.shape), 8.0, 4)
    mask = block_mask(w, keep, 4)
    assert keep == 8 and mask.shape == w.shape
    flat = mask.flatten(1)
    assert (flat.sum(1) == 8).all()
    assert torch.equal(flat[0], flat[3]) and torch.equal(flat[8], flat[9])  # blocks 0-3, 4-7 and the short 8-9
    # G = 1: every row its own top columns
    rows = block_mask(w, keep, 1).flatten(1)
    top = w.flatten(1).abs().argsort(1, descending=True)[:, :8]
    assert all(set(torch.nonzero(rows[r]).flatten().tolist()) == set(top[r].tolist()) for r in range(10))


def test_depthwise_kernels_keep_their_best_library_pattern():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(7, 1, 3, 3, generator=gen)
    lib = torch.from_numpy(candidate_patterns(4)[[0, 9, 21, 40]])
    mask = pattern_mask(w, lib)
    for c in range(7):
        errors = [float((w[c, 0] - w[c, 0] * p).square().sum()) for p in lib]
        assert torch.equal(mask[c, 0], lib[int(np.argmin(errors))].bool())


@pytest.mark.parametrize("block", [0, -1, 2.5, "blocky", True])
def test_bad_block_is_rejected(block):
    with pytest.raises(PatternError, match="block must be"):
        check_block(block)


def test_block_mask_bad_input_is_named():
    with pytest.raises(PatternError, match=r"\(O, I\) or 1x1 conv"):
        block_mask(torch.randn(4, 4, 3, 3), 2, 4)
    with pytest.raises(PatternError, match="cannot keep 5 of 4 input columns"):
        block_mask(torch.randn(4, 4), 5, 2)
    with pytest.raises(PatternError, match="alpha must be >= 1"):
        kept_columns((4, 4), 0.5, 4)


@settings(max_examples=20, deadline=None)
@given(out=st.integers(1, 20), cols=st.integers(1, 9), block=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_bench_suite_numpy_copy_matches_the_projection(out, cols, block, seed):
    """``bench.layers`` prunes its suites in numpy (that process does not load torch): the same kernels."""
    from tvm_pattern.bench.layers import CONNECTIVITY, block_connectivity

    w = torch.randn(out, cols, 3, 3, generator=torch.Generator().manual_seed(seed))
    want = connectivity_mask(w, kept_kernels(out * cols, CONNECTIVITY), block)[:, :, 0, 0].numpy()
    assert np.array_equal(block_connectivity(w.numpy(), block), want)
