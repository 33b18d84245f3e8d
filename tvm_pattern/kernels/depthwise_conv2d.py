"""Depthwise conv2d NCHW fp32 (3x3 or any KxK, any stride / padding), register-blocked per channel.

Design. Threads take contiguous channel ranges. Per channel the zero-padded input plane is packed into a
thread-local slab split into stride phases (``slab[ph, pw, i, j] = pad(x)[i*sh + ph, j*sw + pw]``), so
every tap of a vector of outputs is one contiguous (unaligned) vector load at any stride; interior rows
are copied as whole vectors, only the halo is zeroed. Then an ``R`` rows x ``NV`` vectors output block
accumulates the ``KH*KW`` taps with the channel's weights held as broadcast values (``T.let``); tap
offsets are literals, and a load shared by several taps / rows is loaded once (LLVM CSE on the unrolled
block). Edge blocks are shifted back to end on the edge (full blocks, vector stores, a few outputs
recomputed). Epilogue in the store: bias, residual add, activation.

Call: ``func(data, [residual], w, [bias], out)``; ``Kernel.arrays = (w (C*KH*KW,), [bias (C,)])``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import TvmPatternError
from .dense_common import DenseKernel, bias_array, check_activation, epilogue, i64, padding4, pair
from .parse_cache import parse_source

__all__ = ["DepthwiseGeometry", "DepthwiseKnobs", "depthwise_conv2d", "geometry"]


@dataclass(frozen=True)
class DepthwiseKnobs:
    rows: int  # output rows per register block
    nv: int  # vectors per row of the block
    lanes: int
    threads: int


@dataclass(frozen=True)
class DepthwiseGeometry:
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    top: int
    left: int
    oh: int
    ow: int
    hq: int
    wq: int


def geometry(weight_shape, data_shape, strides, padding) -> DepthwiseGeometry:
    c, one, kh, kw = (int(x) for x in weight_shape)
    if one != 1:
        raise TvmPatternError(f"depthwise weight must be (C, 1, KH, KW), got {tuple(weight_shape)}")
    if len(data_shape) != 4 or min(data_shape) < 1 or int(data_shape[1]) != c:
        raise TvmPatternError(f"data_shape must be NCHW with {c} channels, got {data_shape}")
    n, _, h, w = (int(x) for x in data_shape)
    sh, sw = pair(strides, "strides")
    top, left, bottom, right = padding4(padding)
    hp, wp = h + top + bottom, w + left + right
    if hp < kh or wp < kw:
        raise TvmPatternError(f"input {data_shape} with padding {padding} is smaller than the kernel")
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    return DepthwiseGeometry(n, c, h, w, kh, kw, sh, sw, top, left, oh, ow, -(-hp // sh), -(-wp // sw))


def _source(g: DepthwiseGeometry, kn: DepthwiseKnobs, bias: bool, residual: bool, bounds) -> str:
    r, nv, v = kn.rows, kn.nv, kn.lanes
    nr = nv * v
    nrb, ncb = -(-g.oh // r), -(-g.ow // nr)
    per = -(-g.c // kn.threads)
    nph, npw = g.sh, g.sw
    plane = g.hq * g.wq
    params = [f"data: T.Buffer({i64(g.n, g.c, g.h, g.w)}, 'float32')"]
    if residual:
        params.append(f"res: T.Buffer({i64(g.n, g.c, g.oh, g.ow)}, 'float32')")
    params.append(f"wt: T.Buffer({i64(g.c * g.kh * g.kw)}, 'float32')")
    if bias:
        params.append(f"bias: T.Buffer({i64(g.c)}, 'float32')")
    params.append(f"out: T.Buffer({i64(g.n, g.c, g.oh, g.ow)}, 'float32')")
    ntap = g.kh * g.kw
    lines = [
        "@T.prim_func(s_tir=True)",
        f"def depthwise_conv2d({', '.join(params)}):",
        "    T.func_attr({'tirx.noalias': True})",
        f"    for t in T.parallel({kn.threads}):",
        f"        slab = T.alloc_buffer(({nph * npw * plane},), 'float32')",
        f"        for b, ci in T.grid({g.n}, {per}):",
        f"            c: T.let = t * {per} + ci",
        f"            if c < {g.c}:",
    ]
    ind = " " * 16
    for ph in range(nph):
        for pw in range(npw):
            base = (ph * npw + pw) * plane
            jlo = max(0, -(-(g.left - pw) // g.sw))
            jhi = min(g.wq - 1, (g.w - 1 + g.left - pw) // g.sw)
            lines += [
                f"{ind}for i in range({g.hq}):",
                f"{ind}    y{ph}{pw}: T.let = i * {g.sh} + {ph - g.top}",
                f"{ind}    if 0 <= y{ph}{pw} and y{ph}{pw} < {g.h}:",
            ]
            if jlo > 0:
                lines += [f"{ind}        for j in T.vectorized({jlo}):",
                          f"{ind}            slab[{base} + i * {g.wq} + j] = T.float32(0)"]
            if jhi >= jlo:
                lines += [f"{ind}        for j in T.vectorized({jhi - jlo + 1}):",
                          f"{ind}            slab[{base} + i * {g.wq} + {jlo} + j] = data[b, c, y{ph}{pw}, "
                          f"(j + {jlo}) * {g.sw} + {pw - g.left}]"]
            if jhi + 1 < g.wq:
                lines += [f"{ind}        for j in T.vectorized({g.wq - jhi - 1}):",
                          f"{ind}            slab[{base} + i * {g.wq} + {jhi + 1} + j] = T.float32(0)"]
            lines += [f"{ind}    else:",
                      f"{ind}        for j in T.vectorized({g.wq}):",
                      f"{ind}            slab[{base} + i * {g.wq} + j] = T.float32(0)"]
    lines += [f"{ind}w{k}: T.let = wt[c * {ntap} + {k}]" for k in range(ntap)]
    if bias:
        lines.append(f"{ind}bc: T.let = bias[c]")
    r0 = f"T.min(rb * {r}, {g.oh - r})" if g.oh % r else f"rb * {r}"
    c0 = f"T.min(cb * {nr}, {g.ow - nr})" if g.ow % nr else f"cb * {nr}"
    lines += [
        f"{ind}for rb, cb in T.grid({nrb}, {ncb}):",
        f"{ind}    r0: T.let = {r0}",
        f"{ind}    c0: T.let = {c0}",
        f"{ind}    acc = T.alloc_buffer(({r}, {nr}), 'float32')",
        f"{ind}    for rr in T.unroll({r}):",
        f"{ind}        for j in T.vectorized({nr}):",
        f"{ind}            acc[rr, j] = {'bc' if bias else 'T.float32(0)'}",
    ]
    for dy in range(g.kh):
        for dx in range(g.kw):
            k = dy * g.kw + dx
            base = ((dy % g.sh) * npw + dx % g.sw) * plane
            lines += [
                f"{ind}    for rr in T.unroll({r}):",
                f"{ind}        for u in T.unroll({nv}):",
                f"{ind}            for l in T.vectorized({v}):",
                f"{ind}                acc[rr, u * {v} + l] = acc[rr, u * {v} + l] + w{k} * slab[{base} + "
                f"(r0 + rr + {dy // g.sh}) * {g.wq} + c0 + u * {v} + l + {dx // g.sw}]",
            ]
    value = "acc[rr, j]" + (" + res[b, c, r0 + rr, c0 + j]" if residual else "")
    lines += [
        f"{ind}    for rr in T.unroll({r}):",
        f"{ind}        for j in T.vectorized({nr}):",
        f"{ind}            out[b, c, r0 + rr, c0 + j] = {epilogue(value, bounds)}",
    ]
    return "\n".join(lines) + "\n"


def depthwise_conv2d(
    weight: np.ndarray,
    data_shape,
    knobs: DepthwiseKnobs,
    strides=(1, 1),
    padding=(1, 1, 1, 1),
    bias: np.ndarray | None = None,
    activation=None,
    residual: bool = False,
) -> DenseKernel:
    """Depthwise NCHW conv2d of ``weight`` (C, 1, KH, KW) (groups = C, channel multiplier 1).

    Returns ``Kernel(func, arrays=(w[, bias]), out_shape)``; call ``func(data, [residual], *arrays, out)``.
    """
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 4:
        raise TvmPatternError(f"weight must be (C, 1, KH, KW), got shape {weight.shape}")
    g = geometry(weight.shape, data_shape, strides, padding)
    bounds = check_activation(activation)
    kn = knobs
    lanes = kn.lanes
    while lanes > 1 and lanes > g.ow:
        lanes //= 2
    kn = replace(kn, lanes=lanes, nv=max(1, min(kn.nv, g.ow // lanes)), rows=max(1, min(kn.rows, g.oh)))
    func = parse_source(_source(g, kn, bias is not None, residual, bounds))
    arrays = [np.ascontiguousarray(weight.reshape(-1))]
    if bias is not None:
        b = bias_array(bias, g.c)
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (g.n, g.c, g.oh, g.ow))
