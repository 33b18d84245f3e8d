"""Pattern-sparse depthwise conv2d NCHW fp32 (any KxK, any stride / padding), channels grouped by pattern.

Design. The channels come grouped by pattern (``sparsity.depthwise``: an ``order`` index array, the output
stays in the original channel order); the generator emits one loop per pattern whose body has the pattern's
taps as literals, so a channel with 4 of 9 taps costs 4 FMAs per output vector, not 9. Threads take
contiguous runs of the grouped channels, balanced by taps (``tsplit``). Per channel:

- the zero-padded input plane is packed into a thread-local slab split into stride phases
  (``slab[ph, pw, i, j] = pad(x)[i*sh + ph, j*sw + pw]``), only the phases the pattern's taps read. Rows are
  copied as contiguous vectors of ``sw * V`` inputs; with stride 2 each is de-interleaved into its ``sw``
  phases by shuffles (no scalar gather); the few halo columns are literal scalar copies or zeros;
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
from .dense_common import DenseKernel, check_activation, epilogue, padding4, pair
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
    def plane(self) -> int:
        return self.g.hq * self.g.wq

    def base(self, ph: int, pw: int) -> int:
        return (ph * self.g.sw + pw) * self.plane


def _phases(taps: list[tuple[int, int]], g: DepthwiseGeometry) -> dict[int, list[int]]:
    """Row phase -> column phases the taps read."""
    out: dict[int, list[int]] = {}
    for dy, dx in taps:
        out.setdefault(dy % g.sh, [])
        if dx % g.sw not in out[dy % g.sh]:
            out[dy % g.sh].append(dx % g.sw)
    return {ph: sorted(pws) for ph, pws in sorted(out.items())}


def _column_range(g: DepthwiseGeometry) -> tuple[int, int]:
    """Slab columns ``[lo, hi]`` whose ``sw`` phases all lie inside the input row (copied as vectors)."""
    lo = -(-g.left // g.sw)
    hi = min(g.wq - 1, (g.w - g.sw + g.left) // g.sw)
    return lo, hi


def _chunks(lo: int, hi: int, v: int) -> list[int]:
    """Starts of ``v``-wide chunks covering ``[lo, hi]``; the last one shifted back (overlapping writes)."""
    n = hi - lo + 1
    if n < v:
        return []
    starts = list(range(lo, hi - v + 2, v))
    return starts if starts[-1] + v - 1 == hi else [*starts, hi - v + 1]


def _pack_row(s: Script, cx: _Ctx, ph: int, pws: list[int], v: int) -> None:
    """Copy input row ``y{ph}`` into slab row ``i`` of phase ``ph`` for column phases ``pws``."""
    g = cx.g
    lo, hi = _column_range(g)
    chunks = _chunks(lo, hi, v) if v > 1 else []  # one lane: literal scalar copies
    covered = set() if not chunks else set(range(lo, hi + 1))
    for j0 in chunks:
        ramp = f"T.Ramp({j0 * g.sw - g.left}, 1, {v * g.sw})" if g.sw > 1 else f"T.Ramp({j0 - g.left}, 1, {v})"
        load = f"data[b, c, y{ph}, {ramp}]"
        if g.sw == 1:
            s.line(f"slab[T.Ramp({cx.base(ph, 0)} + i * {g.wq} + {j0}, 1, {v})] = {load}")
            continue
        name = f"q{ph}_{j0}"
        s.line(f"{name}: T.let = {load}")
        for pw in pws:
            lanes = ", ".join(str(pw + g.sw * k) for k in range(v))
            s.line(f"slab[T.Ramp({cx.base(ph, pw)} + i * {g.wq} + {j0}, 1, {v})] = T.Shuffle([{name}], [{lanes}])")
    for j in range(g.wq):
        if j in covered:
            continue
        for pw in pws:
            x = j * g.sw + pw - g.left
            value = f"data[b, c, y{ph}, {x}]" if 0 <= x < g.w else "T.float32(0)"
            s.line(f"slab[{cx.base(ph, pw)} + i * {g.wq} + {j}] = {value}")


def _pack(s: Script, cx: _Ctx, taps: list[tuple[int, int]]) -> None:
    """The channel's padded, phase-split input plane, only the phases the pattern reads."""
    g = cx.g
    v = cx.kn.lanes
    for ph, pws in _phases(taps, g).items():
        with s.block(f"for i in range({g.hq}):"):
            s.line(f"y{ph}: T.let = i * {g.sh} + {ph - g.top}")
            with s.block(f"if 0 <= y{ph} and y{ph} < {g.h}:"):
                _pack_row(s, cx, ph, pws, v)
            with s.block("else:"):
                for pw in pws:
                    with s.block(f"for j in T.vectorized({g.wq}):"):
                        s.line(f"slab[{cx.base(ph, pw)} + i * {g.wq} + j] = T.float32(0)")


def _store(s: Script, cx: _Ctx, acc: str, rows: int, cols: int) -> None:
    value = acc + (" + res[b, c, r0 + rr, c0 + j]" if cx.residual else "")
    with s.block(f"for rr in T.unroll({rows}):"), s.block(f"for j in T.vectorized({cols}):"):
        s.line(f"out[b, c, r0 + rr, c0 + j] = {epilogue(value, cx.bounds)}")


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
            src = (f"slab[{cx.base(dy % g.sh, dx % g.sw)} + (r0 + rr + {dy // g.sh}) * {g.wq} + c0 + u * {v} + l"
                   f" + {dx // g.sw}]")  # fmt: skip
            with s.block(f"for rr in T.unroll({r}):"), s.block(f"for u in T.unroll({nv}):"), \
                    s.block(f"for l in T.vectorized({v}):"):
                s.line(f"acc[rr, u * {v} + l] = acc[rr, u * {v} + l] + w{t} * {src}")
        _store(s, cx, "acc[rr, j]", r, nr)


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
            if taps:
                _pack(s, cx, taps)
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
        s.line(f"slab = T.alloc_buffer(({g.sh * g.sw * cx.plane},), 'float32')")
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
        b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if b.shape != (g.c,):
            raise TvmPatternError(f"bias must have {g.c} values, got shape {np.shape(bias)}")
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (g.n, g.c, g.oh, g.ow))
