"""Depthwise conv2d generator vs torch.nn.functional.conv2d(groups=C)."""

import numpy as np
import pytest
import torch
from helpers.dense import activate, close, run, with_residual
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import TvmPatternError
from tvm_pattern.kernels.depthwise_conv2d import DepthwiseKnobs
from tvm_pattern.schedules.dense_cpu import depthwise as depthwise_conv2d


def check(c, h, w, k, stride, pad, bias, act, residual, knobs=None, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((c, 1, k, k), dtype=np.float32)
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32) if bias else None
    kern = depthwise_conv2d(weight, x.shape, stride, pad, b, act, residual, knobs=knobs)
    top, left, bottom, right = pad
    xt = torch.nn.functional.pad(torch.tensor(x), (left, right, top, bottom))
    want = torch.nn.functional.conv2d(xt, torch.tensor(weight), None if b is None else torch.tensor(b), stride,
                                      groups=c)
    assert kern.out_shape == tuple(want.shape)
    want, inputs = with_residual(want, x, residual, rng)
    got = run(kern, *inputs)
    assert np.abs(got).max() > 0 or np.abs(want.numpy()).max() == 0
    close(got, activate(want, act))


@pytest.mark.parametrize("c,hw,s", [(8, 16, 1), (8, 16, 2), (12, 7, 1), (5, 14, 2), (3, 9, 1)])
def test_mobilenet_like_layers(c, hw, s):
    check(c, hw, hw, 3, (s, s), (1, 1, 1, 1), True, "relu6", False)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 9), h=st.integers(1, 19), w=st.integers(1, 19), k=st.sampled_from([1, 3, 5]),
       sh=st.integers(1, 2), sw=st.integers(1, 2), pad=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(),
       act=st.sampled_from([None, "relu", "relu6"]), residual=st.booleans(), seed=st.integers(0, 3))
def test_random_shapes(c, h, w, k, sh, sw, pad, bias, act, residual, seed):
    if h + pad[0] + pad[2] < k or w + pad[1] + pad[3] < k:
        return
    check(c, h, w, k, (sh, sw), pad, bias, act, residual, seed=seed)


@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 4), nv=st.integers(1, 3), lanes=st.sampled_from([4, 8]), threads=st.integers(1, 3))
def test_knobs(rows, nv, lanes, threads):
    check(7, 13, 21, 3, (1, 1), (1, 1, 1, 1), True, None, True, knobs=DepthwiseKnobs(rows, nv, lanes, threads))


def test_bad_weight():
    with pytest.raises(TvmPatternError):
        depthwise_conv2d(np.zeros((4, 2, 3, 3), np.float32), (1, 4, 8, 8))
