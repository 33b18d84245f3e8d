"""Pattern-sparse depthwise conv2d: the pattern-grouped format and the generated kernel vs
torch.nn.functional.conv2d(groups=C) on the same weights (random patterns, empty channels, strides, paddings,
epilogues, knobs)."""

import numpy as np
import pytest
import torch
from helpers.dense import activate, close, run, with_residual
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import PatternError, TvmPatternError
from tvm_pattern.kernels.depthwise_conv2d import geometry
from tvm_pattern.kernels.pattern_depthwise import (
    PatternDepthwiseKnobs,
    direct_ok,
    fit_knobs,
    pattern_depthwise,
    thread_split,
)
from tvm_pattern.schedules.pattern_depthwise import default_knobs, depthwise, pays
from tvm_pattern.sparsity.depthwise import pack_depthwise, unpack_depthwise


def pruned(c, k=3, patterns=8, taps=4, empty=0.1, seed=0):
    """A (C, 1, k, k) weight whose channels each keep one of ``patterns`` random supports (centre + taps-1)."""
    rng = np.random.default_rng(seed)
    centre = (k * k) // 2
    others = [i for i in range(k * k) if i != centre]
    lib = np.zeros((patterns, k * k), bool)
    for p in range(patterns):
        lib[p, [centre, *rng.choice(others, min(taps, k * k) - 1, replace=False)]] = True
    mask = lib[rng.integers(0, patterns, c)]
    mask[rng.random(c) < empty] = False
    return (rng.standard_normal((c, 1, k, k), dtype=np.float32) * mask.reshape(c, 1, k, k)).astype(np.float32)


def check(weight, h, w, stride, pad, bias, act, residual, knobs=None, seed=0):
    rng = np.random.default_rng(seed)
    c = weight.shape[0]
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32) if bias else None
    packed = pack_depthwise(weight)
    kern = depthwise(packed, x.shape, stride, pad, b, act, residual, knobs=knobs)
    top, left, bottom, right = pad
    xt = torch.nn.functional.pad(torch.tensor(x), (left, right, top, bottom))
    want = torch.nn.functional.conv2d(xt, torch.tensor(weight), None if b is None else torch.tensor(b), stride,
                                      groups=c)
    assert kern.out_shape == tuple(want.shape)
    want, inputs = with_residual(want, x, residual, rng)
    got = run(kern, *inputs)
    close(got, activate(want, act))


def test_format_round_trip_and_grouping():
    w = pruned(40, empty=0.2, seed=3)
    w[5] = 0
    packed = pack_depthwise(w)
    assert np.array_equal(unpack_depthwise(packed), w)
    assert sorted(packed.order.tolist()) == list(range(40))
    counts = packed.counts()
    assert counts.sum() == 40 and counts[:-1].min() >= 1 and counts[:-1].tolist() == sorted(counts[:-1], reverse=True)
    assert 5 in packed.order[packed.starts[-2]:].tolist()  # the empty channels come last
    assert packed.k <= 8 and packed.max_taps == 4 and packed.nnz == int((w != 0).sum())
    for p in range(packed.k):  # every channel of a group has exactly that group's support
        chans = packed.order[packed.starts[p]:packed.starts[p + 1]]
        assert ((w[chans, 0] != 0) == packed.patterns[p]).all()


