"""When a 3x3 conv runs as Winograd F(4x4, 3x3) (``kernels.winograd_conv2d``), and with which knobs.

The rule, from interleaved A/B on a 2-vCPU AVX2 (Zen 3) VM, 2 threads, VGG-16's shapes with bias + ReLU:

- pattern-sparse at 2.25x (density 4/9): Winograd 1.07x (64@224), 1.5x (128@112), 1.65-1.95x (256@56),
  2.0-2.4x (512@28, 512@14) faster than the pattern kernel; at 8x (density 0.12) the pattern kernel is
  1.4-2.2x faster, so a layer goes to Winograd from ``MIN_DENSITY`` of its taps kept;
- unpruned layers: Winograd does a quarter of the direct conv's MACs;
- not below ``MIN_CHANNELS`` input channels (the GEMM over channels is too short: stems) nor on maps smaller
  than ``MIN_SIDE`` (a 7x7 map has 4 tiles, mostly padding in a 16-tile register block);
- the register block: ``default_knobs`` for the target's vector registers (a tall 24x1 block for 512-filter
  layers on small maps with AVX-512's 32, measured 1.1-1.25x on Zen 4);
- connectivity-sparse layers (``sparse_block``): filters in blocks sharing their kept input channels (pruned with
  ``kernel_block``) run the GEMM over the kept channels only. Interleaved against the pattern kernel at 8x
  (8 patterns, kernels kept in blocks of 6 filters, ReLU, medians of 9-15, 2 threads, AVX2 Zen 3, 2-5 runs):
  512@28 1.34-1.78x, 512@14 1.31-1.71x, 256@28 1.30-1.35x (input channels @ side), 256@14 0.82-1.25x (a 0.3 ms
  layer, mostly 1.14-1.25x), 256@56 0.91-1.04x, but 0.69-0.9x at 64@56, 128@56, 0.80x at 128@28, 0.62x at
  128@14 (the transforms outweigh a short GEMM) and 0.77x at 512@7 (4 tiles, half padding); hence at least
  ``SPARSE_MIN_CHANNELS`` input channels and sides from ``MIN_SIDE`` to ``SPARSE_MAX_SIDE``, blocks at least
  ``MIN_FILL`` full;
- x86 only. The arm_cpu (NEON) and Mali templates keep the direct kernels: their speed cannot be measured
  here (emulated phone, PoCL), and NEON's 4-lane vectors would need their own register block.
"""

from __future__ import annotations

import numpy as np
from tvm.target import Target

from tvm_pattern.kernels.dense_common import DenseKernel
from tvm_pattern.kernels.winograd_conv2d import block_csr, winograd_conv2d
from tvm_pattern.sparsity.blocks import KERNEL_BLOCK, KERNEL_BLOCK_MIN_CHANNELS
from tvm_pattern.targets import vector_registers

from .registry import family_name

__all__ = ["BLOCKS", "MIN_CHANNELS", "MIN_DENSITY", "MIN_FILL", "MIN_SIDE", "SPARSE_MAX_SIDE", "SPARSE_MIN_CHANNELS",
           "conv2d", "sparse_block", "unsuited"]  # fmt: skip

MIN_DENSITY = 0.3
MIN_CHANNELS = 16
MIN_SIDE = 8
SPARSE_MIN_CHANNELS = KERNEL_BLOCK_MIN_CHANNELS  # the pruner blocks 3x3 kernels from there on ("auto")
SPARSE_MAX_SIDE = 28
MIN_FILL = 0.9
BLOCKS = (KERNEL_BLOCK, 4)  # filter blocks of the sparse kernel, preferred first (6 x 2: the dense register block)


def unsuited(weight_shape, data_shape, strides, density: float, target: Target | None) -> str | None:
    """Why a conv should not run as Winograd on ``target`` (None: it should)."""
    if family_name(target) != "x86":
        return f"Winograd is not enabled for {family_name(target)}"
    if tuple(int(d) for d in weight_shape[2:]) != (3, 3) or tuple(int(s) for s in strides) != (1, 1):
        return "not a 3x3 stride-1 conv"
    if int(weight_shape[1]) < MIN_CHANNELS:
        return f"{int(weight_shape[1])} input channels < {MIN_CHANNELS}"
    if min(int(d) for d in data_shape[2:]) < MIN_SIDE:
        return f"map smaller than {MIN_SIDE}x{MIN_SIDE}"
    if density < MIN_DENSITY:
        return f"density {density:.2f} < {MIN_DENSITY}: the pattern kernel is faster"
    return None


def sparse_block(weight: np.ndarray, data_shape, strides, target: Target | None) -> tuple[int, str | None]:
    """(filters per block, None) if a connectivity-sparse conv should run as sparse Winograd on ``target``, else
    (0, why not). Dense-enough layers are ``unsuited``'s."""
    why = unsuited(weight.shape, data_shape, strides, 1.0, target)
    if why is not None:
        return 0, why
    if int(weight.shape[1]) < SPARSE_MIN_CHANNELS:
        return 0, f"{int(weight.shape[1])} input channels < {SPARSE_MIN_CHANNELS} for sparse Winograd"
    if max(int(d) for d in data_shape[2:]) > SPARSE_MAX_SIDE:
        return 0, f"map larger than {SPARSE_MAX_SIDE}x{SPARSE_MAX_SIDE} for sparse Winograd"
    fills = {mr: block_csr(weight, mr).fill for mr in BLOCKS}
    for mr, fill in fills.items():
        if fill >= MIN_FILL:
            return mr, None
    best = max(fills.values())
    return 0, f"kept kernels fill {best:.0%} of their filter blocks < {MIN_FILL:.0%} (not pruned in blocks)"


def conv2d(weight: np.ndarray, data_shape, padding, bias=None, activation=None, residual: bool = False,
           target: Target | None = None, block: int = 0) -> DenseKernel:
    """The Winograd kernel of one layer with the default knobs for ``target``'s vector registers
    (``winograd_conv2d.default_knobs``); ``block`` > 0: connectivity-sparse in blocks of that many filters."""
    return winograd_conv2d(weight, data_shape, padding, bias, activation, residual,
                           registers=vector_registers(target), block=block)
