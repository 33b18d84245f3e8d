"""The pattern-sparse conv PrimFunc equals torch's conv2d on the same pruned weights (fp32, 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.kernels import DENSE, TARGET, check, pruned, reference, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import s_tir

from tvm_pattern.errors import PatternError
from tvm_pattern.kernels.pattern_conv2d import chunked_fkw
from tvm_pattern.schedules import x86
from tvm_pattern.sparse_conv import layer_config, sparse_conv2d, unscheduled
from tvm_pattern.sparsity.format import pack


@st.composite
def conv_cases(draw):
    n_taps = draw(st.sampled_from([4, 4, 4, 2, 3, 5, 9]))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, 3 - padding[0] - padding[2]), 13))
    w = draw(st.integers(max(1, 3 - padding[1] - padding[3]), 21))
    return {
        "batch": draw(st.integers(1, 2)),
        "cin": draw(st.integers(1, 11)),
        "cout": draw(st.integers(1, 13)),
        "hw": (h, w),
        "stride": draw(st.sampled_from([1, 2])),
        "padding": padding,
        "n": n_taps,
        "k": draw(st.integers(1, 8)),
        "keep": draw(st.sampled_from([0.3, 0.6, 1.0])),
        "bias": draw(st.booleans()),
        "relu": draw(st.booleans()),
        "config": {
            "rows": draw(st.integers(1, 4)),
            "cols": draw(st.sampled_from([4, 8, 12, 16, 24])),
            "vector": draw(st.sampled_from([4, 8])),
            "threads": draw(st.integers(1, 3)),
            "peel": draw(st.booleans()),
            "chunk": draw(st.sampled_from([0, 0, 1, 2, 3, 5])),
        },
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases())
def test_matches_torch(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    w, lib = pruned(rng, case["cout"], case["cin"], case["k"], case["n"], case["keep"])
    x = rng.standard_normal((case["batch"], case["cin"], *case["hw"])).astype(np.float32)
    bias = rng.standard_normal(case["cout"]).astype(np.float32) if case["bias"] else None
    check(pack(w, lib), w, x, case["stride"], case["padding"], bias, case["relu"], case["config"])


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_nine_tap_first_layer(stride: int) -> None:
    """A dense 3x3 conv is a library of one all-ones pattern: VGG's first layer runs the same code."""
    rng = np.random.default_rng(stride)
    w = rng.standard_normal((19, 3, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, 3, 30, 37)).astype(np.float32)
    bias = rng.standard_normal(19).astype(np.float32)
    check(pack(w, DENSE), w, x, stride, (1, 1, 1, 1), bias, True)


def test_realistic_layer_default_knobs() -> None:
    """A VGG-like layer at 8x (8 patterns, 1/3.6 of the kernels) with the default schedule."""
    rng = np.random.default_rng(7)
    w, lib = pruned(rng, 40, 36, 8, 4, 1 / 3.6)
    x = rng.standard_normal((1, 36, 28, 28)).astype(np.float32)
    check(pack(w, lib), w, x, 1, (1, 1, 1, 1), None, True)


