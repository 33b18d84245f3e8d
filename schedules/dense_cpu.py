"""Default knobs of the dense-op kernels on CPUs (x86 AVX2 / AVX-512 and arm_cpu NEON), from small cost models
of the target's vector lanes, vector registers and cores, and the generators composed with them.

The generators (``tvm_pattern.kernels.dense_conv2d`` / ``depthwise_conv2d`` / ``dense``) take typed knobs and know
no target; this module is where the target comes in (``cpu_info``). One module for both CPU families: only the
register file differs (AVX2: 8 fp32 lanes, 16 registers; AVX-512: 8 lanes, 32 registers; NEON: 4 lanes,
32 registers), and the block shapes follow from it.

- ``conv2d_knobs``: the MR x NV register block of least modelled cycles (``_model_cost``), tiles sized so a
  tile's packed weights fit half of a 512 KiB L2, input panels for every flat-pitch conv;
- ``depthwise_knobs``: rows x vectors from the registers left next to the broadcast taps;
- ``dense_knobs``: the most output rows per weight-stream block that fit the registers.

8-lane ymm vectors on AVX-512 too: as fast as zmm on CPUs that double-pump 512-bit FMAs, and no frequency
penalty elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm.target import Target, codegen

from tvm_pattern.kernels.dense import DenseKnobs, dense
from tvm_pattern.kernels.dense_common import DenseKernel
from tvm_pattern.kernels.dense_conv2d import ConvGeometry, ConvKnobs, blocks, dense_conv2d, fit_knobs, geometry
from tvm_pattern.kernels.depthwise_conv2d import DepthwiseKnobs, depthwise_conv2d
from tvm_pattern.kernels.depthwise_conv2d import geometry as dw_geometry
from tvm_pattern.targets import resolve_target, target_cores, vector_registers

__all__ = ["NAME", "CpuInfo", "candidate_knobs", "conv2d", "conv2d_block_knobs", "conv2d_knobs", "cpu_info",
           "dense_knobs", "depthwise", "depthwise_knobs", "linear"]  # fmt: skip

NAME = "dense_cpu"


@dataclass(frozen=True)
class CpuInfo:
    """What the default knobs size register blocks by."""

    lanes: int  # fp32 lanes per vector register the kernels use
    registers: int  # architectural vector registers
    cores: int
    fma_pipes: int  # vector FMAs per cycle at ``lanes`` (latency hiding needs lanes*pipes*latency in flight)


def _has(feature: str, target: Target) -> bool:
    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # a target LLVM does not know: assume the feature is absent
        return False


def cpu_info(target: Target | str | None = None) -> CpuInfo:
    """Vector lanes / registers / cores of ``target`` (None: this machine), from its triple and LLVM features."""
    target = resolve_target(target)
    cores = target_cores(target)
    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith(("aarch64", "arm")):
        return CpuInfo(lanes=4, registers=vector_registers(target), cores=cores, fma_pipes=2)
    registers = vector_registers(target)
    if registers >= 32 or _has("avx2", target) or _has("avx", target):
        return CpuInfo(lanes=8, registers=registers, cores=cores, fma_pipes=2)
    return CpuInfo(lanes=4, registers=16, cores=cores, fma_pipes=1)


# ---------------------------------------------------------------------------------------------- conv2d

def _model_cost(g: ConvGeometry, mr: int, nv: int, lanes: int, info: CpuInfo, rows: bool = False) -> float:
    """Modelled cycles of the whole layer for an MR x NV block (lower is better).

    Per k-step a block issues MR*NV FMAs (``fma_pipes`` per cycle) and NV vector loads + MR broadcasts
    (2 loads per cycle), and it needs ``5 * fma_pipes`` independent accumulators to hide the FMA latency
    (5 cycles). Edge blocks are full blocks (shifted back), so the padded-up channel / pixel counts are
    what is paid; each block adds ~30 cycles (init, loop) plus its store (scalar when the output is
    cropped from the flat pitch).
    """
    nob, npb = blocks(g, mr, nv * lanes, rows)
    acc = mr * nv
    step = max(acc / info.fma_pipes, (nv + mr) / 1.5, 5.0)  # loads: measured 12x1 40% slower than 6x2
    store = acc * (lanes * 1.5 if g.wq != g.ow and not rows else 1)
    return nob * npb * (g.k * step + 30 + store)


def candidate_knobs(g: ConvGeometry, info: CpuInfo) -> list[tuple[int, int]]:
    """Register blocks (MR, NV) whose accumulators, NV input vectors, one broadcast and one spare register
    fit the register file. NV is a power of two: with NV = 3 LLVM kept the accumulator block on the stack
    (hundreds of spill loads/stores in the hot loop, on AVX2 and AVX-512 alike; 4x4 and 12x2 were clean)."""
    out = []
    for nv in (1, 2, 4):
        for mr in range(1, 17):
            if mr * nv + nv + 2 <= info.registers and mr * nv <= 28:
                out.append((mr, nv))
    return out


def conv2d_knobs(weight_shape, data_shape, strides=(1, 1), padding=(0, 0, 0, 0), target=None) -> ConvKnobs:
    """The block of least modelled cost, tiles sized so a tile's weights fit half of a 512 KiB L2."""
    info = cpu_info(target)
    g = geometry(weight_shape, data_shape, strides, padding)
    best, best_cost = None, float("inf")
    for rows in ((False, True) if g.wq != g.ow else (False,)):
        for mr, nv in candidate_knobs(g, info):
            k = fit_knobs(ConvKnobs(mr, nv, info.lanes, 1, 1, info.cores, rows=rows), g)
            if (k.mr, k.nv, k.rows) != (mr, nv, rows):
                continue
            cost = _model_cost(g, k.mr, k.nv, k.lanes, info, rows)
            if cost < best_cost * 0.999:
                best, best_cost = k, cost
    assert best is not None
    return _tiles(best, g, info)


