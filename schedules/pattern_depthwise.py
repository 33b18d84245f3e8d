"""Default knobs of the pattern-sparse depthwise kernel on CPUs (x86 AVX2 / AVX-512, arm_cpu NEON), whether it
pays against the dense depthwise kernel, and the generator composed with them.

The register block follows ``dense_cpu.depthwise_knobs``, but only the pattern's taps (at most ``max_taps``) are
held as broadcast weights, so more registers are left for accumulators: vectors per row chosen to waste the
fewest recomputed columns at the output edge, then as many rows as fit (each extra row reuses the input rows it
shares with its neighbours).
"""

from __future__ import annotations

import numpy as np

from tvm_pattern.kernels.dense_common import DenseKernel
from tvm_pattern.kernels.depthwise_conv2d import geometry
from tvm_pattern.kernels.pattern_depthwise import CHANNEL_COST, PatternDepthwiseKnobs, pattern_depthwise
from tvm_pattern.sparsity.depthwise import DepthwisePatterns

from .dense_cpu import cpu_info

__all__ = ["MAX_PATTERNS", "NAME", "default_knobs", "depthwise", "pays"]

NAME = "pattern_depthwise"
MAX_PATTERNS = 64  # one loop body per pattern: beyond this the code grows more than the taps save
PAYS = 0.8  # the sparse kernel must be modelled at most this fraction of the dense one's cost


def default_knobs(packed: DepthwisePatterns, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), target=None
          ) -> PatternDepthwiseKnobs:  # fmt: skip
    """Rows x vectors from the registers left next to the pattern's broadcast taps and two temporaries."""
    info = cpu_info(target)
    kh, kw = packed.kernel
    g = geometry((packed.channels, 1, kh, kw), data_shape, strides, padding)
    lanes = info.lanes
    while lanes > 1 and lanes > g.ow:
        lanes //= 2
    budget = max(4, info.registers - max(packed.max_taps, 1) - 2)
    best_nv, best_cols = 1, None
    for nv in (4, 2, 1):  # a power of two: 3 vectors per row kept the block on the stack
        if nv > max(1, g.ow // lanes) or nv > budget:
            continue
        cols = -(-g.ow // (nv * lanes)) * nv * lanes  # columns computed, the shifted-back block's included
        if best_cols is None or cols < best_cols:
            best_nv, best_cols = nv, cols
    rows = max(1, min(budget // best_nv, g.oh, 4))
    return PatternDepthwiseKnobs(rows, best_nv, lanes, info.cores)


def pays(packed: DepthwisePatterns) -> tuple[bool, str]:
    """Whether the sparse kernel is worth generating, and why not: modelled cost per output (taps + the channel's
    packing and store) against the dense kernel's (every tap), and the pattern count."""
    kh, kw = packed.kernel
    if packed.k > MAX_PATTERNS:
        return False, f"{packed.k} distinct patterns > {MAX_PATTERNS}"
    taps = sum(len(packed.taps(p)) * int(packed.counts()[p]) for p in range(packed.k))
    sparse = taps + CHANNEL_COST * packed.channels
    dense = (kh * kw + CHANNEL_COST) * packed.channels
    if sparse > PAYS * dense:
        return False, (f"{taps / packed.channels:.1f} of {kh * kw} taps per channel on average: modelled "
                       f"{sparse / dense:.2f} of the dense kernel's cost (> {PAYS})")  # fmt: skip
    return True, ""


def depthwise(packed: DepthwisePatterns, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), bias=None,
              activation=None, residual: bool = False, target=None,
              knobs: PatternDepthwiseKnobs | None = None) -> DenseKernel:  # fmt: skip
    """``kernels.pattern_depthwise`` with ``knobs`` or the target's default knobs."""
    kn = knobs or default_knobs(packed, data_shape, strides, padding, target)
    bias = None if bias is None else np.asarray(bias, np.float32)
    return pattern_depthwise(packed, data_shape, kn, strides, padding, bias, activation, residual)
