"""Block-sparse 1x1 conv2d (NCHW) and linear layers as TVM PrimFuncs, generated per layer in TVMScript.

The weight is a ``sparsity.blocks.BlockSparse``: blocks of ``G`` output rows sharing their kept input columns.

1x1 conv (``block_sparse_conv2d``): the register-blocked GEMM of ``dense_conv2d`` over gathered input rows. For
one pixel tile of ``NV`` vectors of ``V`` pixels and one block, an ``MR x NV`` accumulator block stays in
registers (``MR`` divides ``G``; a taller block is done in ``G / MR`` passes over its columns); per kept column
``c`` it loads ``NV`` input vectors of row ``c`` and broadcasts ``MR`` weights, so one input load feeds ``MR``
FMAs::

    for t in parallel(threads):
      for item of t:                         # (pixel chunk, block chunk); chunks balanced by stored weights
        for pixel tile p0 of the chunk:      # the last tile shifted back to end on the edge
          for block b of the chunk, for sub-block s:
            acc[MR, NV*V] = bias
            for kept column e of b:          # xo = cols[e] * P: a row of the input
              for m: acc[m, :] += vals[e*G + s*MR + m] * x[xo + p0 : xo + p0 + NV*V]
            out[b*G + s*MR + m, p0:...] = act(acc[m] (+ residual))

A strided or padded 1x1 conv first copies the pixels it reads (zero padding included) into a contiguous
``(C, OH*OW)`` buffer, in parallel over channels; a stride-1 unpadded one reads its input in place.

Linear (``block_sparse_linear``, batch 1..8, memory bound): per block, ``U x B`` accumulator vectors of ``G``
lanes (one lane per output row; ``U`` independent chains over the columns hide the FMA latency); per kept
column one contiguous ``G``-weight vector times the broadcast input ``x[:, c]``. Each thread streams a
contiguous run of blocks (balanced by stored weights) once; each block's columns are padded to a multiple of
``U`` with zero weights.

GPU (OpenCL, Mali; ``*_gpu``): a simple variant, one thread per (block, group of 4 pixels) holding ``G x 4``
accumulators (conv; a strided / padded conv copies its pixels in a first launch), one thread per (batch row,
block) holding ``G`` (linear).

Calls: ``conv(data, [residual], vals, xoff, offsets, bsplit, [bias], out)``,
``linear(x, vals, cols, offsets, tsplit, [bias], out)`` (the GPU variants take no ``bsplit`` / ``tsplit``);
``DenseKernel.arrays`` hold everything between.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np

from ..errors import TvmPatternError
from ..sparsity.blocks import BlockSparse
from .dense_common import DenseKernel, bias_array, check_activation, epilogue, padding4, pair
from .tvmscript import Script, buffer_param

__all__ = ["BlockConvKnobs", "BlockGpuKnobs", "BlockLinearKnobs", "ConvShape", "balanced_split", "block_sparse_conv2d",
           "block_sparse_conv2d_gpu", "block_sparse_linear", "block_sparse_linear_gpu", "conv_shape", "fit_conv_knobs",
           "pad_columns"]  # fmt: skip


@dataclass(frozen=True)
class BlockConvKnobs:
    mr: int  # output rows per register block (a divisor of G)
    nv: int  # vectors per register block
    lanes: int  # fp32 lanes per vector
    block_chunks: int  # chunks the blocks are split into (work items along the output channels)
    px_tiles: int  # pixel tiles per work item
    threads: int
    pack: bool = False  # copy each pixel tile of every input row into a contiguous per-thread tile first


@dataclass(frozen=True)
class BlockLinearKnobs:
    unroll: int  # independent accumulator chains over a block's columns (U)
    threads: int


@dataclass(frozen=True)
class ConvShape:
    n: int
    c: int
    h: int
    w: int
    oc: int
    sh: int
    sw: int
    top: int
    left: int
    oh: int
    ow: int

    @property
    def direct(self) -> bool:
        """Stride 1, no padding: the kernel reads the input in place."""
        return (self.sh, self.sw, self.top, self.left, self.oh, self.ow) == (1, 1, 0, 0, self.h, self.w)

    @property
    def inside(self) -> bool:
        """No output pixel reads padding (a strided unpadded conv)."""
        return (self.top, self.left) == (0, 0) and (self.oh - 1) * self.sh < self.h and (self.ow - 1) * self.sw < self.w

    @property
    def pixels(self) -> int:
        return self.oh * self.ow


def conv_shape(packed: BlockSparse, data_shape, strides=(1, 1), padding=(0, 0, 0, 0)) -> ConvShape:
    """The sizes of a 1x1 conv of ``packed`` on ``data_shape``; ``TvmPatternError`` if they do not fit."""
    if len(data_shape) != 4 or min(data_shape) < 1:
        raise TvmPatternError(f"data_shape must be NCHW with positive sizes, got {data_shape}")
    n, c, h, w = (int(d) for d in data_shape)
    if c != packed.in_features:
        raise TvmPatternError(f"data has {c} channels but the weight expects {packed.in_features}")
    sh, sw = pair(strides, "strides")
    top, left, bottom, right = padding4(padding)
    oh, ow = (h + top + bottom - 1) // sh + 1, (w + left + right - 1) // sw + 1
    return ConvShape(n, c, h, w, packed.out_features, sh, sw, top, left, oh, ow)


def balanced_split(packed: BlockSparse, parts: int) -> np.ndarray:
    """(parts + 1,) block boundaries so each part stores about the same weights (a block counts at least one)."""
    work = np.maximum(packed.kept, 1).astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(work)])
    bounds = np.searchsorted(cum, cum[-1] * np.arange(parts + 1) / parts, side="left")
    bounds[0], bounds[-1] = 0, packed.blocks
    return np.maximum.accumulate(bounds).astype(np.int32)


def pad_columns(packed: BlockSparse, multiple: int) -> BlockSparse:
    """Each block's kept columns padded to a multiple of ``multiple`` with zero weights (column 0)."""
    kept = packed.kept
    padded = -(-kept // multiple) * multiple
    if np.array_equal(padded, kept):
        return packed
    g = packed.group
    offsets = np.zeros(packed.blocks + 1, np.int32)
    offsets[1:] = np.cumsum(padded)
    cols = np.zeros(int(offsets[-1]), np.int32)
    values = np.zeros(int(offsets[-1]) * g, np.float32)
    for b in range(packed.blocks):
        lo, hi, dst = int(packed.offsets[b]), int(packed.offsets[b + 1]), int(offsets[b])
        cols[dst:dst + hi - lo] = packed.cols[lo:hi]
        values[dst * g:(dst + hi - lo) * g] = packed.values[lo * g:hi * g]
    return replace(packed, offsets=offsets, cols=cols, values=values)


def _nonempty(a: np.ndarray, dtype) -> np.ndarray:
    """A kernel argument never has zero size (an all-zero weight keeps no column)."""
    return np.ascontiguousarray(a if a.size else np.zeros(1, dtype), dtype=dtype)


def _padded_bias(bias: np.ndarray | None, packed: BlockSparse) -> np.ndarray | None:
    """The (O,) bias zero-padded to whole blocks (the kernels initialise padding rows too)."""
    if bias is None:
        return None
    b = bias_array(bias, packed.out_features)
    out = np.zeros(packed.blocks * packed.group, np.float32)
    out[:len(b)] = b
    return out


# ---------------------------------------------------------------------------------------------- conv2d

def fit_conv_knobs(knobs: BlockConvKnobs, s: ConvShape, group: int) -> BlockConvKnobs:
    """Shrink the tile to the pixels (the last tile is shifted back, so a tile never exceeds them) and make
    ``MR`` a divisor of ``G``."""
    lanes = knobs.lanes
    while lanes > 1 and lanes > s.pixels:
        lanes //= 2
    nv = max(1, min(knobs.nv, s.pixels // lanes))
    mr = max(1, min(knobs.mr, group))
    while group % mr:
        mr -= 1
    return replace(knobs, mr=mr, nv=nv, lanes=lanes, block_chunks=max(1, knobs.block_chunks),
                   px_tiles=max(1, knobs.px_tiles), threads=max(1, knobs.threads))  # fmt: skip


def _copy_source(script: Script, s: ConvShape) -> None:
    """The pixels a strided / padded 1x1 conv reads, as a contiguous (C, OH*OW) buffer, zero padding included."""
    with script.block(f"for c in T.parallel({s.c}):"), script.block(f"for i in range({s.oh}):"):
        if s.inside:  # no padding read: a plain strided copy, no bounds tests per pixel
            script.line(f"src0: T.let = (b * {s.c} + c) * {s.h * s.w} + i * {s.sh * s.w}")
            with script.block(f"for j in range({s.ow}):"):
                script.line(f"xs[c * {s.pixels} + i * {s.ow} + j] = dflat[src0 + j * {s.sw}]")
            return
        script.line(f"y: T.let = i * {s.sh} - {s.top}")
        with script.block(f"for j in range({s.ow}):"):
            script.line(f"x: T.let = j * {s.sw} - {s.left}")
            script.line(f"xs[c * {s.pixels} + i * {s.ow} + j] = T.if_then_else(0 <= y and y < {s.h} and 0 <= x "
                        f"and x < {s.w}, dflat[(b * {s.c} + c) * {s.h * s.w} + T.max(T.min(y, {s.h - 1}), 0) * "
                        f"{s.w} + T.max(T.min(x, {s.w - 1}), 0)], T.float32(0))")  # fmt: skip


def _input_rows(s: ConvShape) -> tuple[str, str]:
    """(buffer, offset of image ``b``) of the input rows the kernel reads: in place, or the strided copy ``xs``."""
    return ("dflat", f"b * {s.c * s.pixels} + ") if s.direct else ("xs", "")


def _pack_tile_source(script: Script, s: ConvShape, kn: BlockConvKnobs) -> None:
    """Copy pixel tile ``p0`` of every input row into the thread's contiguous ``(C, NR)`` tile.

    Why: the kept columns of a block are input rows ``pixels`` floats apart; such a pitch maps one tile's lines
    of all rows onto few L1 sets, so they evict each other and every block reloads them from L2. The copy reads
    each row's tile once; the blocks then read a few contiguous KB.
    """
    nr = kn.nv * kn.lanes
    src, base = _input_rows(s)
    with script.block(f"for c in range({s.c}):"), script.block(f"for l in T.vectorized({nr}):"):
        script.line(f"tile[c * {nr} + l] = {src}[{base}c * {s.pixels} + p0 + l]")


def _tile_source(script: Script, s: ConvShape, kn: BlockConvKnobs, g: int, bias: bool, residual: bool,
                 bounds) -> None:
    """Every (block, sub-block) of the item's block chunk on pixel tile ``p0``."""
    mr, nv, v = kn.mr, kn.nv, kn.lanes
    nr = nv * v
    src, base, shift = ("tile", "", "") if kn.pack else (*_input_rows(s), " + p0")  # packed: xoff = column * NR
    with script.block("for bi in range(bsplit[bc + 1] - bsplit[bc]):"):
        script.line("blk: T.let = bsplit[bc] + bi", "e0: T.let = offsets[blk]")
        with script.block(f"for sb in range({g // mr}):"):
            script.line(f"r0: T.let = blk * {g} + sb * {mr}", f"acc = T.alloc_buffer(({mr}, {nr}), 'float32')")
            with script.block(f"for m in T.unroll({mr}):"), script.block(f"for u in T.unroll({nv}):"), \
                    script.block(f"for l in T.vectorized({v}):"):  # one register per (m, u), any NV
                script.line(f"acc[m, u * {v} + l] = {'bias[r0 + m]' if bias else 'T.float32(0)'}")
            with script.block("for k in range(offsets[blk + 1] - e0):"):
                script.line("e: T.let = e0 + k", f"xo: T.let = {base}xoff[e]{shift}")
                with script.block(f"for m in T.unroll({mr}):"):
                    script.line(f"wv: T.let = vals[e * {g} + sb * {mr} + m]")
                    with script.block(f"for u in T.unroll({nv}):"), script.block(f"for l in T.vectorized({v}):"):
                        script.line(f"acc[m, u * {v} + l] = acc[m, u * {v} + l] + wv * {src}[xo + u * {v} + l]")
            rows = script.block(f"if r0 + m < {s.oc}:") if s.oc % g else contextlib.nullcontext()
            with script.block(f"for m in T.unroll({mr}):"), rows:  # padding rows of the last block: no store
                script.line(f"ob: T.let = (b * {s.oc} + r0 + m) * {s.pixels} + p0")
                value = f"acc[m, u * {v} + l]" + (f" + rflat[ob + u * {v} + l]" if residual else "")
                with script.block(f"for u in T.unroll({nv}):"), script.block(f"for l in T.vectorized({v}):"):
                    script.line(f"oflat[ob + u * {v} + l] = {epilogue(value, bounds)}")


def _conv_source(s: ConvShape, packed: BlockSparse, kn: BlockConvKnobs, bias: bool, residual: bool,
                 bounds) -> Script:
    g, nr = packed.group, kn.nv * kn.lanes
    npt = -(-s.pixels // nr)
    n_pc = -(-npt // kn.px_tiles)
    items = n_pc * kn.block_chunks
    per = -(-items // kn.threads)
    out_shape = (s.n, s.oc, s.oh, s.ow)
    params = [buffer_param("data", (s.n, s.c, s.h, s.w))]
    if residual:
        params.append(buffer_param("res", out_shape))
    params += [buffer_param("vals", (max(1, packed.stored),)),
               buffer_param("xoff", (max(1, len(packed.cols)),), "int32"),
               buffer_param("offsets", (packed.blocks + 1,), "int32"),
               buffer_param("bsplit", (kn.block_chunks + 1,), "int32")]  # fmt: skip
    if bias:
        params.append(buffer_param("bias", (packed.blocks * g,)))
    params.append(buffer_param("out", out_shape))
    script = Script()
    with script.prim_func("block_sparse_conv2d", params, {"tirx.noalias": True}):
        script.line(f"dflat = T.decl_buffer(({s.n * s.c * s.h * s.w},), 'float32', data=data.data)",
                    f"oflat = T.decl_buffer(({s.n * s.oc * s.pixels},), 'float32', data=out.data)")
        if residual:
            script.line(f"rflat = T.decl_buffer(({s.n * s.oc * s.pixels},), 'float32', data=res.data)")
        if not s.direct:
            script.line(f"xs = T.alloc_buffer(({s.c * s.pixels},), 'float32')")
        with script.block(f"for b in range({s.n}):"):
            if not s.direct:
                _copy_source(script, s)
            p0 = f"T.min(pt * {nr}, {s.pixels - nr})" if s.pixels % nr else f"pt * {nr}"
            with script.block(f"for t in T.parallel({kn.threads}):"):
                if kn.pack:
                    script.line(f"tile = T.alloc_buffer(({s.c * nr},), 'float32', align=64)")
                with script.block(f"for it in range({per}):"):
                    script.line(f"item: T.let = t * {per} + it")
                    with script.block(f"if item < {items}:"):
                        script.line(f"pc: T.let = item // {kn.block_chunks}",
                                    f"bc: T.let = item % {kn.block_chunks}")
                        with script.block(f"for pti in range({kn.px_tiles}):"):
                            script.line(f"pt: T.let = pc * {kn.px_tiles} + pti")
                            with script.block(f"if pt < {npt}:"):
                                script.line(f"p0: T.let = {p0}")
                                if kn.pack:
                                    _pack_tile_source(script, s, kn)
                                _tile_source(script, s, kn, g, bias, residual, bounds)
    return script


def block_sparse_conv2d(packed: BlockSparse, data_shape, knobs: BlockConvKnobs, strides=(1, 1),
                        padding=(0, 0, 0, 0), bias: np.ndarray | None = None, activation=None,
                        residual: bool = False) -> DenseKernel:
    """A 1x1 NCHW conv2d of the block-sparse ``packed`` (O, C) weight for inputs of ``data_shape``.

    ``activation``: None, "relu", "relu6" or ("clip", lo, hi); ``residual``: a second input (N, O, OH, OW)
    added before the activation. Call ``func(data, [residual], *arrays, out)``.
    """
    s = conv_shape(packed, data_shape, strides, padding)
    bounds = check_activation(activation)
    kn = fit_conv_knobs(knobs, s, packed.group)
    kn = replace(kn, block_chunks=min(kn.block_chunks, packed.blocks))
    b = _padded_bias(bias, packed)
    func = _conv_source(s, packed, kn, b is not None, residual, bounds).parse()
    pitch = kn.nv * kn.lanes if kn.pack else s.pixels  # a column's offset: into the packed tile, or the input
    arrays = [_nonempty(packed.values, np.float32), _nonempty(packed.cols.astype(np.int64) * pitch, np.int32),
              packed.offsets.astype(np.int32), balanced_split(packed, kn.block_chunks)]  # fmt: skip
    if b is not None:
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (s.n, s.oc, s.oh, s.ow))


# ---------------------------------------------------------------------------------------------- linear

def _linear_source(packed: BlockSparse, batch: int, kn: BlockLinearKnobs, bias: bool, bounds) -> Script:
    g, u, o = packed.group, kn.unroll, packed.out_features
    params = [buffer_param("x", (batch, packed.in_features)), buffer_param("vals", (max(1, packed.stored),)),
              buffer_param("cols", (max(1, len(packed.cols)),), "int32"),
              buffer_param("offsets", (packed.blocks + 1,), "int32"),
              buffer_param("tsplit", (kn.threads + 1,), "int32")]  # fmt: skip
    if bias:
        params.append(buffer_param("bias", (packed.blocks * g,)))
    params.append(buffer_param("out", (batch, o)))
    script = Script()
    lanes_sum = " + ".join(f"acc[bb * {u} + {i}, l]" for i in range(u))
    value = lanes_sum + (" + bias[r]" if bias else "")
    with script.prim_func("block_sparse_linear", params, {"tirx.noalias": True}), \
            script.block(f"for t in T.parallel({kn.threads}):"), \
            script.block("for bi in range(tsplit[t + 1] - tsplit[t]):"):
        script.line("blk: T.let = tsplit[t] + bi", "e0: T.let = offsets[blk]",
                    f"acc = T.alloc_buffer(({batch * u}, {g}), 'float32')")
        with script.block(f"for a in T.unroll({batch * u}):"), script.block(f"for l in T.vectorized({g}):"):
            script.line("acc[a, l] = T.float32(0)")
        with script.block(f"for q in range((offsets[blk + 1] - e0) // {u}):"), \
                script.block(f"for i in T.unroll({u}):"):
            script.line(f"e: T.let = e0 + q * {u} + i", "ci: T.let = cols[e]")
            with script.block(f"for bb in T.unroll({batch}):"):
                script.line("xv: T.let = x[bb, ci]")
                with script.block(f"for l in T.vectorized({g}):"):
                    script.line(f"acc[bb * {u} + i, l] = acc[bb * {u} + i, l] + vals[e * {g} + l] * xv")
        with script.block(f"for bb in T.unroll({batch}):"), script.block(f"for l in T.unroll({g}):"):
            script.line(f"r: T.let = blk * {g} + l")
            with script.block(f"if r < {o}:"):
                script.line(f"out[bb, r] = {epilogue(value, bounds)}")
    return script


def block_sparse_linear(packed: BlockSparse, knobs: BlockLinearKnobs, batch: int = 1,
                        bias: np.ndarray | None = None, activation=None) -> DenseKernel:
    """``nn.functional.linear`` with the block-sparse ``packed`` (O, I) weight for inputs (batch, I).

    Call ``func(x, *arrays, out)``; ``arrays`` = (vals, cols, offsets, tsplit[, bias]).
    """
    if int(batch) < 1:
        raise TvmPatternError(f"batch must be >= 1, got {batch}")
    bounds = check_activation(activation)
    kn = replace(knobs, unroll=max(1, knobs.unroll), threads=max(1, min(knobs.threads, packed.blocks)))
    padded = pad_columns(packed, kn.unroll)
    b = _padded_bias(bias, packed)
    func = _linear_source(padded, int(batch), kn, b is not None, bounds).parse()
    arrays = [_nonempty(padded.values, np.float32), _nonempty(padded.cols, np.int32),
              padded.offsets.astype(np.int32), balanced_split(padded, kn.threads)]  # fmt: skip
    if b is not None:
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (int(batch), packed.out_features))


# ---------------------------------------------------------------------------------------------- GPU (Mali)

@dataclass(frozen=True)
class BlockGpuKnobs:
    threads: int  # work-group size (threads per group, along the work items)


def _gpu_copy_source(script: Script, s: ConvShape, threads: int) -> None:
    """Launch 1 (strided / padded convs): the pixels the conv reads as a contiguous (C, OH*OW) buffer."""
    total = s.n * s.c * s.pixels
    with script.block(f"for bx in T.thread_binding({-(-total // threads)}, thread='blockIdx.x'):"), \
            script.block(f"for tx in T.thread_binding({threads}, thread='threadIdx.x'):"):
        script.line(f"gid: T.let = bx * {threads} + tx")
        with script.block(f"if gid < {total}:"):
            script.line(f"cc: T.let = gid // {s.pixels}", f"i: T.let = gid % {s.pixels} // {s.ow} * {s.sh} - {s.top}",
                        f"j: T.let = gid % {s.ow} * {s.sw} - {s.left}")  # fmt: skip
            script.line(f"xs[gid] = T.if_then_else(0 <= i and i < {s.h} and 0 <= j and j < {s.w}, "
                        f"dflat[cc * {s.h * s.w} + T.max(T.min(i, {s.h - 1}), 0) * {s.w} + T.max(T.min(j, {s.w - 1}), "
                        f"0)], T.float32(0))")  # fmt: skip


def _gpu_conv_source(s: ConvShape, packed: BlockSparse, kn: BlockGpuKnobs, bias: bool, residual: bool,
                     bounds) -> Script:
    """One thread per (image, block, group of ``lanes`` pixels): ``G x lanes`` accumulators in registers."""
    g, lanes = packed.group, min(4, s.pixels)
    groups = -(-s.pixels // lanes)
    items = s.n * packed.blocks * groups
    out_shape = (s.n, s.oc, s.oh, s.ow)
    params = [buffer_param("data", (s.n, s.c, s.h, s.w))]
    if residual:
        params.append(buffer_param("res", out_shape))
    params += [buffer_param("vals", (max(1, packed.stored),)),
               buffer_param("xoff", (max(1, len(packed.cols)),), "int32"),
               buffer_param("offsets", (packed.blocks + 1,), "int32")]  # fmt: skip
    if bias:
        params.append(buffer_param("bias", (packed.blocks * g,)))
    params.append(buffer_param("out", out_shape))
    script = Script()
    p0 = f"T.min(pg * {lanes}, {s.pixels - lanes})" if s.pixels % lanes else f"pg * {lanes}"
    with script.prim_func("block_sparse_conv2d_gpu", params, {"tirx.noalias": True}):
        script.line(f"dflat = T.decl_buffer(({s.n * s.c * s.h * s.w},), 'float32', data=data.data)",
                    f"oflat = T.decl_buffer(({s.n * s.oc * s.pixels},), 'float32', data=out.data)")
        if residual:
            script.line(f"rflat = T.decl_buffer(({s.n * s.oc * s.pixels},), 'float32', data=res.data)")
        src = "dflat"
        if not s.direct:
            script.line(f"xs = T.alloc_buffer(({s.n * s.c * s.pixels},), 'float32')")
            _gpu_copy_source(script, s, kn.threads)
            src = "xs"
        with script.block(f"for bx in T.thread_binding({-(-items // kn.threads)}, thread='blockIdx.x'):"), \
                script.block(f"for tx in T.thread_binding({kn.threads}, thread='threadIdx.x'):"):
            script.line(f"gid: T.let = bx * {kn.threads} + tx")
            with script.block(f"if gid < {items}:"):
                script.line(f"b: T.let = gid // {packed.blocks * groups}",
                            f"blk: T.let = gid // {groups} % {packed.blocks}", f"pg: T.let = gid % {groups}",
                            f"p0: T.let = {p0}", "e0: T.let = offsets[blk]",
                            f"acc = T.alloc_buffer(({g}, {lanes}), 'float32', scope='local')")
                with script.block(f"for m in T.unroll({g}):"), script.block(f"for l in T.unroll({lanes}):"):
                    script.line(f"acc[m, l] = {f'bias[blk * {g} + m]' if bias else 'T.float32(0)'}")
                with script.block("for k in range(offsets[blk + 1] - e0):"):
                    script.line("e: T.let = e0 + k", f"xo: T.let = b * {s.c * s.pixels} + xoff[e] + p0")
                    with script.block(f"for m in T.unroll({g}):"), script.block(f"for l in T.unroll({lanes}):"):
                        script.line(f"acc[m, l] = acc[m, l] + vals[e * {g} + m] * {src}[xo + l]")
                rows = script.block(f"if blk * {g} + m < {s.oc}:") if s.oc % g else contextlib.nullcontext()
                with script.block(f"for m in T.unroll({g}):"), rows:
                    script.line(f"ob: T.let = (b * {s.oc} + blk * {g} + m) * {s.pixels} + p0")
                    value = "acc[m, l]" + (" + rflat[ob + l]" if residual else "")
                    with script.block(f"for l in T.unroll({lanes}):"):
                        script.line(f"oflat[ob + l] = {epilogue(value, bounds)}")
    return script


def block_sparse_conv2d_gpu(packed: BlockSparse, data_shape, knobs: BlockGpuKnobs, strides=(1, 1),
                            padding=(0, 0, 0, 0), bias: np.ndarray | None = None, activation=None,
                            residual: bool = False) -> DenseKernel:
    """``block_sparse_conv2d`` for OpenCL GPUs (Mali): call ``func(data, [residual], vals, xoff, offsets, [bias],
    out)``."""
    s = conv_shape(packed, data_shape, strides, padding)
    bounds = check_activation(activation)
    b = _padded_bias(bias, packed)
    func = _gpu_conv_source(s, packed, knobs, b is not None, residual, bounds).parse()
    arrays = [_nonempty(packed.values, np.float32), _nonempty(packed.cols.astype(np.int64) * s.pixels, np.int32),
              packed.offsets.astype(np.int32)]  # fmt: skip
    if b is not None:
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (s.n, s.oc, s.oh, s.ow))


def _gpu_linear_source(packed: BlockSparse, batch: int, kn: BlockGpuKnobs, bias: bool, bounds) -> Script:
    """One thread per (batch row, block): ``G`` accumulators, the block's weights read column by column."""
    g, o = packed.group, packed.out_features
    items = batch * packed.blocks
    params = [buffer_param("x", (batch, packed.in_features)), buffer_param("vals", (max(1, packed.stored),)),
              buffer_param("cols", (max(1, len(packed.cols)),), "int32"),
              buffer_param("offsets", (packed.blocks + 1,), "int32")]  # fmt: skip
    if bias:
        params.append(buffer_param("bias", (packed.blocks * g,)))
    params.append(buffer_param("out", (batch, o)))
    script = Script()
    with script.prim_func("block_sparse_linear_gpu", params, {"tirx.noalias": True}), \
            script.block(f"for bx in T.thread_binding({-(-items // kn.threads)}, thread='blockIdx.x'):"), \
            script.block(f"for tx in T.thread_binding({kn.threads}, thread='threadIdx.x'):"):
        script.line(f"gid: T.let = bx * {kn.threads} + tx")
        with script.block(f"if gid < {items}:"):
            script.line(f"bb: T.let = gid // {packed.blocks}", f"blk: T.let = gid % {packed.blocks}",
                        "e0: T.let = offsets[blk]", f"acc = T.alloc_buffer(({g},), 'float32', scope='local')")
            with script.block(f"for m in T.unroll({g}):"):
                script.line(f"acc[m] = {f'bias[blk * {g} + m]' if bias else 'T.float32(0)'}")
            with script.block("for k in range(offsets[blk + 1] - e0):"):
                script.line("e: T.let = e0 + k", "xv: T.let = x[bb, cols[e]]")
                with script.block(f"for m in T.unroll({g}):"):
                    script.line(f"acc[m] = acc[m] + vals[e * {g} + m] * xv")
            with script.block(f"for m in T.unroll({g}):"), script.block(f"if blk * {g} + m < {o}:"):
                script.line(f"out[bb, blk * {g} + m] = {epilogue('acc[m]', bounds)}")
    return script


def block_sparse_linear_gpu(packed: BlockSparse, knobs: BlockGpuKnobs, batch: int = 1,
                            bias: np.ndarray | None = None, activation=None) -> DenseKernel:
    """``block_sparse_linear`` for OpenCL GPUs (Mali): call ``func(x, vals, cols, offsets, [bias], out)``."""
    if int(batch) < 1:
        raise TvmPatternError(f"batch must be >= 1, got {batch}")
    bounds = check_activation(activation)
    b = _padded_bias(bias, packed)
    func = _gpu_linear_source(packed, int(batch), knobs, b is not None, bounds).parse()
    arrays = [_nonempty(packed.values, np.float32), _nonempty(packed.cols, np.int32), packed.offsets.astype(np.int32)]
    if b is not None:
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (int(batch), packed.out_features))
