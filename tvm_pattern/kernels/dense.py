"""Dense / linear ``out[b, o] = sum_i x[b, i] * W[o, i] (+ bias[o])`` at batch 1 (GEMV) and small batches.

Design. At batch 1 the layer is bound by reading the weights once (VGG-16's FC1: 411 MB), so the
weights are repacked at compile time into one sequential stream per block of ``MO`` output rows,
``wp[ob, i // V, m, i % V]`` (the input dimension zero-padded to whole vectors): a thread walks its
blocks front to back (one stream the hardware prefetcher follows, both cores on contiguous halves).
The block's ``MO * B`` accumulator vectors stay in registers; per input vector it loads ``MO`` weight
vectors and ``B`` input vectors (the inputs, copied once into a zero-padded buffer, stay in L1/L2).
Lanes are summed once per output at the end; bias and activation in the store. Edge blocks are shifted
back (recompute a few rows).

Call: ``func(x (B, I), wp, [bias (O,)], out (B, O))``; ``Kernel.arrays = (wp[, bias])``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import TvmPatternError
from .dense_common import DenseKernel, bias_array, check_activation, epilogue, i64
from .parse_cache import parse_source

__all__ = ["DenseKnobs", "dense", "pack_weights"]


@dataclass(frozen=True)
class DenseKnobs:
    mo: int  # output rows per block
    lanes: int
    threads: int


def pack_weights(weight: np.ndarray, mo: int, lanes: int) -> np.ndarray:
    o, i = weight.shape
    ipad = -(-i // lanes) * lanes
    w = np.zeros((o, ipad), np.float32)
    w[:, :i] = weight
    nob = -(-o // mo)
    starts = [min(ob * mo, o - mo) for ob in range(nob)]
    blocks = np.stack([w[s:s + mo] for s in starts])  # (nob, mo, ipad)
    blocks = blocks.reshape(nob, mo, ipad // lanes, lanes).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocks.reshape(-1))


def _source(o: int, i: int, batch: int, kn: DenseKnobs, bias: bool, bounds) -> str:
    mo, v = kn.mo, kn.lanes
    nvec = -(-i // v)
    ipad = nvec * v
    nob = -(-o // mo)
    per = -(-nob // kn.threads)
    params = [f"x: T.Buffer({i64(batch, i)}, 'float32')", f"wp: T.Buffer({i64(nob * mo * ipad)}, 'float32')"]
    if bias:
        params.append(f"bias: T.Buffer({i64(o)}, 'float32')")
    params.append(f"out: T.Buffer({i64(batch, o)}, 'float32')")
    o0 = f"T.min(ob * {mo}, {o - mo})" if o % mo else f"ob * {mo}"
    lanes_sum = " + ".join(f"acc[m * {batch} + bb, {lane}]" for lane in range(v))
    value = f"{lanes_sum}" + (" + bias[o0 + m]" if bias else "")
    lines = [
        "@T.prim_func(s_tir=True)",
        f"def dense({', '.join(params)}):",
        "    T.func_attr({'tirx.noalias': True})",
        f"    xp = T.alloc_buffer(({batch * ipad},), 'float32')",
        f"    for bb, j in T.grid({batch}, {ipad}):",
        f"        xp[bb * {ipad} + j] = T.if_then_else(j < {i}, x[bb, T.min(j, {i - 1})], T.float32(0))",
        f"    for t in T.parallel({kn.threads}):",
        f"        for obi in range({per}):",
        f"            ob: T.let = t * {per} + obi",
        f"            if ob < {nob}:",
        f"                o0: T.let = {o0}",
        f"                acc = T.alloc_buffer(({mo * batch}, {v}), 'float32')",
        f"                for a in T.unroll({mo * batch}):",
        f"                    for l in T.vectorized({v}):",
        "                        acc[a, l] = T.float32(0)",
        f"                for q in range({nvec}):",
        f"                    for m in T.unroll({mo}):",
        f"                        for bb in T.unroll({batch}):",
        f"                            for l in T.vectorized({v}):",
        f"                                acc[m * {batch} + bb, l] = acc[m * {batch} + bb, l] + "
        f"wp[((ob * {nvec} + q) * {mo} + m) * {v} + l] * xp[bb * {ipad} + q * {v} + l]",
        f"                for m in T.unroll({mo}):",
        f"                    for bb in T.unroll({batch}):",
        f"                        out[bb, o0 + m] = {epilogue(value, bounds)}",
    ]
    return "\n".join(lines) + "\n"


def dense(
    weight: np.ndarray,
    knobs: DenseKnobs,
    batch: int = 1,
    bias: np.ndarray | None = None,
    activation=None,
) -> DenseKernel:
    """``nn.functional.linear`` with ``weight`` (O, I) for inputs (batch, I).

    Returns ``Kernel(func, arrays=(wp[, bias]), out_shape=(batch, O))``; call ``func(x, *arrays, out)``.
    """
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 2 or min(weight.shape) < 1:
        raise TvmPatternError(f"weight must be (O, I), got shape {weight.shape}")
    if int(batch) < 1:
        raise TvmPatternError(f"batch must be >= 1, got {batch}")
    o, i = weight.shape
    batch = int(batch)
    bounds = check_activation(activation)
    kn = replace(knobs, mo=max(1, min(knobs.mo, o)))
    func = parse_source(_source(o, i, batch, kn, bias is not None, bounds))
    arrays = [pack_weights(weight, kn.mo, kn.lanes)]
    if bias is not None:
        b = bias_array(bias, o)
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (batch, o))
