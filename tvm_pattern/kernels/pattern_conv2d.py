"""The pattern-sparse 3x3 conv2d as a TVM PrimFunc (NCHW, fp32), generated per layer in TVMScript.

Why generated per layer: the pattern-grouped loops need each pattern's tap offsets as compile-time
constants (PatDNN), so the body of every pattern is emitted once with its offsets baked in; the kept
kernels themselves stay data (``arrays``), walked through the FKW CSR pointer.

The loop nest. Work items are output blocks (R rows x C columns of every filter); each thread takes a
contiguous run of them, so row blocks are outermost and a thread's input stays in L2::

    for t in parallel(threads):
      for item of thread t:                   # (batch, row block, col block[, filter group])
        slab[ci, rows, cols] = input window   # packed right before use: zero padding, stride phases
        for filter o (FKR order; group split by kept kernels when blocks are few):
          acc[R, C] = bias                    # small "global" buffer -> registers
          for pattern p (unrolled in the generator):
            for kept kernel e of (o, p):      # ic = channels[e]; n weights broadcast once
              for r, j in R x C:              # sblock "acc_p{p}": j split NV x V, vectorized, unrolled
                acc[r, j] += sum_t w_t * slab[ic, r*s + dr_t, j + dc_t]   # tap offsets are literals
          out[b, perm[o], r0:r0+R, c0:c0+C] = relu(acc)   # FKR permutation undone in the store

Blocks that would run past the output edge are shifted back to end on it (``r0 = min(rb*R, OH-R)``), so
every block is full and vector stores need no mask; overlapping outputs are recomputed, not summed.
Knobs: ``rows`` (R), ``cols`` (C) and ``threads`` shape the generated nest; the vector split and the
unrolling are schedule decisions of ``tvm_pattern.schedules`` (see ``schedules/x86.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from .errors import PatternError
from .sparsity.format import PackedConv

VARIANTS_ATTR = "tvm_pattern.block_variants"  # function attribute: how many block-shape variants to schedule

__all__ = [
    "KernelSpec",
    "SparseConvKernel",
    "conv_out_shape",
    "layer_config",
    "sparse_conv2d",
    "thread_split",
    "thread_splits",
    "tuning_task",
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


def fit_block(cfg: dict, oh: int, ow: int) -> tuple[int, int]:
    """(rows, cols) of the output block, shrunk to fit the output plane (blocks never run past the edge)."""
    rows = max(1, min(int(cfg["rows"]), oh))
    cols = max(1, min(int(cfg["cols"]), ow))
    return rows, cols


@dataclass(frozen=True)
class _Geometry:
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


def _geometry(packed: PackedConv | KernelSpec, data_shape, strides, padding, cfg: dict) -> _Geometry:
    n, c, h, w = data_shape
    _, _, oh, ow = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    rows, cols = fit_block(cfg, oh, ow)
    peel = bool(cfg.get("peel", True))
    return _Geometry(n, c, h, w, padding[0], padding[1], strides[0], strides[1], oh, ow, rows, cols, peel)


def _tap_sum(taps: list[tuple[int, int]], g: _Geometry) -> str:
    """``w0 * x(tap 0) + w1 * x(tap 1) + ...`` with the pattern's offsets as literals."""
    x = "w{t} * slab[ic, vr * {sh} + {dr}, {ph}, vj + {dj}]"
    terms = [x.format(t=t, sh=g.sh, dr=dr, ph=dc % g.sw, dj=dc // g.sw) for t, (dr, dc) in enumerate(taps)]
    return " + ".join(terms)


def _interior(g: _Geometry) -> tuple[int, int]:
    """First and last column block whose slab lies inside the input (no padding to insert)."""
    _, sp, sc = g.slab

    def fits(c0: int) -> bool:
        return c0 * g.sw - g.left >= 0 and (c0 + sc - 1) * g.sw + sp - 1 - g.left < g.w

    inside = [cb for cb in range(g.ncb) if fits(g.origin(cb))]
    return (inside[0], inside[-1]) if inside else (1, 0)


def _pack_source(g: _Geometry, ind: str) -> list[str]:
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
    return [
        f"{ind}for ch, rr in T.grid({g.c}, {g.slab[0]}):",
        f"{ind}    y: T.let = r0 * {g.sh} + rr - {g.top}",
        f"{ind}    if 0 <= y and y < {g.h}:",
        f"{ind}        if {lo} <= cb and cb <= {hi}:",
        f"{ind}            for ph, cc in T.grid({sp}, {sc}):",
        f"{ind}                {dst} = data[b, ch, y, {x}]",
        f"{ind}        else:",
        f"{ind}            for ph, cc in T.grid({sp}, {sc}):",
        f"{ind}                x: T.let = {x}",
        f"{ind}                {dst} = T.if_then_else(0 <= x and x < {g.w}, data[b, ch, y, x], T.float32(0))",
        f"{ind}    else:",
        f"{ind}        for ph, cc in T.grid({sp}, {sc}):",
        f"{ind}            {dst} = T.float32(0)",
    ]


def _params(packed: KernelSpec, data_shape, out_shape, max_groups: int, bias: bool) -> list[str]:
    def i64(*dims: int) -> str:
        return "(" + ", ".join(f"T.int64({d})" for d in dims) + ",)"

    o, nnz = packed.out_channels, max(packed.nnz, 1)
    params = [
        f"data: T.Buffer({i64(*data_shape)}, 'float32')",
        f"offsets: T.Buffer({i64(o * packed.k + 1)}, 'int32')",
        f"channels: T.Buffer({i64(nnz)}, 'int32')",
        f"weights: T.Buffer({i64(nnz * packed.n)}, 'float32')",
        f"perm: T.Buffer({i64(o)}, 'int32')",
        f"tsplit: T.Buffer({i64(split_base(max_groups + 1))}, 'int32')",
    ]
    if bias:
        params.append(f"bias: T.Buffer({i64(o)}, 'float32')")
    return [*params, f"out: T.Buffer({i64(*out_shape)}, 'float32')"]


def _block(name: str, shape: tuple[int, int], indent: str, reads: str, writes: str, body: str) -> list[str]:
    """An (rows x cols) loop nest over one output block, as an sblock the schedule splits and vectorizes."""
    return [
        f"{indent}for r, j in T.grid({shape[0]}, {shape[1]}):",
        f"{indent}    with T.sblock('{name}'):",
        f"{indent}        vr, vj = T.axis.remap('SS', [r, j])",
        f"{indent}        T.reads({reads})",
        f"{indent}        T.writes({writes})",
        f"{indent}        {body}",
    ]


def _pattern_loop(p: int, taps: list[tuple[int, int]], k: int, g: _Geometry, v: int, ind: str) -> list[str]:
    """The loop over filter o's kept kernels of pattern p; the body has p's offsets as constants."""
    lines = [
        f"{ind}for kk in T.serial(offsets[o * {k} + {p + 1}] - offsets[o * {k} + {p}]):",
        f"{ind}    e: T.let = offsets[o * {k} + {p}] + kk",
        f"{ind}    ic: T.let = channels[e]",
        *[f"{ind}    w{t}: T.let = weights[e * {len(taps)} + {t}]" for t in range(len(taps))],
    ]
    reads = f"slab[ic, vr * {g.sh}:vr * {g.sh} + 3, 0:{g.sw}, vj:vj + {g.slab[2] - g.cols + 1}]"
    body = f"acc[vr, vj] = acc[vr, vj] + {_tap_sum(taps, g)}"
    return lines + _block(f"acc_p{p}_v{v}", g.variants()[v], ind + "    ", reads, "acc[vr, vj]", body)


def _filters_source(packed: KernelSpec, g: _Geometry, v: int, bias: bool, relu: bool, ind: str) -> list[str]:
    """Every filter of the item's group on one output block of shape variant ``v``."""
    shape = g.variants()[v]
    init = "bias[oc]" if bias else "T.float32(0)"
    value = "T.max(acc[vr, vj], T.float32(0))" if relu else "acc[vr, vj]"
    inner = ind + "    "
    lines = [
        f"{ind}for oo in T.serial(tsplit[sb + grp + 1] - tsplit[sb + grp]):",
        f"{inner}o: T.let = tsplit[sb + grp] + oo",
        f"{inner}oc: T.let = perm[o]",
        f"{inner}acc = T.alloc_buffer(({shape[0]}, {shape[1]}), 'float32')",
        *_block(f"acc_init_v{v}", shape, inner, "", "acc[vr, vj]", f"acc[vr, vj] = {init}"),
    ]
    for p, taps in enumerate(packed.taps()):
        lines += _pattern_loop(p, taps, packed.k, g, v, inner)
    store = "out[b, oc, r0 + vr, c0 + vj]"
    return lines + _block(f"store_v{v}", shape, inner, "acc[vr, vj]", store, f"{store} = {value}")


def _dispatch_source(packed: KernelSpec, g: _Geometry, bias: bool, relu: bool, ind: str) -> list[str]:
    """Branch to the block-shape variant of the current block (full, last row block, last column block).

    One ``if`` per variant with exclusive conditions, no ``else``: TVM 0.27's schedule state mutated the
    caller's IRModule in place when a scheduled block sat in an ``else`` branch, breaking trace replay.
    """
    shapes = g.variants()
    if len(shapes) == 1:
        return _filters_source(packed, g, 0, bias, relu, ind)
    lines: list[str] = []
    for i, (nr, nc) in enumerate(shapes):
        conds = []
        if g.row_tail != g.rows:
            conds.append(f"rb {'==' if nr != g.rows else '<'} {g.nrb - 1}")
        if g.col_tail != g.cols:
            conds.append(f"cb {'==' if nc != g.cols else '<'} {g.ncb - 1}")
        lines.append(f"{ind}if {' and '.join(conds)}:")
        lines += _filters_source(packed, g, i, bias, relu, ind + "    ")
    return lines


def _source(packed: KernelSpec, data_shape, strides, padding, bias: bool, relu: bool, cfg: dict) -> str:
    g = _geometry(packed, data_shape, strides, padding, cfg)
    threads = int(cfg["threads"])
    groups = g.groups(threads)
    max_groups = max(groups, int(cfg.get("max_groups", groups)))
    items = g.blocks * groups
    per_thread = -(-items // threads)
    params = _params(packed, data_shape, (g.n, packed.out_channels, g.oh, g.ow), max_groups, bias)
    lines = [
        "@T.prim_func(s_tir=True)",
        f"def sparse_conv2d({', '.join(params)}):",
        f"    T.func_attr({{'tirx.noalias': True, '{VARIANTS_ATTR}': {len(g.variants())}}})",
        f"    for t in T.parallel({threads}):",
        f"        slab = T.alloc_buffer(({g.c}, {', '.join(map(str, g.slab))}), 'float32')",
        f"        for i in range({per_thread}):",
        f"            item: T.let = t * {per_thread} + i",
        f"            if item < {items}:",
        f"                blk: T.let = item // {groups}",
        f"                grp: T.let = item % {groups}",
        f"                sb: T.let = {split_base(groups)}",
        f"                b: T.let = blk // {g.nrb * g.ncb}",
        f"                rb: T.let = blk % {g.nrb * g.ncb} // {g.ncb}",
        f"                cb: T.let = blk % {g.ncb}",
        f"                r0: T.let = {g.row_origin}",
        f"                c0: T.let = {g.col_origin}",
        *_pack_source(g, " " * 16),
        *_dispatch_source(packed, g, bias, relu, " " * 16),
    ]
    return "\n".join(lines) + "\n"


def _arrays(packed: PackedConv, max_groups: int) -> tuple[np.ndarray, ...]:
    channels = packed.channels if packed.nnz else np.zeros(1, np.int32)
    weights = packed.weights.reshape(-1) if packed.nnz else np.zeros(packed.n, np.float32)
    return (
        packed.offsets.astype(np.int32),
        channels.astype(np.int32),
        np.ascontiguousarray(weights, dtype=np.float32),
        packed.perm.astype(np.int32),
        thread_splits(packed, max_groups),
    )


def _normalise(packed: PackedConv | KernelSpec, data_shape, strides, padding) -> tuple[tuple, tuple, tuple]:
    data_shape = tuple(int(x) for x in data_shape)
    strides = tuple(int(x) for x in strides)
    padding = tuple(int(x) for x in padding)
    _check_args(packed, data_shape, strides, padding)
    return data_shape, strides, padding


def layer_config(packed: PackedConv, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), target=None,
                 config: dict | None = None) -> dict:
    """The knobs used for one layer: the target schedule's defaults overridden by ``config``."""
    from . import schedules  # local: the schedule modules are a sibling package

    data_shape, strides, padding = _normalise(packed, data_shape, strides, padding)
    out_shape = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    return {**schedules.default_config(packed, data_shape, out_shape, target), **(config or {})}


def unscheduled(
    packed: PackedConv | KernelSpec, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), bias: bool = False,
    relu: bool = False, config: dict | None = None,
) -> tvm.tirx.PrimFunc:
    """The generated PrimFunc before the schedule (what a tuner's ``ScheduleFn`` starts from).

    ``config`` must hold the structural knobs ``rows``, ``cols`` and ``threads`` (``max_groups``: size
    ``tsplit`` for that many filter groups, so kernels of other knobs share one signature).
    """
    spec = packed if isinstance(packed, KernelSpec) else KernelSpec.of(packed)
    data_shape, strides, padding = _normalise(spec, data_shape, strides, padding)
    return tvm.script.from_source(_source(spec, data_shape, strides, padding, bias, relu, config))


def sparse_conv2d(
    packed: PackedConv,
    data_shape: tuple[int, int, int, int],
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (1, 1, 1, 1),
    bias: bool = False,
    relu: bool = False,
    target: tvm.target.Target | None = None,
    config: dict | None = None,
) -> SparseConvKernel:
    """Generate and schedule the pattern-sparse conv for one layer; ``config`` overrides default knobs.

    Params of ``func``: ``(data, offsets, channels, weights, perm, tsplit, [bias (O,)], out)``; the five
    arrays are ``arrays`` in that order (``tsplit``: filter-group boundaries). ``bias`` is 1-D (O,).
    """
    from . import schedules

    module = schedules.for_target(target)
    if hasattr(module, "generate"):  # a device whose template is its own loop nest (e.g. Mali's OpenCL one)
        return module.generate(packed, data_shape, strides, padding, bias, relu, target, config)
    cfg = layer_config(packed, data_shape, strides, padding, target, config)
    data_shape, strides, padding = _normalise(packed, data_shape, strides, padding)
    out_shape = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    func = unscheduled(packed, data_shape, strides, padding, bias, relu, cfg)
    func = schedules.for_target(target).apply_default(func, cfg, packed.k)
    groups = _geometry(packed, data_shape, strides, padding, cfg).groups(int(cfg["threads"]))
    return SparseConvKernel(func=func, arrays=_arrays(packed, max(groups, int(cfg.get("max_groups", 1)))),
                            out_shape=out_shape)


def tuning_task(
    packed: PackedConv,
    data_shape: tuple[int, int, int, int],
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (1, 1, 1, 1),
    bias: np.ndarray | bool = False,
    relu: bool = False,
    target: tvm.target.Target | None = None,
):
    """The layer as a ``schedules.space.TuningTask`` for the target's template (``tvm_pattern.tune``)."""
    from . import schedules

    data_shape, strides, padding = _normalise(packed, data_shape, strides, padding)
    return schedules.for_target(target).tuning_task(packed, data_shape, strides, padding, bias, relu, target)
