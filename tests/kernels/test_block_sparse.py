"""Block-sparse 1x1 conv2d and linear kernels (``schedules.block_sparse`` defaults and random knobs) vs PyTorch on
the same pruned weights: shapes, block heights, densities, strides, padding, batches and every epilogue; the
OpenCL (Mali) variants on PoCL."""

import numpy as np
import pytest
import torch
from helpers.dense import activate, close, run, with_residual
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern import opencl
from tvm_pattern.errors import TvmPatternError
from tvm_pattern.kernels.block_sparse import BlockConvKnobs, BlockLinearKnobs, block_sparse_conv2d, pad_columns
from tvm_pattern.schedules import mali
from tvm_pattern.schedules.block_sparse import conv2d, conv2d_knobs, gpu_conv2d, gpu_linear, linear, linear_knobs
from tvm_pattern.sparsity.blocks import pack, unpack

ACTS = st.sampled_from([None, "relu", "relu6", ("clip", -0.5, 0.5)])
GROUPS = st.sampled_from([1, 2, 4, 8, 16])


def block_weight(rng, o: int, i: int, group: int, keep: float) -> np.ndarray:
    """(o, i) weights whose blocks of ``group`` rows keep the same ~``keep`` of the columns."""
    w = rng.standard_normal((o, i), dtype=np.float32) / np.float32(np.sqrt(max(1.0, keep * i)))
    cols = rng.random((-(-o // group), i)) < keep
    return w * np.repeat(cols, group, axis=0)[:o]


def check_conv(oc, c, h, w, group, keep, stride, pad, bias, act, residual, knobs=None, seed=0):
    rng = np.random.default_rng(seed)
    weight = block_weight(rng, oc, c, group, keep)
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32) if bias else None
    packed = pack(weight)
    if knobs is None:
        k = conv2d(packed, x.shape, stride, pad, b, act, residual)
    else:
        k = block_sparse_conv2d(packed, x.shape, knobs, stride, pad, b, act, residual)
    top, left, bottom, right = pad
    xt = torch.nn.functional.pad(torch.tensor(x), (left, right, top, bottom))
    w4 = torch.tensor(weight).reshape(oc, c, 1, 1)
    want = torch.nn.functional.conv2d(xt, w4, None if b is None else torch.tensor(b), stride)
    assert k.out_shape == tuple(want.shape)
    want, inputs = with_residual(want, x, residual, rng)
    close(run(k, *inputs), activate(want, act))


@pytest.mark.parametrize("c,oc,hw,s,g", [(64, 256, 14, 1, 4), (256, 64, 14, 1, 8), (128, 512, 7, 1, 16),
                                         (64, 128, 15, 2, 4), (96, 24, 28, 1, 2), (32, 20, 9, 1, 1)])
def test_network_like_layers(c, oc, hw, s, g):
    check_conv(oc, c, hw, hw, g, 1 / 8, (s, s), (0, 0, 0, 0), True, "relu", s == 1)


def test_default_packs_the_pixel_tile_of_expanding_convs():
    """Packed tiles where each tile row feeds >= 8 block columns and the tile fits L2 (ResNet's expand convs)."""
    rng = np.random.default_rng(0)
    expand, reduce = pack(block_weight(rng, 256, 64, 4, 1 / 8)), pack(block_weight(rng, 64, 256, 4, 1 / 8))
    assert conv2d_knobs(expand, (1, 64, 56, 56)).pack
    assert not conv2d_knobs(reduce, (1, 256, 56, 56)).pack
    check_conv(256, 64, 12, 12, 4, 1 / 8, (1, 1), (0, 0, 0, 0), True, "relu", True)


@settings(max_examples=15, deadline=None)
@given(oc=st.integers(1, 40), c=st.integers(1, 40), h=st.integers(1, 11), w=st.integers(1, 11), group=GROUPS,
       keep=st.sampled_from([0.0, 0.05, 0.125, 0.3, 1.0]), sh=st.integers(1, 3), sw=st.integers(1, 3),
       pad=st.tuples(*[st.integers(0, 1)] * 4), bias=st.booleans(), act=ACTS, residual=st.booleans(),
       seed=st.integers(0, 3))
def test_conv_random_shapes(oc, c, h, w, group, keep, sh, sw, pad, bias, act, residual, seed):
    check_conv(oc, c, h, w, group, keep, (sh, sw), pad, bias, act, residual, seed=seed)


@settings(max_examples=12, deadline=None)
@given(mr=st.integers(1, 8), nv=st.integers(1, 4), lanes=st.sampled_from([4, 8]), chunks=st.integers(1, 5),
       tiles=st.integers(1, 4), threads=st.integers(1, 3), group=GROUPS, stride=st.integers(1, 2),
       pack=st.booleans())
def test_conv_knobs(mr, nv, lanes, chunks, tiles, threads, group, stride, pack):
    knobs = BlockConvKnobs(mr, nv, lanes, chunks, tiles, threads, pack)
    check_conv(37, 24, 10, 13, group, 0.25, (stride, stride), (0, 0, 0, 0), True, "relu6", stride == 1, knobs)


def check_linear(o, i, batch, group, keep, bias, act, knobs=None, seed=0):
    rng = np.random.default_rng(seed)
    weight = block_weight(rng, o, i, group, keep)
    x = rng.standard_normal((batch, i), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32) if bias else None
    k = linear(pack(weight), batch, b, act, knobs=knobs)
    want = torch.nn.functional.linear(torch.tensor(x), torch.tensor(weight), None if b is None else torch.tensor(b))
    assert k.out_shape == tuple(want.shape)
    close(run(k, x), activate(want, act))


@settings(max_examples=20, deadline=None)
@given(o=st.integers(1, 70), i=st.integers(1, 90), batch=st.integers(1, 8), group=GROUPS,
       keep=st.sampled_from([0.0, 0.05, 0.125, 0.4, 1.0]), bias=st.booleans(), act=ACTS, seed=st.integers(0, 3))
def test_linear_random_shapes(o, i, batch, group, keep, bias, act, seed):
    check_linear(o, i, batch, group, keep, bias, act, seed=seed)


@settings(max_examples=8, deadline=None)
@given(unroll=st.integers(1, 6), threads=st.integers(1, 4), group=GROUPS, batch=st.integers(1, 3))
def test_linear_knobs(unroll, threads, group, batch):
    check_linear(45, 130, batch, group, 0.125, True, "relu", BlockLinearKnobs(unroll, threads))


def test_fc_like_layer():
    check_linear(512, 2048, 1, 8, 1 / 8, True, "relu")


def test_pad_columns_keeps_the_weight():
    packed = pack(block_weight(np.random.default_rng(0), 20, 30, 4, 0.3))
    padded = pad_columns(packed, 4)
    assert np.all(padded.kept % 4 == 0)
    dense = np.zeros((padded.blocks, 4, 30), np.float32)  # summed: padding entries repeat column 0 with zeros
    blk = np.repeat(np.arange(padded.blocks), padded.kept)
    np.add.at(dense, (blk, slice(None), padded.cols), padded.values.reshape(-1, 4))
    np.testing.assert_array_equal(dense.reshape(-1, 30)[:20], unpack(packed))


def test_default_knobs_fit_registers():
    packed = pack(block_weight(np.random.default_rng(0), 256, 64, 4, 1 / 8))
    kn = conv2d_knobs(packed, (1, 64, 56, 56), target="llvm")
    assert packed.group % kn.mr == 0 and kn.mr * kn.nv + kn.nv + 2 <= 32
    assert linear_knobs(packed, 1, "llvm").unroll >= 1


def test_bad_args():
    packed = pack(block_weight(np.random.default_rng(0), 8, 6, 2, 0.5))
    with pytest.raises(TvmPatternError, match="channels"):
        conv2d(packed, (1, 5, 4, 4))
    with pytest.raises(TvmPatternError, match="NCHW"):
        conv2d(packed, (1, 6, 4))
    with pytest.raises(TvmPatternError, match="activation"):
        conv2d(packed, (1, 6, 4, 4), activation="gelu")
    with pytest.raises(TvmPatternError, match="bias"):
        linear(packed, 1, np.zeros(3, np.float32))
    with pytest.raises(TvmPatternError, match="batch"):
        linear(packed, 0)


def run_pocl(kernel, *inputs: np.ndarray) -> np.ndarray:
    """The GPU kernel's output on PoCL; the output starts as NaN so unwritten elements show."""
    out = np.full(kernel.out_shape, np.nan, np.float32)
    return opencl.run_opencl(kernel.func, mali.local_target(), [*inputs, *kernel.arrays, out])[-1]


@settings(max_examples=5, deadline=None)
@given(oc=st.integers(1, 24), c=st.integers(1, 24), hw=st.integers(1, 9), group=GROUPS, stride=st.integers(1, 2),
       pad=st.integers(0, 1), bias=st.booleans(), act=ACTS, residual=st.booleans(), seed=st.integers(0, 3))
def test_gpu_conv_on_pocl(oc, c, hw, group, stride, pad, bias, act, residual, seed):
    rng = np.random.default_rng(seed)
    weight = block_weight(rng, oc, c, group, 0.25)
    x = rng.standard_normal((1, c, hw, hw), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32) if bias else None
    k = gpu_conv2d(pack(weight), x.shape, stride, pad, b, act, residual)
    xt = torch.nn.functional.pad(torch.tensor(x), (pad,) * 4)
    want = torch.nn.functional.conv2d(xt, torch.tensor(weight).reshape(oc, c, 1, 1),
                                      None if b is None else torch.tensor(b), stride)  # fmt: skip
    inputs = [x]
    if residual:
        r = rng.standard_normal(want.shape, dtype=np.float32)
        want, inputs = want + torch.tensor(r), [x, r]
    close(run_pocl(k, *inputs), activate(want, act))


@settings(max_examples=4, deadline=None)
@given(o=st.integers(1, 40), i=st.integers(1, 60), batch=st.integers(1, 4), group=GROUPS, bias=st.booleans(),
       act=ACTS, seed=st.integers(0, 3))
def test_gpu_linear_on_pocl(o, i, batch, group, bias, act, seed):
    rng = np.random.default_rng(seed)
    weight = block_weight(rng, o, i, group, 0.2)
    x = rng.standard_normal((batch, i), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32) if bias else None
    want = torch.nn.functional.linear(torch.tensor(x), torch.tensor(weight), None if b is None else torch.tensor(b))
    close(run_pocl(gpu_linear(pack(weight), batch, b, act), x), activate(want, act))
