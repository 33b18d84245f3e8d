"""Winograd F(4x4, 3x3) conv2d vs torch.nn.functional.conv2d on the same weights: shapes, paddings, knobs, epilogues."""

import numpy as np
import pytest
import torch
from helpers.dense import activate, close, run, with_residual
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import TvmPatternError
from tvm_pattern.kernels.winograd_conv2d import (
    WinogradKnobs,
    block_csr,
    default_knobs,
    geometry,
    sparse_knobs,
    winograd_conv2d,
)

ACTS = st.sampled_from([None, "relu", "relu6", ("clip", -0.5, 0.5)])


def check(oc, c, h, w, pad, bias, act, residual, knobs=None, seed=0, keep=1.0, block=0, kernels=None):
    """``block``: the connectivity-sparse kernel; ``kernels`` (O, C) bool: which 3x3 kernels the weight keeps."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((oc, c, 3, 3), dtype=np.float32) / np.float32(np.sqrt(c * 9))
    weight[rng.random(weight.shape) >= keep] = 0  # pattern zeros do not matter to Winograd; any zeros then
    if kernels is not None:
        weight *= kernels[:, :, None, None]
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32) if bias else None
    k = winograd_conv2d(weight, x.shape, pad, b, act, residual, knobs, block=block)
    top, left, bottom, right = pad
    xt = torch.nn.functional.pad(torch.tensor(x), (left, right, top, bottom))
    want = torch.nn.functional.conv2d(xt, torch.tensor(weight), None if b is None else torch.tensor(b))
    assert k.out_shape == tuple(want.shape)
    want, inputs = with_residual(want, x, residual, rng)
    close(run(k, *inputs), activate(want, act))


@pytest.mark.parametrize("c,oc,hw", [(16, 24, 14), (32, 16, 28), (24, 40, 9), (64, 64, 56)])
def test_vgg_like_layers(c, oc, hw):
    check(oc, c, hw, hw, (1, 1, 1, 1), True, "relu", False, keep=4 / 9)


@settings(max_examples=20, deadline=None)
@given(oc=st.integers(1, 20), c=st.integers(1, 9), h=st.integers(1, 19), w=st.integers(1, 19),
       pad=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(), act=ACTS, residual=st.booleans(),
       seed=st.integers(0, 3))
def test_random_shapes(oc, c, h, w, pad, bias, act, residual, seed):
    if h + pad[0] + pad[2] < 3 or w + pad[1] + pad[3] < 3:
        return
    check(oc, c, h, w, pad, bias, act, residual, seed=seed)


@settings(max_examples=12, deadline=None)
@given(mr=st.sampled_from([1, 4, 6, 12, 24]), nv=st.integers(1, 3), lanes=st.sampled_from([4, 8]),
       filters_outer=st.booleans(), blocks=st.sampled_from([0, 1, 2, 4]), hw=st.integers(5, 40))
def test_knobs(mr, nv, lanes, filters_outer, blocks, hw):
    knobs = WinogradKnobs(mr, nv, lanes, filters_outer, blocks * nv * 8)
    check(13, 7, hw, hw + 3, (1, 1, 1, 1), True, "relu", True, knobs)


def test_default_knobs_chunk_only_large_maps_of_few_channels():
    assert default_knobs((64, 64, 3, 3), (1, 64, 224, 224), 1).chunk > 0
    assert default_knobs((256, 256, 3, 3), (1, 256, 56, 56), 1).chunk == 0
    knobs = default_knobs((512, 512, 3, 3), (1, 512, 28, 28), 1)
    assert knobs.filters_outer and (knobs.mr, knobs.nv) == (6, 2)


def test_default_knobs_tall_block_only_with_32_registers_and_few_tiles():
    assert default_knobs((512, 512, 3, 3), (1, 512, 28, 28), 1, registers=32).mr == 24
    assert default_knobs((512, 512, 3, 3), (1, 512, 14, 14), 1, registers=32).nv == 1
    assert default_knobs((256, 256, 3, 3), (1, 256, 56, 56), 1, registers=32) == default_knobs(
        (256, 256, 3, 3), (1, 256, 56, 56), 1)
    assert default_knobs((512, 512, 3, 3), (1, 512, 14, 14), 1).mr == 6  # AVX2: 24 accumulators would spill
    assert default_knobs((256, 256, 3, 3), (1, 256, 14, 14), 1, registers=32).mr == 6  # measured slower


def block_kernels(oc: int, c: int, group: int, keep: float, seed: int) -> np.ndarray:
    """(O, C) bool: blocks of ``group`` filters keeping the same random channels (the last block shorter)."""
    rng = np.random.default_rng(seed)
    chosen = rng.random((-(-oc // group), c)) < keep
    return np.repeat(chosen, group, axis=0)[:oc]


@settings(max_examples=20, deadline=None)
@given(oc=st.integers(1, 20), c=st.integers(1, 12), h=st.integers(1, 19), w=st.integers(1, 19),
       pad=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(), act=ACTS, residual=st.booleans(),
       mr=st.sampled_from([4, 6]), group=st.sampled_from([1, 2, 4, 6, 12]), keep=st.sampled_from([0.0, 0.3, 1.0]),
       seed=st.integers(0, 3))
def test_sparse_random_shapes_and_structures(oc, c, h, w, pad, bias, act, residual, mr, group, keep, seed):
    """Blocks matching the kernel's ``mr`` or not (a block's channels are the union of its filters'), all kept,
    none kept, partial last blocks, pattern zeros on top."""
    if h + pad[0] + pad[2] < 3 or w + pad[1] + pad[3] < 3:
        return
    check(oc, c, h, w, pad, bias, act, residual, seed=seed, keep=4 / 9, block=mr,
          kernels=block_kernels(oc, c, group, keep, seed))


@settings(max_examples=8, deadline=None)
@given(nv=st.integers(1, 3), lanes=st.sampled_from([4, 8]), filters_outer=st.booleans(),
       blocks=st.sampled_from([0, 1, 2]), hw=st.integers(5, 40))
def test_sparse_knobs(nv, lanes, filters_outer, blocks, hw):
    knobs = WinogradKnobs(6, nv, lanes, filters_outer, blocks * nv * 8)
    check(13, 16, hw, hw + 3, (1, 1, 1, 1), True, "relu", True, knobs, block=6,
          kernels=block_kernels(13, 16, 6, 0.3, hw))


def test_sparse_vgg_like_layer_at_8x():
    check(96, 256, 14, 14, (1, 1, 1, 1), True, "relu", False, keep=4 / 9, block=6,
          kernels=block_kernels(96, 256, 6, 1 / 3.6, 0))


def test_block_csr_unions_and_fill():
    kernels = np.zeros((7, 5), bool)
    kernels[0, 1] = kernels[1, 3] = kernels[6, 4] = True  # block 0: filters 0-3, block 1: filters 4-6 (padded)
    weight = np.zeros((7, 5, 3, 3), np.float32)
    weight[kernels, 1, 1] = 1.0
    csr = block_csr(weight, 4)
    assert csr.offsets.tolist() == [0, 2, 3] and csr.channels.tolist() == [1, 3, 4]
    assert csr.kernels == 3 and csr.fill == pytest.approx(3 / 12)
    full = block_csr(np.ones((12, 5, 3, 3), np.float32), 6)
    assert full.fill == 1.0 and full.entries == 10


def test_sparse_knobs_take_the_block():
    csr = block_csr(np.ones((64, 256, 3, 3), np.float32), 4)
    knobs = sparse_knobs((64, 256, 3, 3), (1, 256, 14, 14), 1, csr)
    assert (knobs.mr, knobs.nv, knobs.lanes) == (4, 2, 4)
    with pytest.raises(TvmPatternError, match="mr must be its block"):
        winograd_conv2d(np.ones((8, 3, 3, 3), np.float32), (1, 3, 8, 8), knobs=WinogradKnobs(6, 2, 8), block=4)
    with pytest.raises(TvmPatternError, match="block must be >= 0"):
        winograd_conv2d(np.ones((8, 3, 3, 3), np.float32), (1, 3, 8, 8), block=-6)


def test_tall_block_default_numerics():
    knobs = default_knobs((520, 24, 3, 3), (1, 24, 12, 12), 1, 32)
    assert (knobs.mr, knobs.nv) == (24, 1)
    check(520, 24, 12, 12, (1, 1, 1, 1), True, "relu", True, knobs)


def test_geometry_pads_tiles_to_register_blocks():
    g = geometry((10, 3, 3, 3), (1, 3, 14, 14), 1, WinogradKnobs(6, 2, 4))
    assert (g.oh, g.th, g.tw, g.twv) == (14, 4, 4, 4)
    assert g.tp % 16 == 0 and g.tp >= g.th * g.twv and g.op == 12


def test_bad_args():
    with pytest.raises(TvmPatternError, match="3x3"):
        winograd_conv2d(np.zeros((4, 3, 5, 5), np.float32), (1, 3, 8, 8))
    with pytest.raises(TvmPatternError, match="channels"):
        winograd_conv2d(np.zeros((4, 3, 3, 3), np.float32), (1, 2, 8, 8))
    with pytest.raises(TvmPatternError, match="smaller"):
        winograd_conv2d(np.zeros((4, 3, 3, 3), np.float32), (1, 3, 2, 2), 0)
    with pytest.raises(TvmPatternError, match="chunk"):
        winograd_conv2d(np.zeros((4, 3, 3, 3), np.float32), (1, 3, 8, 8), knobs=WinogradKnobs(6, 2, 8, False, 24))
    with pytest.raises(TvmPatternError, match="activation"):
        winograd_conv2d(np.zeros((4, 3, 3, 3), np.float32), (1, 3, 8, 8), activation="gelu")
