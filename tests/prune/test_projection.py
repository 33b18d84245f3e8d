"""Euclidean projections onto the pattern and connectivity sets, against brute force."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import PatternError
from tvm_pattern.prune.projection import connectivity_mask, kept_kernels, project_connectivity, project_patterns
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
