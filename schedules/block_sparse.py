"""Default knobs of the block-sparse 1x1 conv and linear kernels on CPUs (x86 AVX2 / AVX-512, arm_cpu NEON), from
the target's lanes, vector registers and cores (``dense_cpu.cpu_info``), and the generators composed with them.

- ``conv2d_knobs``: the ``MR x NV`` register block of least modelled cycles over the layer (``MR`` divides the
  weight's block height ``G``; a block taller than the registers allow is done in ``G / MR`` passes), block
  chunks sized so a chunk's weights stay in L2 while the pixel tiles stream, at least two items per thread,
  packed pixel tiles where they pay (``PACK_REUSE``);
- ``linear_knobs``: enough independent accumulator chains to hide the FMA latency, one thread per core;
- ``gpu_conv2d`` / ``gpu_linear``: the OpenCL (Mali) variants, ``GPU_THREADS`` threads per work-group;
- ``MAX_DENSITY``: above this stored-weight density (padding zeros included) the dense kernel is faster.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tvm_pattern.kernels.block_sparse import (
    BlockConvKnobs,
    BlockGpuKnobs,
    BlockLinearKnobs,
    ConvShape,
    block_sparse_conv2d,
    block_sparse_conv2d_gpu,
    block_sparse_linear,
    block_sparse_linear_gpu,
    conv_shape,
    fit_conv_knobs,
)
from tvm_pattern.kernels.dense_common import DenseKernel
from tvm_pattern.sparsity.blocks import BlockSparse

from .dense_cpu import CpuInfo, cpu_info

__all__ = ["FMA_LATENCY", "GPU_THREADS", "MAX_DENSITY", "NAME", "conv2d", "conv2d_knobs", "gpu_conv2d", "gpu_linear",
           "linear", "linear_knobs"]  # fmt: skip

NAME = "block_sparse"
MAX_DENSITY = 0.4  # the sparse kernels pay below this density (measured: /work/notes/bench_block_sparse.py)
FMA_LATENCY = 4  # cycles; each accumulator takes one FMA per kept column, so a step lasts at least this long
# A conv step lasts at least this long: the FMA latency plus slack for the scattered input loads that feed it
# (measured at 8x, G=4, AVX2: 4x3 accumulators beat 4x2, e.g. 512->256@28 0.48 -> 0.41 ms, 1 thread)
ACC_LATENCY = 5
GPU_THREADS = 64  # work-group size of the OpenCL variants
SHORT_BLOCK = 32  # kept columns per block below which the longer pixel tile wins ties
CHUNK_BYTES = 128 << 10  # packed weights per block chunk (kept in L2 while the pixel tiles stream)
# Pack each pixel tile of the input rows first (``BlockConvKnobs.pack``) when every tile row feeds at least
# PACK_REUSE block columns (stored / (G * C)) and the tile fits in PACK_BYTES. Measured at 8x, G = 4, 2 threads,
# interleaved (AVX2): 1.02-1.31x on ResNet-50's expand convs and 1024->256@14 (8-64 columns per row), 0.71-0.96x
# at 0.75-5 (the reduce convs: the copy costs more than the reads it saves), 0.83x for 2048->512@7 (a 196 KB tile).
PACK_REUSE = 7
PACK_BYTES = 128 << 10


def _conv_cost(s: ConvShape, packed: BlockSparse, mr: int, nv: int, lanes: int, info: CpuInfo) -> float:
    """Modelled cycles: per kept column and pass, ``MR*NV`` FMAs, ``NV + MR + 1`` loads (inputs, broadcasts,
    the index), at least the FMA latency; per (block, pass, tile) ~30 cycles and the stores."""
    tiles = -(-s.pixels // (nv * lanes))
    passes = packed.group // mr
    step = max(mr * nv / info.fma_pipes, (nv + mr + 1) / 2, ACC_LATENCY)
    columns = float(packed.kept.sum())
    return tiles * passes * (columns * step + packed.blocks * (30 + mr * nv))


def conv2d_knobs(packed: BlockSparse, data_shape, strides=(1, 1), padding=(0, 0, 0, 0), target=None) -> BlockConvKnobs:
    """The register block of least modelled cost, chunks and tiles per item for the target's cores."""
    info = cpu_info(target)
    s = conv_shape(packed, data_shape, strides, padding)
    best, best_cost = None, float("inf")
    # Ties (the model often has them) go to the longer pixel tile when blocks keep few columns (measured at 8x:
    # 16->96@112 1.0 -> 0.25 ms, 64->256@56 0.43 -> 0.26 ms) and to the taller block when they keep many
    # (2048->512@7: 0.43 vs 0.50 ms), where a second pass re-reads every column's index and input vectors.
    few = packed.kept.mean() < SHORT_BLOCK if packed.blocks else True
    for nv in (4, 3, 2, 1) if few else (1, 2, 3, 4):
        for mr in range(1, packed.group + 1):
            if packed.group % mr or mr * nv + 2 > info.registers or mr * nv > 28:
                continue
            k = fit_conv_knobs(BlockConvKnobs(mr, nv, info.lanes, 1, 1, info.cores), s, packed.group)
            if (k.mr, k.nv) != (mr, nv):
                continue
            cost = _conv_cost(s, packed, k.mr, k.nv, k.lanes, info)
            if cost < best_cost * 0.999:
                best, best_cost = k, cost
    assert best is not None
    chunks = max(1, min(packed.blocks, -(-packed.stored * 4 // CHUNK_BYTES)))
    tiles = -(-s.pixels // (best.nv * best.lanes))
    want = -(-2 * info.cores // chunks)  # pixel chunks needed for two items per thread
    if tiles < want:  # too few pixel tiles: split the blocks further
        chunks = max(1, min(packed.blocks, -(-2 * info.cores // tiles)))
        want = 1
    pack = packed.stored >= PACK_REUSE * packed.group * s.c and s.c * best.nv * best.lanes * 4 <= PACK_BYTES
    return replace(best, block_chunks=chunks, px_tiles=max(1, -(-tiles // want)), threads=info.cores, pack=pack)


def linear_knobs(packed: BlockSparse, batch: int = 1, target=None) -> BlockLinearKnobs:
    """About ``2 * FMA_LATENCY`` accumulator vectors in flight (``U * B`` chains of ``G / lanes`` vectors)."""
    info = cpu_info(target)
    batch = max(1, int(batch))  # the generator refuses a batch < 1
    vectors = -(-packed.group // info.lanes)
    unroll = max(1, 2 * FMA_LATENCY // (batch * vectors))
    while unroll > 1 and (unroll * batch + 2) * vectors > info.registers:
        unroll //= 2
    return BlockLinearKnobs(unroll, info.cores)


def conv2d(packed: BlockSparse, data_shape, strides=(1, 1), padding=(0, 0, 0, 0), bias: np.ndarray | None = None,
           activation=None, residual: bool = False, target=None, knobs: BlockConvKnobs | None = None) -> DenseKernel:
    """``kernels.block_sparse.block_sparse_conv2d`` with ``knobs`` or the target's defaults."""
    knobs = knobs or conv2d_knobs(packed, data_shape, strides, padding, target)
    return block_sparse_conv2d(packed, data_shape, knobs, strides, padding, bias, activation, residual)


def linear(packed: BlockSparse, batch: int = 1, bias: np.ndarray | None = None, activation=None, target=None,
           knobs: BlockLinearKnobs | None = None) -> DenseKernel:
    """``kernels.block_sparse.block_sparse_linear`` with ``knobs`` or the target's defaults."""
    knobs = knobs or linear_knobs(packed, batch, target)
    return block_sparse_linear(packed, knobs, batch, bias, activation)


def gpu_conv2d(packed: BlockSparse, data_shape, strides=(1, 1), padding=(0, 0, 0, 0), bias: np.ndarray | None = None,
               activation=None, residual: bool = False, knobs: BlockGpuKnobs | None = None) -> DenseKernel:
    """``kernels.block_sparse.block_sparse_conv2d_gpu`` (OpenCL / Mali) with ``knobs`` or the defaults."""
    knobs = knobs or BlockGpuKnobs(GPU_THREADS)
    return block_sparse_conv2d_gpu(packed, data_shape, knobs, strides, padding, bias, activation, residual)


def gpu_linear(packed: BlockSparse, batch: int = 1, bias: np.ndarray | None = None, activation=None,
               knobs: BlockGpuKnobs | None = None) -> DenseKernel:
    """``kernels.block_sparse.block_sparse_linear_gpu`` (OpenCL / Mali) with ``knobs`` or the defaults."""
    return block_sparse_linear_gpu(packed, knobs or BlockGpuKnobs(GPU_THREADS), batch, bias, activation)
