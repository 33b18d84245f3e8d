"""Dense conv2d generator with ``schedules.dense_cpu`` defaults vs torch.nn.functional.conv2d, same weights."""

import numpy as np
import pytest
import torch
from helpers.dense import activate, close, run, with_residual
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import TvmPatternError
from tvm_pattern.kernels.dense_conv2d import ConvKnobs
from tvm_pattern.schedules.dense_cpu import conv2d, conv2d_knobs

ACTS = st.sampled_from([None, "relu", "relu6", ("clip", -0.5, 0.5)])


def check(oc, c, h, w, kh, kw, stride, pad, bias, act, residual, knobs=None, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((oc, c, kh, kw), dtype=np.float32) / np.float32(np.sqrt(c * kh * kw))
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32) if bias else None
    k = conv2d(weight, x.shape, stride, pad, b, act, residual, knobs=knobs)
    top, left, bottom, right = pad
    xt = torch.nn.functional.pad(torch.tensor(x), (left, right, top, bottom))
    want = torch.nn.functional.conv2d(xt, torch.tensor(weight), None if b is None else torch.tensor(b), stride)
    assert k.out_shape == tuple(want.shape)
    want, inputs = with_residual(want, x, residual, rng)
    close(run(k, *inputs), activate(want, act))


@pytest.mark.parametrize("c,oc,hw,k,s", [(3, 16, 32, 7, 2), (16, 24, 14, 3, 1), (16, 24, 15, 3, 2), (32, 40, 7, 1, 1),
                                         (24, 20, 14, 1, 2), (3, 8, 30, 3, 2)])
def test_resnet_like_layers(c, oc, hw, k, s):
    p = k // 2
    check(oc, c, hw, hw, k, k, (s, s), (p, p, p, p), True, "relu", k == 1 and s == 1)


@settings(max_examples=25, deadline=None)
@given(oc=st.integers(1, 20), c=st.integers(1, 9), h=st.integers(1, 13), w=st.integers(1, 13),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3),
       pad=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(), act=ACTS, residual=st.booleans(),
       seed=st.integers(0, 3))
def test_random_shapes(oc, c, h, w, kh, kw, sh, sw, pad, bias, act, residual, seed):
    if h + pad[0] + pad[2] < kh or w + pad[1] + pad[3] < kw:
        return
    check(oc, c, h, w, kh, kw, (sh, sw), pad, bias, act, residual, seed=seed)


@settings(max_examples=10, deadline=None)
@given(mr=st.integers(1, 8), nv=st.integers(1, 3), lanes=st.sampled_from([4, 8]), ocb=st.integers(1, 4),
       pxb=st.integers(1, 4), threads=st.integers(1, 3), k=st.sampled_from([1, 3]), rows=st.booleans(),
       panel=st.booleans())
def test_knobs(mr, nv, lanes, ocb, pxb, threads, k, rows, panel):
    knobs = ConvKnobs(mr, nv, lanes, ocb, pxb, threads, panel, rows)
    check(19, 6, 11, 12, k, k, (1, 1), (k // 2,) * 4, True, "relu", True, knobs=knobs)


def test_default_knobs_fit_registers():
    kn = conv2d_knobs((256, 64, 1, 1), (1, 64, 56, 56), 1, 0, target="llvm")
    assert kn.mr * kn.nv + kn.nv + 2 <= 16 or kn.mr * kn.nv + kn.nv + 2 <= 32


def test_bad_args():
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(TvmPatternError):
        conv2d(w, (1, 2, 8, 8))
    with pytest.raises(TvmPatternError):
        conv2d(w, (1, 3, 2, 2))
    with pytest.raises(TvmPatternError):
        conv2d(w, (1, 3, 8, 8), activation="gelu")
