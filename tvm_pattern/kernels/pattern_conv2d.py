"""The pattern-sparse 3x3 conv2d as a TVM PrimFunc (NCHW, fp32), generated per layer in TVMScript.

Why generated per layer: the pattern-grouped loops need each pattern's tap offsets as compile-time
constants (PatDNN), so the body of every pattern is emitted once with its offsets baked in; the kept
kernels themselves stay data (``arrays``), walked through the FKW CSR pointer.

The loop nest. Work items are output blocks (R rows x C columns of every filter); each thread takes a
contiguous run of them, so row blocks are outermost and a thread's input stays in L2::

    for t in parallel(threads):
      for item of thread t:                   # (batch, row block, col block[, filter group])
        slab[ci, rows, cols] = input window   # packed right before use: zero padding, stride phases
        for chunk c of input channels:        # only with NestShape.chunk: the chunk's slab stays in L1
          for filter o (FKR order; group split by kept kernels when blocks are few):
            acc[R, C] = bias if c == 0 else part[o]   # small "global" buffer -> registers
            for pattern p (unrolled in the generator):
              for kept kernel e of (o, c, p): # ic = channels[e]; n weights broadcast once
                for r, j in R x C:            # sblock "acc_p{p}": j split NV x V, vectorized, unrolled
                  acc[r, j] += sum_t w_t * slab[ic, r*s + dr_t, j + dc_t]   # tap offsets are literals
            part[o] = acc, or on the last chunk out[b, perm[o], r0:r0+R, c0:c0+C] = relu(acc)
                                              # with ``pool``: the 2x2 maxima, out[.., r0/2:(r0+R)/2, ..]

Why chunks: every kept kernel streams R + 2 input rows of its channel; with the slab of all channels in L2,
that stream, not the FMAs, bounds the kernel (about 32 bytes per cycle for 2 FMAs). Walking every filter over
one chunk of channels at a time keeps the rows it reads in L1, for one partial-sum load and store per filter
and chunk. The kept kernels are then ordered (filter, chunk, pattern): ``chunked_fkw``.

Blocks that would run past the output edge are shifted back to end on it (``r0 = min(rb*R, OH-R)``), so
every block is full and vector stores need no mask; overlapping outputs are recomputed, not summed.
The structure of the nest is a ``NestShape``: ``rows`` (R), ``cols`` (C), ``threads``, ``peel`` and
``max_groups``; the vector split and the unrolling are schedule decisions of ``tvm_pattern.schedules``
(see ``schedules/x86.py``, whose ``CpuKnobs`` hold both kinds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm

from ..errors import PatternError
from ..sparsity.format import PackedConv
from .tvmscript import Script, buffer_param

VARIANTS_ATTR = "tvm_pattern.block_variants"  # function attribute: how many block-shape variants to schedule
CHUNKS_ATTR = "tvm_pattern.channel_chunks"  # function attribute: input-channel chunks (> 1: partial-sum stores)
POOL_ATTR = "tvm_pattern.max_pool"  # function attribute: 1 if the kernel stores the 2x2 / stride-2 max-pool

__all__ = [
    "CHUNKS_ATTR",
    "POOL_ATTR",
    "VARIANTS_ATTR",
    "Geometry",
    "KernelSpec",
    "NestShape",
    "SparseConvKernel",
    "check_layer",
    "chunk_count",
    "chunked_fkw",
    "conv_out_shape",
    "fit_block",
    "fkw_arrays",
    "fkw_params",
    "geometry",
    "kernel_arrays",
    "pooled_shape",
    "split_base",
    "thread_split",
    "thread_splits",
    "unscheduled",
]


@dataclass(frozen=True)
class KernelSpec:
    """What the generated code depends on in a packed weight: its shape and patterns, not its values.

    Why separate: a tuning template records it (``to_json``) so the kernel can be generated again from the
    template alone, in any process, without the weights.
    """

    k: int
    n: int
    patterns: tuple[tuple[tuple[int, int], ...], ...]  # per pattern, its n (row, col) taps
    in_channels: int
    out_channels: int
    nnz: int

    @classmethod
    def of(cls, packed: PackedConv) -> KernelSpec:
        taps = tuple(tuple((int(r), int(c)) for r, c in p) for p in packed.taps())
        return cls(packed.k, packed.n, taps, packed.in_channels, packed.out_channels, packed.nnz)

    def taps(self) -> list[list[tuple[int, int]]]:
        return [list(p) for p in self.patterns]

    def to_json(self) -> dict:
        return {"k": self.k, "n": self.n, "patterns": [list(map(list, p)) for p in self.patterns],
                "in_channels": self.in_channels, "out_channels": self.out_channels, "nnz": self.nnz}

    @classmethod
    def from_json(cls, obj: dict) -> KernelSpec:
        taps = tuple(tuple((int(r), int(c)) for r, c in p) for p in obj["patterns"])
        return cls(int(obj["k"]), int(obj["n"]), taps, int(obj["in_channels"]), int(obj["out_channels"]),
                   int(obj["nnz"]))


@dataclass(frozen=True)
class SparseConvKernel:
    """A generated sparse conv: call ``func(data, *arrays, [bias], out)``."""

    func: tvm.tirx.PrimFunc
    arrays: tuple[np.ndarray, ...]
    out_shape: tuple[int, int, int, int]


@dataclass(frozen=True)
class NestShape:
    """The structural knobs of the generated nest: output block ``rows`` x ``cols``, parallel ``threads``,
    ``peel`` (peel the last row / column block into its own shape variant instead of shifting it back) and
    ``max_groups`` (size ``tsplit`` for that many filter groups, so kernels of other knobs share one signature;
    0: what this shape needs) and ``chunk`` (input channels per chunk; 0: all in one)."""

    rows: int
    cols: int
    threads: int
    peel: bool = True
    max_groups: int = 0
    chunk: int = 0

    @classmethod
    def of(cls, knobs: NestShape | Mapping | object) -> NestShape:
        """The nest shape of a knob set: a ``NestShape``, any object with these attributes, or a mapping."""
        if isinstance(knobs, NestShape):
            return knobs
        get = knobs.get if isinstance(knobs, Mapping) else lambda name, default=None: getattr(knobs, name, default)
        return cls(int(get("rows")), int(get("cols")), int(get("threads")), bool(get("peel", True)),
                   int(get("max_groups", 0) or 0), int(get("chunk", 0) or 0))  # fmt: skip

    def with_threads(self, threads: int) -> NestShape:
        return NestShape(self.rows, self.cols, threads, self.peel, self.max_groups, self.chunk)


def chunk_count(in_channels: int, chunk: int) -> int:
    """Input-channel chunks of ``chunk`` channels (0, or at least ``in_channels``: one)."""
    return 1 if chunk <= 0 or chunk >= in_channels else -(-in_channels // chunk)



def conv_out_shape(
    data_shape: tuple[int, ...], out_channels: int, strides: tuple[int, ...], padding: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """NCHW output shape of a 3x3 conv; padding is (top, left, bottom, right) like relax.nn.conv2d."""
    n, _, h, w = data_shape
    top, left, bottom, right = padding
    oh = (h + top + bottom - 3) // strides[0] + 1
    ow = (w + left + right - 3) // strides[1] + 1
    return (n, out_channels, oh, ow)


def thread_split(packed: PackedConv, threads: int) -> np.ndarray:
    """(threads + 1,) boundaries over packed filters so each slice (filter group) gets about the same kept
    kernels; used when a layer has too few output blocks to give every thread its own.

    A filter with no kept kernel still costs its bias store, so every filter counts for at least one.
    """
    work = np.maximum(packed.counts().sum(axis=1), 1).astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(work)])
    targets = cum[-1] * np.arange(threads + 1) / threads
    bounds = np.searchsorted(cum, targets, side="left")
    bounds[0], bounds[-1] = 0, packed.out_channels
    return np.maximum.accumulate(bounds).astype(np.int32)


def split_base(groups: int) -> int:
    """Where the ``groups``-way split starts in ``thread_splits`` (splits for 1, 2, ... groups, concatenated)."""
    return (groups - 1) * (groups + 2) // 2


def thread_splits(packed: PackedConv, max_groups: int) -> np.ndarray:
    """``thread_split`` for every group count 1..``max_groups``, concatenated (the kernel's ``tsplit``).

    Why all of them: the group count follows from the block shape and thread knobs, and a tuning task's
    arguments must not change with its knobs.
    """
    return np.concatenate([thread_split(packed, g) for g in range(1, max_groups + 1)]).astype(np.int32)


def _check_args(packed: PackedConv | KernelSpec, data_shape, strides, padding) -> None:
    """Raise ``PatternError`` naming what is wrong with a layer's shapes."""
    if len(data_shape) != 4 or min(data_shape) < 1:
        raise PatternError(f"data_shape must be NCHW with positive sizes, got {data_shape}")
    if data_shape[1] != packed.in_channels:
        raise PatternError(f"data has {data_shape[1]} channels but the weight expects {packed.in_channels}")
    if len(strides) != 2 or min(strides) < 1:
        raise PatternError(f"strides must be two positive ints, got {strides}")
    if len(padding) != 4 or min(padding) < 0:
        raise PatternError(f"padding must be (top, left, bottom, right) >= 0, got {padding}")
    _, _, oh, ow = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    if oh < 1 or ow < 1:
        raise PatternError(f"input {data_shape} with padding {padding} is smaller than the 3x3 kernel")


def fit_block(nest: NestShape, oh: int, ow: int) -> tuple[int, int]:
    """(rows, cols) of the output block, shrunk to fit the output plane (blocks never run past the edge)."""
    return max(1, min(nest.rows, oh)), max(1, min(nest.cols, ow))


@dataclass(frozen=True)
class Geometry:
    """Sizes of one generated layer: input, output, output blocks and their input slabs."""

    n: int
    c: int
    h: int
    w: int
    top: int
    left: int
    sh: int
    sw: int
    oh: int
    ow: int
    rows: int
    cols: int
    peel: bool = True

    @property
    def row_tail(self) -> int:
        """Rows of the last row block: peeled (shorter, nothing recomputed) unless ``peel`` is off, then
        the last block is shifted back to end on the edge and recomputes a few rows."""
        return self.oh - (self.nrb - 1) * self.rows if self.peel else self.rows

    @property
    def row_origin(self) -> str:
        """First output row of row block ``rb`` (TVMScript)."""
        if self.row_tail != self.rows or self.oh % self.rows == 0:
            return f"rb * {self.rows}"
        return f"T.min(rb * {self.rows}, {self.oh - self.rows})"

    @property
    def col_tail(self) -> int:
        """Columns of the last column block: peeled when a whole number of 4-lane vectors, else ``cols``.

        An unpeelable tail block is shifted back to end on the edge, recomputing a few outputs.
        """
        tail = self.ow - (self.ncb - 1) * self.cols
        return tail if self.peel and tail % 4 == 0 else self.cols

    @property
    def col_origin(self) -> str:
        """First output column of column block ``cb`` (TVMScript)."""
        if self.col_tail != self.cols or self.ow % self.cols == 0:
            return f"cb * {self.cols}"
        return f"T.min(cb * {self.cols}, {self.ow - self.cols})"

    def origin(self, cb: int) -> int:
        """``col_origin`` for a concrete ``cb``."""
        if self.col_tail != self.cols or self.ow % self.cols == 0:
            return cb * self.cols
        return min(cb * self.cols, self.ow - self.cols)

    def variants(self) -> list[tuple[int, int]]:
        """The distinct (rows, cols) block shapes: full blocks, and the peeled last row / column."""
        shapes = [(r, c) for r in (self.rows, self.row_tail) for c in (self.cols, self.col_tail)]
        return list(dict.fromkeys(shapes))

    @property
    def blocks(self) -> int:
        return self.n * self.nrb * self.ncb

    def groups(self, threads: int) -> int:
        """Filter groups per output block: 1 unless there are too few blocks to keep every thread busy."""
        return 1 if self.blocks >= 2 * threads else -(-2 * threads // self.blocks)

    @property
    def nrb(self) -> int:
        return -(-self.oh // self.rows)

    @property
    def ncb(self) -> int:
        return -(-self.ow // self.cols)

    @property
    def slab(self) -> tuple[int, int, int]:
        """(rows, column phases, columns per phase) of the input one output block reads.

        With stride s the columns are de-interleaved into s phases (column ``j * s + dc`` is phase
        ``dc % s``, index ``j + dc // s``), so every tap reads contiguous vectors at any stride.
        """
        return (self.rows - 1) * self.sh + 3, self.sw, self.cols + 2 // self.sw


def geometry(packed: PackedConv | KernelSpec, data_shape, strides, padding, nest: NestShape) -> Geometry:
    """The sizes of one layer generated with ``nest``."""
    n, c, h, w = data_shape
    _, _, oh, ow = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    rows, cols = fit_block(nest, oh, ow)
    return Geometry(n, c, h, w, padding[0], padding[1], strides[0], strides[1], oh, ow, rows, cols, nest.peel)


def _tap_sum(taps: list[tuple[int, int]], g: Geometry) -> str:
    """``w0 * x(tap 0) + w1 * x(tap 1) + ...`` with the pattern's offsets as literals."""
    x = "w{t} * slab[ic, vr * {sh} + {dr}, {ph}, vj + {dj}]"
    terms = [x.format(t=t, sh=g.sh, dr=dr, ph=dc % g.sw, dj=dc // g.sw) for t, (dr, dc) in enumerate(taps)]
    return " + ".join(terms)


def pooled_shape(out_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The NCHW shape after a 2x2 / stride-2 max-pool (floor mode) of ``out_shape``."""
    n, c, h, w = out_shape
    return (n, c, h // 2, w // 2)


def _check_pool(g: Geometry) -> None:
    """A fused max-pool needs even output sizes and an even block height, so every block pools whole 2x2 windows
    (block origins are then even too: ``r0 = min(rb * R, OH - R)``, ``C`` is whole vectors)."""
    if g.oh % 2 or g.ow % 2:
        raise PatternError(f"a fused 2x2 max-pool needs an even output size, got {g.oh}x{g.ow}")
    if g.rows % 2 or g.cols % 2:
        raise PatternError(f"a fused 2x2 max-pool needs an even output block, got {g.rows}x{g.cols}")


def _interior(g: Geometry) -> tuple[int, int]:
    """First and last column block whose slab lies inside the input (no padding to insert)."""
    _, sp, sc = g.slab

    def fits(c0: int) -> bool:
        return c0 * g.sw - g.left >= 0 and (c0 + sc - 1) * g.sw + sp - 1 - g.left < g.w

    inside = [cb for cb in range(g.ncb) if fits(g.origin(cb))]
    return (inside[0], inside[-1]) if inside else (1, 0)


def _interior_copy(script: Script, g: Geometry, columns: str, dst: str, x: str) -> None:
    """One slab row of an interior block: with stride 1 a contiguous copy, as explicit vectors (LLVM left the
    18-float rows of a 16-column block scalar: 1.7 cycles per float, a quarter of a 64-channel layer's time)."""
    sc = g.slab[2]
    whole = sc // 8 * 8
    if g.sw != 1 or whole == 0:
        with script.block(columns):
            script.line(f"{dst} = data[b, ch, y, {x}]")
        return
    with script.block(f"for cc in T.vectorized({whole}):"):
        script.line(f"slab[ch, rr, 0, cc] = data[b, ch, y, c0 + cc - {g.left}]")
    if sc > whole:
        with script.block(f"for cr in T.serial({sc - whole}):"):
            script.line(f"slab[ch, rr, 0, {whole} + cr] = data[b, ch, y, c0 + {whole} + cr - {g.left}]")


def _pack_source(script: Script, g: Geometry) -> None:
    """Copy the current block's input slab (zero padding included) to the thread's contiguous tile.

    Why: the kept kernels of a filter read scattered input channels; with a contiguous slab per channel
    one kernel touches few, adjacent cache lines instead of a strided window (~1.5x faster overall), and
    packing right before use keeps the slab in L2. Rows outside the input are zero-filled and interior
    column blocks copy rows without bounds checks (so the copy vectorizes); edge blocks test each element.
    """
    _, sp, sc = g.slab
    lo, hi = _interior(g)
    x = f"(c0 + cc) * {g.sw} + ph - {g.left}"
    dst = "slab[ch, rr, ph, cc]"
    columns = f"for ph, cc in T.grid({sp}, {sc}):"
    with script.block(f"for ch, rr in T.grid({g.c}, {g.slab[0]}):"):
        script.line(f"y: T.let = r0 * {g.sh} + rr - {g.top}")
        with script.block(f"if 0 <= y and y < {g.h}:"):
            with script.block(f"if {lo} <= cb and cb <= {hi}:"):
                _interior_copy(script, g, columns, dst, x)
            with script.block("else:"), script.block(columns):
                script.line(f"x: T.let = {x}",
                            f"{dst} = T.if_then_else(0 <= x and x < {g.w}, data[b, ch, y, x], T.float32(0))")
        with script.block("else:"), script.block(columns):
            script.line(f"{dst} = T.float32(0)")


def fkw_params(spec: KernelSpec | PackedConv, data_shape, out_shape, bias: bool,
               extra: tuple[str, ...] = (), chunks: int = 1) -> list[str]:
    """The parameters of a pattern-sparse conv: ``data``, the four FKW arrays, ``extra``, [``bias``], ``out``."""
    o, nnz = spec.out_channels, max(spec.nnz, 1)
    params = [
        buffer_param("data", data_shape),
        buffer_param("offsets", (o * chunks * spec.k + 1,), "int32"),
        buffer_param("channels", (nnz,), "int32"),
        buffer_param("weights", (nnz * spec.n,)),
        buffer_param("perm", (o,), "int32"),
        *extra,
    ]
    if bias:
        params.append(buffer_param("bias", (o,)))
    return [*params, buffer_param("out", out_shape)]


def _block(script: Script, name: str, shape: tuple[int, int], reads: str, writes: str, body: str) -> None:
    """An (rows x cols) loop nest over one output block, as an sblock the schedule splits and vectorizes."""
    with script.sblock(name, "r, j", shape, "SS", reads, writes):
        script.line(body)


def _pattern_loop(script: Script, p: int, taps: list[tuple[int, int]], k: int, g: Geometry, v: int,
                  chunks: int) -> None:
    """The loop over filter o's kept kernels of pattern p (in chunk c); the body has p's offsets as constants."""
    seg = f"o * {k}" if chunks == 1 else f"(o * {chunks} + c) * {k}"
    with script.block(f"for kk in T.serial(offsets[{seg} + {p + 1}] - offsets[{seg} + {p}]):"):
        script.line(f"e: T.let = offsets[{seg} + {p}] + kk", "ic: T.let = channels[e]")
        script.lines(f"w{t}: T.let = weights[e * {len(taps)} + {t}]" for t in range(len(taps)))
        reads = f"slab[ic, vr * {g.sh}:vr * {g.sh} + 3, 0:{g.sw}, vj:vj + {g.slab[2] - g.cols + 1}]"
        body = f"acc[vr, vj] = acc[vr, vj] + {_tap_sum(taps, g)}"
        _block(script, f"acc_p{p}_v{v}", g.variants()[v], reads, "acc[vr, vj]", body)


def _store(script: Script, g: Geometry, v: int, relu: bool, pool: bool) -> None:
    """The block's outputs (ReLU applied), or with ``pool`` their 2x2 maxima (block origins and sizes are even)."""
    shape = g.variants()[v]
    if not pool:
        value = "T.max(acc[vr, vj], T.float32(0))" if relu else "acc[vr, vj]"
        store = "out[b, oc, r0 + vr, c0 + vj]"
        _block(script, f"store_v{v}", shape, "acc[vr, vj]", store, f"{store} = {value}")
        return
    quad = [f"acc[vr * 2 + {i}, vj * 2 + {j}]" for i in (0, 1) for j in (0, 1)]
    value = f"T.max(T.max({quad[0]}, {quad[1]}), T.max({quad[2]}, {quad[3]}))"
    value = f"T.max({value}, T.float32(0))" if relu else value
    store = "out[b, oc, r0 // 2 + vr, c0 // 2 + vj]"
    _block(script, f"pool_v{v}", (shape[0] // 2, shape[1] // 2), "acc[vr * 2:vr * 2 + 2, vj * 2:vj * 2 + 2]", store,
           f"{store} = {value}")


def _filters_source(script: Script, spec: KernelSpec, g: Geometry, v: int, bias: bool, relu: bool,
                    chunks: int, pool: bool) -> None:
    """Every filter of the item's group on one output block of shape variant ``v``, chunk by chunk."""
    shape = g.variants()[v]
    init = "bias[oc]" if bias else "T.float32(0)"
    loop = script.block(f"for cj in T.serial({chunks}):") if chunks > 1 else contextlib.nullcontext()
    with loop, script.block("for oo in T.serial(tsplit[sb + grp + 1] - tsplit[sb + grp]):"):
        if chunks > 1:
            script.line("c: T.let = cj")  # let-bound: a loop var may not be read inside the sblocks
        script.line("o: T.let = tsplit[sb + grp] + oo", "oc: T.let = perm[o]",
                    f"acc = T.alloc_buffer(({shape[0]}, {shape[1]}), 'float32')")
        if chunks == 1:
            _block(script, f"acc_init_v{v}", shape, "", "acc[vr, vj]", f"acc[vr, vj] = {init}")
        else:
            _block(script, f"acc_init_v{v}", shape, "part[o, vr, vj]", "acc[vr, vj]",
                   f"acc[vr, vj] = T.if_then_else(c == 0, {init}, part[o, vr, vj])")
        for p, taps in enumerate(spec.taps()):
            _pattern_loop(script, p, taps, spec.k, g, v, chunks)
        if chunks == 1:
            _store(script, g, v, relu, pool)
            return
        with script.block(f"if c < {chunks - 1}:"):  # two exclusive ifs, no else (see _dispatch_source)
            _block(script, f"keep_v{v}", shape, "acc[vr, vj]", "part[o, vr, vj]", "part[o, vr, vj] = acc[vr, vj]")
        with script.block(f"if c == {chunks - 1}:"):
            _store(script, g, v, relu, pool)


def _dispatch_source(script: Script, spec: KernelSpec, g: Geometry, bias: bool, relu: bool, chunks: int,
                     pool: bool) -> None:
    """Branch to the block-shape variant of the current block (full, last row block, last column block).

    One ``if`` per variant with exclusive conditions, no ``else``: TVM 0.27's schedule state mutated the
    caller's IRModule in place when a scheduled block sat in an ``else`` branch, breaking trace replay.
    """
    shapes = g.variants()
    if len(shapes) == 1:
        _filters_source(script, spec, g, 0, bias, relu, chunks, pool)
        return
    for i, (nr, nc) in enumerate(shapes):
        conds = []
        if g.row_tail != g.rows:
            conds.append(f"rb {'==' if nr != g.rows else '<'} {g.nrb - 1}")
        if g.col_tail != g.cols:
            conds.append(f"cb {'==' if nc != g.cols else '<'} {g.ncb - 1}")
        with script.block(f"if {' and '.join(conds)}:"):
            _filters_source(script, spec, g, i, bias, relu, chunks, pool)


def _source(spec: KernelSpec, data_shape, strides, padding, bias: bool, relu: bool, nest: NestShape,
            pool: bool = False) -> Script:
    g = geometry(spec, data_shape, strides, padding, nest)
    if pool:
        _check_pool(g)
    threads = nest.threads
    groups = g.groups(threads)
    max_groups = max(groups, nest.max_groups or groups)
    items = g.blocks * groups
    per_thread = -(-items // threads)
    tsplit = buffer_param("tsplit", (split_base(max_groups + 1),), "int32")
    chunks = chunk_count(spec.in_channels, nest.chunk)
    out_shape = (g.n, spec.out_channels, g.oh, g.ow)
    out_shape = pooled_shape(out_shape) if pool else out_shape
    params = fkw_params(spec, data_shape, out_shape, bias, (tsplit,), chunks)
    script = Script()
    attrs = {"tirx.noalias": True, VARIANTS_ATTR: len(g.variants()), CHUNKS_ATTR: chunks, POOL_ATTR: int(pool)}
    with script.prim_func("sparse_conv2d", params, attrs), script.block(f"for t in T.parallel({threads}):"):
        # Rows are not padded to cache lines: padded (written once, so compaction keeps it) ran 0.88-1.05x.
        script.line(f"slab = T.alloc_buffer(({g.c}, {', '.join(map(str, g.slab))}), 'float32', align=64)")
        if chunks > 1:
            script.line(f"part = T.alloc_buffer(({spec.out_channels}, {g.rows}, {g.cols}), 'float32')")
        with script.block(f"for i in range({per_thread}):"):
            script.line(f"item: T.let = t * {per_thread} + i")
            with script.block(f"if item < {items}:"):
                script.line(
                    f"blk: T.let = item // {groups}",
                    f"grp: T.let = item % {groups}",
                    f"sb: T.let = {split_base(groups)}",
                    f"b: T.let = blk // {g.nrb * g.ncb}",
                    f"rb: T.let = blk % {g.nrb * g.ncb} // {g.ncb}",
                    f"cb: T.let = blk % {g.ncb}",
                    f"r0: T.let = {g.row_origin}",
                    f"c0: T.let = {g.col_origin}",
                )
                _pack_source(script, g)
                _dispatch_source(script, spec, g, bias, relu, chunks, pool)
    return script


def fkw_arrays(packed: PackedConv) -> tuple[np.ndarray, ...]:
    """The FKW arrays a pattern-sparse kernel takes after ``data``: offsets, channels, weights, perm."""
    channels = packed.channels if packed.nnz else np.zeros(1, np.int32)
    weights = packed.weights.reshape(-1) if packed.nnz else np.zeros(packed.n, np.float32)
    return (
        packed.offsets.astype(np.int32),
        channels.astype(np.int32),
        np.ascontiguousarray(weights, dtype=np.float32),
        packed.perm.astype(np.int32),
    )


def chunked_fkw(packed: PackedConv, chunk: int) -> tuple[np.ndarray, ...]:
    """``fkw_arrays`` with the kept kernels ordered (filter, input-channel chunk, pattern): ``offsets`` then has
    one segment per (filter, chunk, pattern), ``(o * chunks + c) * k + p`` (see the module docstring)."""
    chunks = chunk_count(packed.in_channels, chunk)
    offsets, channels, weights, perm = fkw_arrays(packed)
    if chunks == 1:
        return offsets, channels, weights, perm
    o, k, n = packed.out_channels, packed.k, packed.n
    segment = packed.filter_of() * chunks * k + packed.channels // chunk * k + packed.pattern_ids()
    order = np.argsort(segment, kind="stable")
    counts = np.bincount(segment, minlength=o * chunks * k)
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    kept = weights.reshape(-1, n)[order] if packed.nnz else weights.reshape(-1, n)
    return new_offsets, channels[order] if packed.nnz else channels, np.ascontiguousarray(kept.reshape(-1)), perm


def kernel_arrays(packed: PackedConv, max_groups: int, chunk: int = 0) -> tuple[np.ndarray, ...]:
    """The arrays of the generated CPU kernel: the FKW arrays (in ``chunk`` order) and ``tsplit`` for up to
    ``max_groups`` groups."""
    return (*chunked_fkw(packed, chunk), thread_splits(packed, max_groups))


def check_layer(packed: PackedConv | KernelSpec, data_shape, strides, padding) -> tuple[tuple, tuple, tuple]:
    """``data_shape``, ``strides``, ``padding`` as int tuples; ``PatternError`` if they do not fit the weight."""
    data_shape = tuple(int(x) for x in data_shape)
    strides = tuple(int(x) for x in strides)
    padding = tuple(int(x) for x in padding)
    _check_args(packed, data_shape, strides, padding)
    return data_shape, strides, padding


def unscheduled(
    packed: PackedConv | KernelSpec, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), bias: bool = False,
    relu: bool = False, config: NestShape | Mapping | object = None, pool: bool = False,
) -> tvm.tirx.PrimFunc:
    """The generated PrimFunc before the schedule (what a tuner's ``ScheduleFn`` starts from).

    ``config``: the nest's structure, a ``NestShape`` or any knob set holding ``rows``, ``cols``, ``threads``
    (``peel``, ``max_groups`` optional), e.g. ``schedules.x86.CpuKnobs``. ``pool``: store the 2x2 / stride-2
    max-pool of the (ReLU'd) output instead of the output, saving the pool op's pass over the full-size map
    (needs an even output size and an even ``rows``; ``PatternError`` otherwise).
    """
    spec = packed if isinstance(packed, KernelSpec) else KernelSpec.of(packed)
    data_shape, strides, padding = check_layer(spec, data_shape, strides, padding)
    return _source(spec, data_shape, strides, padding, bias, relu, NestShape.of(config), pool).parse()