def conv2d_block_knobs(weight_shape, data_shape, strides, padding, mr: int, nv: int, rows: bool = False,
                       target=None) -> ConvKnobs:
    """The knobs of one MR x NV block fitted to the layer, tiled as ``conv2d_knobs`` tiles its pick (a tuner's
    candidate: ``conv2d_knobs`` is this for the block of least modelled cost)."""
    info = cpu_info(target)
    g = geometry(weight_shape, data_shape, strides, padding)
    return _tiles(fit_knobs(ConvKnobs(mr, nv, info.lanes, 1, 1, info.cores, rows=rows), g), g, info)


def _tiles(k: ConvKnobs, g: ConvGeometry, info: CpuInfo) -> ConvKnobs:
    nob, npb = blocks(g, k.mr, k.nv * k.lanes, k.rows)
    per_block = g.k * k.mr * 4  # bytes of one channel block's packed weights
    oc_blocks = max(1, min(nob, (256 << 10) // max(per_block, 1)))
    # at least 2 tiles per thread when the channel split alone cannot feed every thread
    n_occ = -(-nob // oc_blocks)
    px_blocks = npb
    if n_occ < 2 * info.cores:
        want = -(-2 * info.cores // n_occ)
        px_blocks = max(1, -(-npb // want))
    # A contiguous K x NR input panel per pixel block (an im2col of the block, built in parallel before the
    # GEMM) for every flat-pitch conv. Measured (1 thread, Zen3-class AVX2 VM, GFLOP/s without -> with):
    # 1x1 2048->512@7 52 -> 73, 1024->256@14 73 -> 88, 64->256@56 44-69 -> 76-86; 3x3 128@28 58 -> 74-80,
    # 256@14 59 -> 79, 512@14/2 43 -> 70, 256@28/2 37-51 -> 60-74, 64@56 73 -> 73. Stems (row mode, K of 27
    # or 147) gain nothing from it, so row mode reads the phase planes directly.
    panel = not k.rows
    return replace(k, oc_blocks=oc_blocks, px_blocks=px_blocks, threads=info.cores, panel=panel)



# ---------------------------------------------------------------------------------------------- depthwise

def depthwise_knobs(weight_shape, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), target=None) -> DepthwiseKnobs:
    """Accumulators = registers left after the KH*KW broadcast weights and two temporaries (at least 4):
    as many vectors per row as fit the output width, then rows (each extra row reuses the input rows it
    shares with its neighbours)."""
    info = cpu_info(target)
    g = dw_geometry(weight_shape, data_shape, strides, padding)
    lanes = info.lanes
    while lanes > 1 and lanes > g.ow:
        lanes //= 2
    budget = max(4, info.registers - g.kh * g.kw - 2)
    nv = max(1, min(budget, g.ow // lanes, 4))
    nv = 1 << (nv.bit_length() - 1)  # a power of two: 3 vectors per row kept the block on the stack
    rows = max(1, min(budget // nv, g.oh, 4))
    return DepthwiseKnobs(rows, nv, lanes, info.cores)



# ---------------------------------------------------------------------------------------------- dense

def dense_knobs(weight_shape, batch: int, target=None) -> DenseKnobs:
    """The most output rows whose ``MO * B`` accumulators, ``min(MO, B)`` operand vectors and a spare fit
    the registers (more rows per block = fewer passes over the inputs and fewer, longer loop bodies)."""
    info = cpu_info(target)
    o = int(weight_shape[0])
    best = 1
    for mo in range(1, 17):
        if mo * batch + min(mo, batch) + 2 <= info.registers and mo <= o:
            best = mo
    return DenseKnobs(best, info.lanes, info.cores)


# ---------------------------------------------------------------------------------------------- compose

def conv2d(weight: np.ndarray, data_shape, strides=(1, 1), padding=(0, 0, 0, 0), bias=None, activation=None,
           residual: bool = False, target=None, knobs: ConvKnobs | None = None) -> DenseKernel:
    """``kernels.dense_conv2d`` with ``knobs`` or the target's default knobs."""
    weight = np.asarray(weight, np.float32)
    knobs = knobs or conv2d_knobs(weight.shape, data_shape, strides, padding, target)
    return dense_conv2d(weight, data_shape, knobs, strides, padding, bias, activation, residual)


def depthwise(weight: np.ndarray, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), bias=None, activation=None,
              residual: bool = False, target=None, knobs: DepthwiseKnobs | None = None) -> DenseKernel:
    """``kernels.depthwise_conv2d`` with ``knobs`` or the target's default knobs."""
    weight = np.asarray(weight, np.float32)
    knobs = knobs or depthwise_knobs(weight.shape, data_shape, strides, padding, target)
    return depthwise_conv2d(weight, data_shape, knobs, strides, padding, bias, activation, residual)


def linear(weight: np.ndarray, batch: int = 1, bias=None, activation=None, target=None,
           knobs: DenseKnobs | None = None) -> DenseKernel:
    """``kernels.dense`` with ``knobs`` or the target's default knobs."""
    weight = np.asarray(weight, np.float32)
    knobs = knobs or dense_knobs(weight.shape, batch, target)
    return dense(weight, knobs, batch, bias, activation)
