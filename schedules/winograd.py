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
- x86 only. The arm_cpu (NEON) and Mali templates keep the direct kernels: their speed cannot be measured
  here (emulated phone, PoCL), and NEON's 4-lane vectors would need their own register block.
"""

from __future__ import annotations

import numpy as np
from tvm.target import Target

from tvm_pattern.kernels.dense_common import DenseKernel
from tvm_pattern.kernels.winograd_conv2d import winograd_conv2d
from tvm_pattern.targets import vector_registers

from .registry import family_name

__all__ = ["MIN_CHANNELS", "MIN_DENSITY", "MIN_SIDE", "conv2d", "unsuited"]

MIN_DENSITY = 0.3
MIN_CHANNELS = 16
MIN_SIDE = 8


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


def conv2d(weight: np.ndarray, data_shape, padding, bias=None, activation=None, residual: bool = False,
           target: Target | None = None) -> DenseKernel:
    """The Winograd kernel of one layer with the default knobs for ``target``'s vector registers
    (``winograd_conv2d.default_knobs``)."""
    return winograd_conv2d(weight, data_shape, padding, bias, activation, residual,
                           registers=vector_registers(target))