@pytest.mark.parametrize("chunk", [0, 16, 24, 40])
def test_channel_chunks(chunk: int) -> None:
    """Input channels in chunks (partial sums kept between chunks) at 2.25x, with bias and ReLU on the last."""
    rng = np.random.default_rng(chunk)
    w, lib = pruned(rng, 24, 40, 8, 4, 1.0)
    x = rng.standard_normal((1, 40, 14, 14)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    check(pack(w, lib), w, x, 1, (1, 1, 1, 1), bias, True, {"chunk": chunk})


def test_chunked_fkw_orders_kernels_by_filter_chunk_pattern() -> None:
    rng = np.random.default_rng(3)
    w, lib = pruned(rng, 5, 20, 4, 4, 0.6)
    packed = pack(w, lib)
    offsets, channels, weights, perm = chunked_fkw(packed, 8)
    chunks, k = 3, packed.k
    assert offsets.shape == (5 * chunks * k + 1,) and offsets[-1] == packed.nnz
    for seg in range(5 * chunks * k):
        o, rest = divmod(seg, chunks * k)
        c, p = divmod(rest, k)
        kept = channels[offsets[seg]:offsets[seg + 1]]
        assert np.all(kept // 8 == c)
        for e in range(offsets[seg], offsets[seg + 1]):  # the weights moved with their kernel
            taps = lib.taps()[p]
            dense = w[perm[o], channels[e]]
            np.testing.assert_array_equal(weights[e * 4:(e + 1) * 4], [dense[r, cc] for r, cc in taps])
    assert np.array_equal(chunked_fkw(packed, 0)[0], packed.offsets)


def test_default_chunk_keeps_segments_full() -> None:
    """About 8 kept kernels per (filter, chunk, pattern): 64-channel chunks at 2.25x, two chunks at 8x on 512."""
    rng = np.random.default_rng(0)
    dense, lib = pruned(rng, 16, 512, 8, 4, 1.0)
    sparse, lib8 = pruned(rng, 16, 512, 8, 4, 1 / 3.6)
    assert x86.default_chunk(pack(dense, lib)) == 64
    assert x86.default_chunk(pack(sparse, lib8)) == 256
    assert x86.default_chunk(pack(dense[:, :64], lib)) == 0


def test_empty_filters_and_empty_weight_give_bias() -> None:
    rng = np.random.default_rng(5)
    w, lib = pruned(rng, 6, 4, 8, 4, 0.5)
    w[[1, 4]] = 0  # two filters keep nothing
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    check(pack(w, lib), w, x, 1, (1, 1, 1, 1), bias, False)
    zero = np.zeros_like(w)
    check(pack(zero, lib), zero, x, 2, (0, 1, 0, 1), bias, True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_schedule_decisions(seed: int) -> None:
    """Whatever the tuner samples (vector split, row unrolling), the numerics hold and the trace replays."""
    rng = np.random.default_rng(seed)
    w, lib = pruned(rng, 9, 7, 8, 4, 0.5)
    packed = pack(w, lib)
    x = rng.standard_normal((1, 7, 11, 26)).astype(np.float32)
    cfg = layer_config(packed, x.shape, target=TARGET, config={"cols": 16, "peel": False})
    sch = s_tir.Schedule(unscheduled(packed, x.shape, config=cfg), seed=seed)
    x86.schedule(sch, packed.k, None)
    replayed = s_tir.Schedule(unscheduled(packed, x.shape, config=cfg))
    sch.trace.apply_to_schedule(replayed, remove_postproc=True)  # what MetaSchedule does with a trace
    arrays = sparse_conv2d(packed, x.shape, target=TARGET, config=cfg).arrays
    got = run(replayed.mod["main"], arrays, x, None, (1, 9, 11, 26))
    np.testing.assert_allclose(got, reference(x, w, None, 1, (1, 1, 1, 1), False), atol=1e-4, rtol=1e-4)


def test_kernel_contract() -> None:
    rng = np.random.default_rng(0)
    w, lib = pruned(rng, 8, 5, 8, 4, 0.5)
    kernel = sparse_conv2d(pack(w, lib), (2, 5, 10, 12), (2, 2), (1, 0, 1, 0), bias=True)
    assert kernel.out_shape == (2, 8, 5, 5)
    params = kernel.func.params
    assert len(params) == 1 + len(kernel.arrays) + 2
    shapes = [p.ty.shape for p in params]
    assert all(str(d.ty) == "int64" for shape in shapes for d in shape)
    assert [int(d) for d in shapes[-1]] == [2, 8, 5, 5]


@pytest.mark.parametrize(
    ("shape", "strides", "padding", "message"),
    [
        ((1, 4, 8, 8), (1, 1), (1, 1, 1, 1), "channels"),
        ((1, 5, 1, 1), (1, 1), (0, 0, 0, 0), "smaller than the 3x3 kernel"),
        ((1, 5, 8, 8), (0, 1), (1, 1, 1, 1), "strides"),
        ((1, 5, 8, 8), (1, 1), (1, -1, 1, 1), "padding"),
        ((5, 8, 8), (1, 1), (1, 1, 1, 1), "NCHW"),
    ],
)
def test_bad_arguments(shape, strides, padding, message) -> None:
    w, lib = pruned(np.random.default_rng(0), 4, 5, 8, 4, 1.0)
    with pytest.raises(PatternError, match=message):
        sparse_conv2d(pack(w, lib), shape, strides, padding)
