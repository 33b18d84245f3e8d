"""Pattern-sparse depthwise conv2d NCHW fp32 (any KxK, any stride / padding), channels grouped by pattern.

Design. The channels come grouped by pattern (``sparsity.depthwise``: an ``order`` index array, the output
stays in the original channel order); the generator emits one loop per pattern whose body has the pattern's
taps as literals, so a channel with 4 of 9 taps costs 4 FMAs per output vector, not 9. Threads take
contiguous runs of the grouped channels, balanced by taps (``tsplit``). Per channel:

- the blocks read the input straight from ``data``: interior blocks (every tap in range) run in loops with no
  bounds logic; the edge blocks are peeled with literal offsets, out-of-range tap rows dropped and
  out-of-range lanes zeroed by one shuffle against a zero vector (the load clamped into the row). With
  stride 2 a load of ``sw * V`` inputs is de-interleaved by shuffles (no scalar gather). Only inputs
  narrower than one such load fall back to packing a zero-padded copy of the plane into a thread-local
  slab (``slab[i, j] = pad(x)[i, j]``);
- an ``R`` rows x ``NV`` vectors output block accumulates the pattern's taps (tap offsets literal, weights
  broadcast once per channel, loads shared by taps / rows CSE'd by LLVM on the unrolled block). Edge blocks
  are shifted back to end on the edge (full blocks, vector stores, a few outputs recomputed);
- epilogue in the store: bias (folded BN), residual add, activation (ReLU / ReLU6 / clip).

All-zero channels store ``act(bias [+ residual])`` without touching the input.

Call: ``func(data, [residual], order, weights, tsplit, [bias], out)``; ``Kernel.arrays`` hold the arrays between.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import TvmPatternError
from ..sparsity.depthwise import DepthwisePatterns
from .dense_common import DenseKernel, bias_array, check_activation, epilogue, padding4, pair
from .depthwise_conv2d import DepthwiseGeometry, geometry
from .tvmscript import Script, buffer_param

__all__ = ["PatternDepthwiseKnobs", "fit_knobs", "pattern_depthwise", "thread_split"]

CHANNEL_COST = 2.0  # per-output cost of a channel besides its taps (packing its input, the store), in FMAs


@dataclass(frozen=True)
class PatternDepthwiseKnobs:
    rows: int  # output rows per register block
    nv: int  # vectors per row of the block
    lanes: int  # fp32 lanes per vector (output columns and the packing copies)
    threads: int


def fit_knobs(kn: PatternDepthwiseKnobs, g: DepthwiseGeometry) -> PatternDepthwiseKnobs:
    """Knobs shrunk to the output plane: lanes halved down to the width, at most the rows / vectors there are."""
    lanes = kn.lanes
    while lanes > 1 and lanes > g.ow:
        lanes //= 2
    return replace(kn, lanes=lanes, nv=max(1, min(kn.nv, g.ow // lanes)), rows=max(1, min(kn.rows, g.oh)),
                   threads=max(1, kn.threads))  # fmt: skip


def thread_split(packed: DepthwisePatterns, threads: int) -> np.ndarray:
    """(threads + 1,) boundaries in ``packed.order`` giving each thread about the same taps + channel cost."""
    taps = np.zeros(packed.channels, np.float64)
    for p in range(packed.k):
        taps[packed.starts[p]:packed.starts[p + 1]] = len(packed.taps(p))
    cum = np.concatenate([[0.0], np.cumsum(taps + CHANNEL_COST)])
    bounds = np.searchsorted(cum, cum[-1] * np.arange(threads + 1) / threads, side="left")
    bounds[0], bounds[-1] = 0, packed.channels
    return np.maximum.accumulate(bounds).astype(np.int32)


@dataclass(frozen=True)
class _Ctx:
    """What every emitter needs: the geometry, the knobs, the epilogue."""

    g: DepthwiseGeometry
    kn: PatternDepthwiseKnobs
    bias: bool
    residual: bool
    bounds: tuple[float, float] | None

    @property
    def rows(self) -> int:
        """Rows of the padded slab."""
        return self.g.h + self.g.top + max(0, (self.g.oh - 1) * self.g.sh + self.g.kh - self.g.h - self.g.top)

    @property
    def width(self) -> int:
        """Columns of the padded slab: every column a ``sw * V`` load of the last output vector reaches."""
        g = self.g
        return max(g.left + g.w, g.sw * g.ow + g.kw - 1, (g.ow - 1) * g.sw + g.kw)

    @property
    def perm(self) -> list[int]:
        """Output column of each accumulator lane. With stride 2 and 8 lanes, the order AVX's in-lane
        ``vshufps`` of two loaded vectors yields (one shuffle per tap; the order is undone once, at the store);
        else the identity (SSE / NEON: ``shufps`` / ``uzp1`` de-interleave in order)."""
        v = self.kn.lanes
        if self.g.sw == 2 and v == 8:
            return [0, 1, 4, 5, 2, 3, 6, 7]
        return list(range(v))


def _chunks(lo: int, hi: int, v: int) -> list[int]:
    """Starts of ``v``-wide chunks covering ``[lo, hi]``; the last one shifted back (overlapping writes)."""
    n = hi - lo + 1
    if v < 2 or n < v:
        return []
    starts = list(range(lo, hi - v + 2, v))
    return starts if starts[-1] + v - 1 == hi else [*starts, hi - v + 1]


def _zero_columns(s: Script, lo: int, hi: int) -> None:
    """Zero slab columns ``[lo, hi)`` of row ``i``."""
    if hi - lo == 1:
        s.line(f"slab[i, {lo}] = T.float32(0)")
    elif hi > lo:
        with s.block(f"for j in T.vectorized({hi - lo}):"):
            s.line(f"slab[i, {lo} + j] = T.float32(0)")


def _pack(s: Script, cx: _Ctx) -> None:
    """The channel's zero-padded input plane in the slab: rows copied as contiguous vectors (the last one
    shifted back), the halo zeroed; no gather at any stride (strided taps de-interleave in registers)."""
    g, v = cx.g, cx.kn.lanes
    lo, hi = g.left, g.left + g.w - 1
    chunks = _chunks(lo, hi, v)
    with s.block(f"for i in range({cx.rows}):"):
        s.line(f"y: T.let = i - {g.top}")
        with s.block(f"if 0 <= y and y < {g.h}:"):
            _zero_columns(s, 0, lo)
            for j0 in chunks:
                s.line(f"slab[i, T.Ramp({j0}, 1, {v})] = data[b, c, y, T.Ramp({j0 - lo}, 1, {v})]")
            if not chunks:
                for j in range(lo, hi + 1):
                    s.line(f"slab[i, {j}] = data[b, c, y, {j - lo}]")
            _zero_columns(s, hi + 1, cx.width)
        with s.block("else:"):
            _zero_columns(s, 0, cx.width)


def _tap(cx: _Ctx, t: int, dy: int, dx: int) -> str:
    """The statement adding tap ``t`` to the accumulators (inside the rr / u loops)."""
    g, v = cx.g, cx.kn.lanes
    row = f"(r0 + rr) * {g.sh} + {dy}" if g.sh > 1 else f"r0 + rr + {dy}"
    if g.sw == 1 or v == 1:  # contiguous taps (or one lane): a plain vectorized loop over l
        col = f"c0 + u * {v} + l + {dx}" if g.sw == 1 else f"(c0 + u + l) * {g.sw} + {dx}"
        return f"acc[rr, u * {v} + l] = acc[rr, u * {v} + l] + w{t} * slab[{row}, {col}]"
    lanes = ", ".join(str(g.sw * p) for p in cx.perm)
    load = f"slab[{row}, T.Ramp((c0 + u * {v}) * {g.sw} + {dx}, 1, {v * g.sw})]"
    cur = f"acc[rr, T.Ramp(u * {v}, 1, {v})]"
    return f"{cur} = {cur} + T.Broadcast(w{t}, {v}) * T.Shuffle([{load}], [{lanes}])"


def _store(s: Script, cx: _Ctx, rows: int, cols: int, acc: str = "acc", r0: str = "r0", c0: str = "c0") -> None:
    v = cx.kn.lanes
    if cx.perm != list(range(v)):  # undo the accumulators' lane order
        inverse = [cx.perm.index(j) for j in range(v)]
        ordered = f"ordered{acc[3:]}"
        s.line(f"{ordered} = T.alloc_buffer(({rows}, {cols}), 'float32')")
        with s.block(f"for rr in T.unroll({rows}):"), s.block(f"for u in T.unroll({cols // v}):"):
            s.line(f"{ordered}[rr, T.Ramp(u * {v}, 1, {v})] = T.Shuffle([{acc}[rr, T.Ramp(u * {v}, 1, {v})]], "
                   f"{inverse})")
        acc = ordered
    value = f"{acc}[rr, j]" + (f" + res[b, c, {r0} + rr, {c0} + j]" if cx.residual else "")
    with s.block(f"for rr in T.unroll({rows}):"), s.block(f"for j in T.vectorized({cols}):"):
        s.line(f"out[b, c, {r0} + rr, {c0} + j] = {epilogue(value, cx.bounds)}")


def _starts(n: int, size: int) -> list[int]:
    """Starts of ``size``-long blocks covering ``[0, n)``, the last one shifted back to end on the edge."""
    return [min(i * size, n - size) for i in range(-(-n // size))]


def _split(starts: list[int], size: int, inside) -> tuple[list[int], list[int], range]:
    """Block starts split into literal ones before / after a loop over the interior run ``i * size`` (blocks
    whose every tap is in range), so the loop needs no bounds logic."""
    run = [i for i, st in enumerate(starts) if st == i * size and inside(st)]
    if not run:
        return starts, [], range(0)
    lo, hi = run[0], run[-1] + 1
    return starts[:lo], starts[hi:], range(lo, hi)


def _direct_tap(cx: _Ctx, name: str, t: int, tap: tuple[int, int], rr: int, u: int, r0: int | None,
                c0: int | None) -> str | None:  # fmt: skip
    """Tap ``t`` for accumulator row ``rr``, vector ``u``, read straight from ``data``. A literal ``r0`` / ``c0``
    (edge block) drops out-of-range rows and zeroes out-of-range lanes with one shuffle against a zero vector;
    ``None`` (interior loop) reads unguarded. ``None`` returned: nothing of the tap is in range."""
    g, v = cx.g, cx.kn.lanes
    dy, dx = tap
    length = v * g.sw if v > 1 else 1
    if r0 is None:
        row = f"(r0 + {rr}) * {g.sh} + {dy - g.top}"
    else:
        y = (r0 + rr) * g.sh + dy - g.top
        if not 0 <= y < g.h:
            return None
        row = str(y)
    acc = f"{name}[{rr}, T.Ramp({u * v}, 1, {v})]" if v > 1 else f"{name}[{rr}, {u}]"
    if c0 is None:
        col = f"(c0 + {u * v}) * {g.sw} + {dx - g.left}"
        if v == 1:
            return f"{acc} = {acc} + w{t} * data[b, c, {row}, {col}]"
        load = f"data[b, c, {row}, T.Ramp({col}, 1, {length})]"
        if g.sw > 1:
            load = f"T.Shuffle([{load}], [{', '.join(str(g.sw * q) for q in cx.perm)}])"
        return f"{acc} = {acc} + T.Broadcast(w{t}, {v}) * {load}"
    first = (c0 + u * v) * g.sw + dx - g.left
    need = [first + g.sw * q for q in cx.perm]
    if not any(0 <= x < g.w for x in need):
        return None
    if v == 1:
        return f"{acc} = {acc} + w{t} * data[b, c, {row}, {need[0]}]"
    at = min(max(first, 0), g.w - length)
    idx = [x - at if 0 <= x < g.w else length for x in need]
    load = f"data[b, c, {row}, T.Ramp({at}, 1, {length})]"
    if idx != list(range(v)) or length != v:
        zero = f", T.Broadcast(T.float32(0), {length})" if length in idx else ""
        load = f"T.Shuffle([{load}{zero}], {idx})"
    return f"{acc} = {acc} + T.Broadcast(w{t}, {v}) * {load}"


def _direct_block(s: Script, cx: _Ctx, taps: list[tuple[int, int]], r0: int | None, c0: int | None) -> None:
    """One R x NV register block read straight from ``data`` (``r0`` / ``c0`` literal at an edge, else the
    loop's ``r0`` / ``c0`` variables); literal blocks get their own buffer names (one scope holds several)."""
    kn = cx.kn
    r, nv, v = kn.rows, kn.nv, kn.lanes
    name = "acc" if r0 is None and c0 is None else f"acc_{'r' if r0 is None else r0}_{'c' if c0 is None else c0}"
    s.line(f"{name} = T.alloc_buffer(({r}, {nv * v}), 'float32')")
    with s.block(f"for rr in T.unroll({r}):"), s.block(f"for j in T.vectorized({nv * v}):"):
        s.line(f"{name}[rr, j] = {'bc' if cx.bias else 'T.float32(0)'}")
    for t, tap in enumerate(taps):
        for rr in range(r):
            for u in range(nv):
                line = _direct_tap(cx, name, t, tap, rr, u, r0, c0)
                if line is not None:
                    s.line(line)
    _store(s, cx, r, nv * v, name, "r0" if r0 is None else str(r0), "c0" if c0 is None else str(c0))


def direct_ok(g: DepthwiseGeometry, kn: PatternDepthwiseKnobs) -> bool:
    """Whether the blocks can read ``data`` directly: every clamped vector load fits in an input row."""
    return g.w >= (kn.lanes * g.sw if kn.lanes > 1 else 1)


def _direct(s: Script, cx: _Ctx, taps: list[tuple[int, int]]) -> None:
    """The output plane without a padded copy: interior blocks in loops, edge blocks peeled with literal
    offsets (out-of-range rows dropped, out-of-range columns zeroed in registers)."""
    g, kn = cx.g, cx.kn
    r, nr = kn.rows, kn.nv * kn.lanes
    dys, dxs = [dy for dy, _ in taps], [dx for _, dx in taps]
    span = kn.lanes * g.sw if kn.lanes > 1 else 1

    def row_in(r0: int) -> bool:
        return r0 * g.sh + min(dys) - g.top >= 0 and (r0 + r - 1) * g.sh + max(dys) - g.top < g.h

    def col_in(c0: int) -> bool:
        return c0 * g.sw + min(dxs) - g.left >= 0 and \
            (c0 + nr - kn.lanes) * g.sw + max(dxs) - g.left + span <= g.w  # fmt: skip

    rows = _split(_starts(g.oh, r), r, row_in)
    cols = _split(_starts(g.ow, nr), nr, col_in)

    def row_part(r0: int | None) -> None:
        for c0 in cols[0]:
            _direct_block(s, cx, taps, r0, c0)
        if cols[2]:
            with s.block(f"for cb in range({cols[2].start}, {cols[2].stop}):"):
                s.line(f"c0: T.let = cb * {nr}")
                _direct_block(s, cx, taps, r0, None)
        for c0 in cols[1]:
            _direct_block(s, cx, taps, r0, c0)

    for r0 in rows[0]:
        row_part(r0)
    if rows[2]:
        with s.block(f"for rb in range({rows[2].start}, {rows[2].stop}):"):
            s.line(f"r0: T.let = rb * {r}")
            row_part(None)
    for r0 in rows[1]:
        row_part(r0)


def _blocks(s: Script, cx: _Ctx, taps: list[tuple[int, int]]) -> None:
    """The output plane in R x NV register blocks, the pattern's taps as literals."""
    g, kn = cx.g, cx.kn
    r, nv, v = kn.rows, kn.nv, kn.lanes
    nr = nv * v
    r0 = f"T.min(rb * {r}, {g.oh - r})" if g.oh % r else f"rb * {r}"
    c0 = f"T.min(cb * {nr}, {g.ow - nr})" if g.ow % nr else f"cb * {nr}"
    with s.block(f"for rb, cb in T.grid({-(-g.oh // r)}, {-(-g.ow // nr)}):"):
        s.line(f"r0: T.let = {r0}", f"c0: T.let = {c0}", f"acc = T.alloc_buffer(({r}, {nr}), 'float32')")
        with s.block(f"for rr in T.unroll({r}):"), s.block(f"for j in T.vectorized({nr}):"):
            s.line(f"acc[rr, j] = {'bc' if cx.bias else 'T.float32(0)'}")
        for t, (dy, dx) in enumerate(taps):
            with s.block(f"for rr in T.unroll({r}):"), s.block(f"for u in T.unroll({nv}):"):
                if g.sw == 1 or v == 1:
                    with s.block(f"for l in T.vectorized({v}):"):
                        s.line(_tap(cx, t, dy, dx))
                else:
                    s.line(_tap(cx, t, dy, dx))
        _store(s, cx, r, nr)


def _empty(s: Script, cx: _Ctx) -> None:
    """An all-zero channel: ``act(bias [+ residual])`` over the plane."""
    g = cx.g
    value = "bc" if cx.bias else "T.float32(0)"
    if cx.residual:
        value += " + res[b, c, r0, c0 + j]"
    with s.block(f"for r0 in range({g.oh}):"):
        s.line("c0: T.let = 0")
        with s.block(f"for j in T.vectorized({g.ow}):"):
            s.line(f"out[b, c, r0, c0 + j] = {epilogue(value, cx.bounds)}")


def _group(s: Script, cx: _Ctx, packed: DepthwisePatterns, p: int, wstart: int) -> None:
    """The loop over the thread's channels of group ``p`` (``p == k``: the empty channels)."""
    lo, hi = int(packed.starts[p]), int(packed.starts[p + 1])
    if hi == lo:
        return
    taps = packed.taps(p) if p < packed.k else []
    s.line(f"s{p}: T.let = T.max(tsplit[t], {lo})", f"e{p}: T.let = T.min(tsplit[t + 1], {hi})")
    with s.block(f"for kk in range(T.max(e{p} - s{p}, 0)):"):
        s.line(f"pos: T.let = s{p} + kk", "c: T.let = order[pos]")
        if cx.bias:
            s.line("bc: T.let = bias[c]")
        s.lines(f"w{t}: T.let = weights[{wstart} + (pos - {lo}) * {len(taps)} + {t}]" for t in range(len(taps)))
        with s.block(f"for b in range({cx.g.n}):"):
            if taps and direct_ok(cx.g, cx.kn):
                _direct(s, cx, taps)
            elif taps:
                _pack(s, cx)
                _blocks(s, cx, taps)
            else:
                _empty(s, cx)


def _source(packed: DepthwisePatterns, cx: _Ctx) -> Script:
    g, kn = cx.g, cx.kn
    params = [buffer_param("data", (g.n, g.c, g.h, g.w))]
    if cx.residual:
        params.append(buffer_param("res", (g.n, g.c, g.oh, g.ow)))
    params += [buffer_param("order", (g.c,), "int32"), buffer_param("weights", (max(packed.nnz, 1),)),
               buffer_param("tsplit", (kn.threads + 1,), "int32")]  # fmt: skip
    if cx.bias:
        params.append(buffer_param("bias", (g.c,)))
    params.append(buffer_param("out", (g.n, g.c, g.oh, g.ow)))
    s = Script()
    wstarts = packed.weight_starts()
    with s.prim_func("pattern_depthwise_conv2d", params, {"tirx.noalias": True}), \
            s.block(f"for t in T.parallel({kn.threads}):"):
        if not direct_ok(g, kn):
            s.line(f"slab = T.alloc_buffer(({cx.rows}, {cx.width}), 'float32')")
        for p in range(packed.k + 1):
            _group(s, cx, packed, p, int(wstarts[min(p, packed.k)]))
    return s


def pattern_depthwise(
    packed: DepthwisePatterns,
    data_shape,
    knobs: PatternDepthwiseKnobs,
    strides=(1, 1),
    padding=(1, 1, 1, 1),
    bias: np.ndarray | None = None,
    activation=None,
    residual: bool = False,
) -> DenseKernel:
    """Pattern-sparse depthwise NCHW conv2d of ``packed`` (``sparsity.depthwise.pack_depthwise`` of a weight).

    Returns ``DenseKernel(func, arrays=(order, weights, tsplit[, bias]), out_shape)``; call
    ``func(data, [residual], *arrays, out)``.
    """
    if not isinstance(packed, DepthwisePatterns):
        raise TvmPatternError(f"packed must be a DepthwisePatterns (sparsity.depthwise.pack_depthwise), got "
                              f"{type(packed).__name__}")  # fmt: skip
    kh, kw = packed.kernel
    g = geometry((packed.channels, 1, kh, kw), data_shape, pair(strides, "strides"), padding4(padding))
    kn = fit_knobs(knobs, g)
    cx = _Ctx(g, kn, bias is not None, residual, check_activation(activation))
    func = _source(packed, cx).parse()
    weights = packed.weights if packed.nnz else np.zeros(1, np.float32)
    arrays = [packed.order.astype(np.int32), np.ascontiguousarray(weights, np.float32),
              thread_split(packed, kn.threads)]
    if bias is not None:
        b = bias_array(bias, g.c)
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (g.n, g.c, g.oh, g.ow))