def test_format_all_empty_and_bad_input():
    packed = pack_depthwise(np.zeros((6, 1, 3, 3), np.float32))
    assert packed.k == 0 and packed.counts().tolist() == [6] and packed.nnz == 0
    assert np.array_equal(unpack_depthwise(packed), np.zeros((6, 1, 3, 3), np.float32))
    with pytest.raises(PatternError, match=r"\(C, 1, KH, KW\)"):
        pack_depthwise(np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(PatternError, match="float32"):
        pack_depthwise(np.zeros((4, 1, 3, 3), np.float64))
    with pytest.raises(PatternError, match="NaN"):
        pack_depthwise(np.full((4, 1, 3, 3), np.nan, np.float32))


def test_thread_split_balances_taps():
    packed = pack_depthwise(pruned(64, empty=0.3, seed=1))
    split = thread_split(packed, 4)
    assert split[0] == 0 and split[-1] == 64 and (np.diff(split) >= 0).all()


@pytest.mark.parametrize("c,hw,s", [(32, 28, 1), (24, 28, 2), (16, 14, 2), (12, 7, 1), (5, 14, 2), (3, 9, 1)])
def test_mobilenet_like_layers(c, hw, s):
    check(pruned(c, seed=c), hw, hw, (s, s), (1, 1, 1, 1), True, "relu6", False)


def test_all_empty_and_single_tap():
    check(np.zeros((4, 1, 3, 3), np.float32), 9, 11, (1, 1), (1, 1, 1, 1), True, "relu6", True)
    check(pruned(6, taps=1, empty=0.0), 10, 10, (2, 2), (1, 1, 1, 1), False, None, False)
    check(pruned(1, taps=1, empty=0.0), 3, 3, (1, 2), (0, 0, 0, 0), False, None, False)  # one output column


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 12), h=st.integers(1, 21), w=st.integers(1, 21), k=st.sampled_from([3, 3, 5]),
       sh=st.integers(1, 2), sw=st.integers(1, 2), pad=st.tuples(*[st.integers(0, 2)] * 4),
       patterns=st.integers(1, 8), taps=st.integers(1, 4), empty=st.sampled_from([0.0, 0.3, 1.0]),
       bias=st.booleans(), act=st.sampled_from([None, "relu", "relu6", ("clip", -0.5, 1.0)]),
       residual=st.booleans(), seed=st.integers(0, 3))
def test_random_layers(c, h, w, k, sh, sw, pad, patterns, taps, empty, bias, act, residual, seed):
    if h + pad[0] + pad[2] < k or w + pad[1] + pad[3] < k:
        return
    weight = pruned(c, k, patterns, taps, empty, seed)
    check(weight, h, w, (sh, sw), pad, bias, act, residual, seed=seed)


@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 6), nv=st.sampled_from([1, 2, 4]), lanes=st.sampled_from([4, 8]),
       threads=st.integers(1, 3), s=st.integers(1, 2))
def test_knobs(rows, nv, lanes, threads, s):
    check(pruned(7, seed=rows), 13, 37, (s, s), (1, 1, 1, 1), True, "relu6", True,
          knobs=PatternDepthwiseKnobs(rows, nv, lanes, threads))


@pytest.mark.parametrize("h,w,k,s,pad,direct", [(9, 3, 3, (2, 2), (2, 2, 2, 2), False),
                                                (20, 70, 5, (2, 2), (2, 1, 0, 2), True),
                                                (17, 45, 3, (1, 2), (0, 2, 1, 0), True)])
def test_direct_reads_and_padded_fallback(h, w, k, s, pad, direct):
    """Wide inputs read ``data`` directly (peeled edges with asymmetric pads); narrow ones pack a padded copy."""
    kn = PatternDepthwiseKnobs(3, 2, 4, 2)
    g = geometry((5, 1, k, k), (1, 5, h, w), s, pad)
    assert direct_ok(g, fit_knobs(kn, g)) == direct
    check(pruned(5, k, seed=h), h, w, s, pad, True, "relu6", True, knobs=kn)


def test_default_knobs_and_pays():
    packed = pack_depthwise(pruned(96))
    kn = default_knobs(packed, (1, 96, 112, 112), (2, 2))
    assert kn.lanes in (4, 8) and kn.rows >= 1 and kn.nv in (1, 2, 4) and kn.threads >= 1
    assert pays(packed)[0]
    ok, why = pays(pack_depthwise(pruned(16, taps=8, empty=0.0)))
    assert not ok and "taps per channel" in why


def test_bad_input():
    packed = pack_depthwise(pruned(4))
    with pytest.raises(TvmPatternError, match="channels"):
        depthwise(packed, (1, 5, 8, 8))
    with pytest.raises(TvmPatternError, match="bias"):
        depthwise(packed, (1, 4, 8, 8), bias=np.zeros(3, np.float32))
    with pytest.raises(TvmPatternError, match="DepthwisePatterns"):
        pattern_depthwise(pruned(4), (1, 4, 8, 8), PatternDepthwiseKnobs(1, 1, 8, 1))
    with pytest.raises(TvmPatternError, match="activation"):
        depthwise(packed, (1, 4, 8, 8), activation="gelu")
