"""3x3 stride-1 conv2d by Winograd F(4x4, 3x3), NCHW fp32: dense, or connectivity-sparse in filter blocks.

Why: F(4x4, 3x3) gets a 4x4 output tile from a 6x6 input tile with 36 multiplies per (input, output) channel
pair instead of 144, so 2.25 MACs per output and channel pair against 9 for a dense direct conv and 4 for a
4-tap pattern kernel. The transformed weights are dense (pattern zeros do not survive the transform), so it
only pays for a pattern-sparse layer when the pattern kernel's extra MACs outweigh the transforms: at the
pattern-only densities (4/9), not at 8x (unless connectivity-sparse, below). What oneDNN and DeepSparse run for
such layers.

The stages, per image, each a parallel loop of one PrimFunc (the workspaces come from TVM's workspace pool)::

    P[c, y, x]    = the input zero-padded to whole tiles                          (parallel over channels)
    V[xi, c, t]   = (B^T d_t B)[xi] for the 6x6 input tile d_t of tile t           (parallel over channels)
    M[xi, o, t]   = sum_c U[xi, o, c] * V[xi, c, t], U = G g G^T packed [xi, ob, c, m]   (parallel over xi)
    Q[o, y, x]    = A^T M_t A (+ bias, activation) for every tile, then out = Q's OH x OW window   (over filters)

Connectivity-sparse (``block=MR``): filters in blocks of ``MR`` share the union of their kept input channels
(``BlockCsr``), and the GEMM walks only those: ``M[xi, o, t] = sum_{c in kept(block of o)} U[xi, o, c] V[xi, c, t]``.
A dropped 3x3 kernel is a zero in all 36 products, so connectivity pruning survives the transform (pattern zeros do
not). It pays when the kept kernels fill their blocks (weights pruned in blocks of ``MR`` filters sharing their
kept channels: ``prune``'s ``kernel_block``); the register block is the dense one, each loaded ``V`` vector feeding
``MR`` filters, which the direct pattern kernel cannot do (a filter's own kernels, one load per FMA group).

Tiles are numbered ``t = ty * twv + tx`` with the tiles of a row padded to whole vectors (``twv``): the
transforms are vectorized over the tiles of a tile row (stride-4 input reads, contiguous ``V`` / ``M``). The
GEMM keeps an ``MR`` filters x ``NV`` vectors of tiles accumulator block in registers; per input channel it
loads ``NV`` vectors of ``V`` and broadcasts ``MR`` weights of ``U`` (packed in the order they are used), and
``V``'s ``C x NR`` panel stays in L1 while every filter block streams its weights.
Call: ``func(data, [residual], u, [boff, bch], [bias], out)``; ``arrays = (u[, boff, bch][, bias])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TvmPatternError
from ..sparsity.blocks import block_columns
from .dense_common import DenseKernel, bias_array, check_activation, epilogue, i64, padding4
from .parse_cache import parse_source

__all__ = ["BlockCsr", "WinogradGeometry", "WinogradKnobs", "block_csr", "default_knobs", "geometry",
           "sparse_knobs", "sparse_transform_weights", "transform_weights", "winograd_conv2d"]

M_TILE = 4  # outputs per tile side
ALPHA = 6  # input tile side: M_TILE + 3 - 1
XI = ALPHA * ALPHA
# Lavin & Gray's F(4x4, 3x3) on the points 0, +-1, +-2, infinity
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)  # fmt: skip
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)  # fmt: skip
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
CHUNK_TILES = 64
CHUNK_WEIGHTS = 4 << 20
TALL_FILTERS = 24  # filters of the tall register block on 32-register targets (default_knobs)
TALL_RATIO = 4
TALL_MIN_FILTERS = 512
VECTOR = 8  # fp32 lanes of the GEMM's vectors (AVX2 ymm; AVX-512 machines double-pump zmm FMAs anyway)


@dataclass(frozen=True)
class WinogradKnobs:
    """``mr`` filters x ``nv`` vectors of tiles per GEMM register block; ``lanes`` of the transforms' vectors."""

    mr: int = 6
    nv: int = 2
    lanes: int = 8
    filters_outer: bool = False
    chunk: int = 0  # tiles per chunk, a multiple of 16 (0: every stage over the whole layer)


@dataclass(frozen=True)
class WinogradGeometry:
    n: int
    c: int
    h: int
    w: int
    o: int
    top: int
    left: int
    oh: int
    ow: int
    th: int  # tile rows
    tw: int  # tiles per row
    twv: int  # tiles per row padded to whole transform vectors
    tp: int  # tiles in the GEMM (th * twv padded to whole register blocks)
    op: int  # filters in the GEMM (padded to whole register blocks)
    nr: int  # tiles per GEMM register block

    @property
    def ntb(self) -> int:
        return self.tp // self.nr

    @property
    def ph(self) -> int:
        return M_TILE * self.th + 2

    @property
    def pw(self) -> int:
        return M_TILE * self.twv + 2

    @property
    def qh(self) -> int:
        return M_TILE * self.th

    @property
    def qw(self) -> int:
        return M_TILE * self.twv


def geometry(weight_shape, data_shape, padding, knobs: WinogradKnobs) -> WinogradGeometry:
    """The sizes of one layer; ``TvmPatternError`` naming what does not fit a 3x3 stride-1 Winograd conv."""
    o, c, kh, kw = (int(x) for x in weight_shape)
    nr = knobs.nv * VECTOR
    if knobs.mr < 1 or knobs.nv < 1 or knobs.lanes not in (4, 8) or knobs.chunk < 0 or knobs.chunk % nr:
        raise TvmPatternError(f"knobs {knobs}: need mr, nv >= 1, lanes 4 or 8, chunk a multiple of nv * {VECTOR}")
    if (kh, kw) != (3, 3):
        raise TvmPatternError(f"Winograd F(4x4, 3x3) needs a 3x3 kernel, got {kh}x{kw}")
    if len(data_shape) != 4 or min(data_shape) < 1:
        raise TvmPatternError(f"data_shape must be NCHW with positive sizes, got {data_shape}")
    n, dc, h, w = (int(x) for x in data_shape)
    if dc != c:
        raise TvmPatternError(f"data has {dc} channels but the weight expects {c}")
    top, left, bottom, right = padding4(padding)
    oh, ow = h + top + bottom - 2, w + left + right - 2
    if oh < 1 or ow < 1:
        raise TvmPatternError(f"input {data_shape} with padding {padding} is smaller than the 3x3 kernel")
    th, tw = -(-oh // M_TILE), -(-ow // M_TILE)
    twv = -(-tw // knobs.lanes) * knobs.lanes
    tp = -(-(th * twv) // nr) * nr
    op = -(-o // knobs.mr) * knobs.mr
    return WinogradGeometry(n, c, h, w, o, top, left, oh, ow, th, tw, twv, tp, op, nr)


def default_knobs(weight_shape, data_shape, padding, registers: int = 16) -> WinogradKnobs:
    """6 filters x 2 vectors of tiles (12 accumulators, 15 of AVX2's 16 registers: measured 1.3-9x faster than
    12x1, 8x1 and 4x3, which spills); the filters' loop outer when a transform's weights outweigh its tiles
    (512 channels at 28x28: 1.7x); transforms 8 lanes wide unless a tile row is shorter than 8 tiles.

    With ``registers`` >= 32 (AVX-512), a layer of at least ``TALL_MIN_FILTERS`` filters and ``TALL_RATIO``
    times more filters than tiles takes a tall ``TALL_FILTERS`` x 1 block (26 registers): its tiles pad to 8,
    not 16, and each weight broadcast of the streamed transformed weights feeds 24 accumulators. Measured on
    Zen 4, interleaved, caches flushed between calls as a model's other layers do, against 6x2: 512@28
    7.94 -> 6.66 ms, 512@14 2.78 -> 2.24, 256->512@28 4.03 -> 3.61; but 256@14 0.61 -> 0.70, 128@28 a tie,
    and 256@56, 128->256@56 (fewer filters than 4x the tiles) 3-6% slower.

    Chunks of ``CHUNK_TILES`` tiles when the transformed weights are small (at most ``CHUNK_WEIGHTS`` bytes, which
    every chunk streams again) and the layer has many tiles: its transformed tiles then never leave L2
    (64 channels at 224x224: 21 -> 14 ms, 128 at 112x112: 12.7 -> 11.1 ms).
    """
    lanes = VECTOR if geometry(weight_shape, data_shape, padding, WinogradKnobs()).tw >= VECTOR else 4
    g = geometry(weight_shape, data_shape, padding, WinogradKnobs(6, 2, lanes))
    if registers >= 32 and g.o >= max(TALL_MIN_FILTERS, TALL_RATIO * g.th * g.twv):
        return WinogradKnobs(TALL_FILTERS, 1, lanes, True, 0)
    chunked = XI * g.c * g.op * 4 <= CHUNK_WEIGHTS and g.th * g.twv >= 4 * CHUNK_TILES
    return WinogradKnobs(6, 2, lanes, g.op > g.tp, CHUNK_TILES if chunked else 0)


def transform_weights(weight: np.ndarray, g: WinogradGeometry, mr: int) -> np.ndarray:
    """``u[xi, ob, c, m] = (G w[ob * mr + m, c] G^T)[xi]``, zero for the padding filters."""
    w = np.asarray(weight, np.float64)
    u = np.einsum("ak,ockl,bl->abco", G, w, G).reshape(XI, g.c, g.o)  # (xi, c, o)
    u = np.concatenate([u, np.zeros((XI, g.c, g.op - g.o))], axis=2)
    u = u.reshape(XI, g.c, g.op // mr, mr).transpose(0, 2, 1, 3)  # (xi, ob, c, m)
    return np.ascontiguousarray(u, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class BlockCsr:
    """The kept input channels of each block of ``mr`` consecutive filters (the union over the block's filters):
    block ``b``'s channels are ``channels[offsets[b]:offsets[b + 1]]``, ascending."""

    mr: int
    offsets: np.ndarray  # (blocks + 1,) int32
    channels: np.ndarray  # (entries,) int32
    kernels: int  # kept 3x3 kernels of the weight

    @property
    def entries(self) -> int:
        return int(self.offsets[-1])

    @property
    def fill(self) -> float:
        """Kept kernels / (mr x entries): 1 when every filter of a block keeps the block's channels."""
        return self.kernels / max(1, self.mr * self.entries)


def block_csr(weight: np.ndarray, mr: int) -> BlockCsr:
    """The block structure of ``weight`` (O, C, 3, 3) for blocks of ``mr`` filters (the last one padded)."""
    o, c = weight.shape[:2]
    kept = np.abs(np.asarray(weight)).reshape(o, c, -1).max(axis=2) > 0
    union = block_columns(kept, mr)
    offsets = np.concatenate([[0], np.cumsum(union.sum(axis=1))]).astype(np.int32)
    return BlockCsr(mr, offsets, np.nonzero(union)[1].astype(np.int32), int(kept.sum()))


def sparse_transform_weights(weight: np.ndarray, g: WinogradGeometry, csr: BlockCsr) -> np.ndarray:
    """``u[xi, e, m] = (G w[ob * mr + m, channels[e]] G^T)[xi]`` for the entries ``e`` of block ``ob``."""
    w = np.zeros((g.op, g.c, 3, 3))
    w[: g.o] = weight
    blocks = np.repeat(np.arange(len(csr.offsets) - 1), np.diff(csr.offsets))
    rows = blocks[:, None] * csr.mr + np.arange(csr.mr)  # (entries, mr)
    kernels = w[rows, csr.channels[:, None]]  # (entries, mr, 3, 3)
    u = np.einsum("ak,emkl,bl->abem", G, kernels, G).reshape(XI, -1, csr.mr)
    return np.ascontiguousarray(u, dtype=np.float32).reshape(-1)


def _combination(coeffs, names: list[str]) -> str:
    """``sum_k coeffs[k] * names[k]`` as TVMScript, zero terms dropped, unit coefficients unwritten."""
    terms = []
    for a, name in zip(coeffs, names, strict=True):
        if a == 0:
            continue
        if abs(a) == 1:
            terms.append(("- " if a < 0 else "+ ") + name)
        else:
            terms.append(("- " if a < 0 else "+ ") + f"T.float32({abs(float(a))!r}) * {name}")
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else "T.float32(0) " + text


def _copy(lines: list[str], ind: str, n: int, dst: str, src: str) -> None:
    """``dst(x) = src(x)`` for x < n (format strings of ``x``): whole 8-lane vectors, then a scalar tail."""
    whole = n // VECTOR
    if whole:
        lines += [f"{ind}for xb in range({whole}):", f"{ind}    for xl in T.vectorized({VECTOR}):",
                  f"{ind}        {dst.format(x=f'xb * {VECTOR} + xl')} = {src.format(x=f'xb * {VECTOR} + xl')}"]
    if n % VECTOR:
        lines += [f"{ind}for xt in range({n % VECTOR}):",
                  f"{ind}    {dst.format(x=f'{whole * VECTOR} + xt')} = {src.format(x=f'{whole * VECTOR} + xt')}"]


def _pad_source(g: WinogradGeometry) -> list[str]:
    ind = " " * 16
    lines = [
        f"        for c in T.parallel({g.c}):",
        f"            for y in range({g.ph}):",
        f"                yy: T.let = y - {g.top}",
        f"                row: T.let = (c * {g.ph} + y) * {g.pw}",
        f"                if 0 <= yy and yy < {g.h}:",
    ]
    src = f"data[b * {g.c * g.h * g.w} + (c * {g.h} + yy) * {g.w} + {{x}}]"
    inner = ind + "    "
    if g.left:
        lines += [f"{inner}for x in range({g.left}):", f"{inner}    pad[row + x] = T.float32(0)"]
    width = min(g.w, g.pw - g.left)
    _copy(lines, inner, width, f"pad[row + {g.left} + {{x}}]", src)
    if g.pw - g.left - width:
        lines += [f"{inner}for x in range({g.pw - g.left - width}):",
                  f"{inner}    pad[row + {g.left + width} + x] = T.float32(0)"]
    lines.append(f"{ind}else:")
    _copy(lines, inner, g.pw, "pad[row + {x}]", "T.float32(0)")
    return lines


def _tile_vectors(lines: list[str], ind: str, g: WinogradGeometry, kn: WinogradKnobs) -> str:
    """Open the loop over the current chunk's vectors of ``lanes`` tiles (one tile row each); returns the indent
    of the body, where ``tl`` is the tile's index in the chunk and ``ty`` / ``tx`` its place."""
    lanes, tc = kn.lanes, _chunk_tiles(g, kn)
    lines += [f"{ind}for tv in range({tc // lanes}):",
              f"{ind}    t0: T.let = k * {tc} + tv * {lanes}",
              f"{ind}    if t0 < {g.th * g.twv}:",
              f"{ind}        ty: T.let = t0 // {g.twv}",
              f"{ind}        for l in T.vectorized({lanes}):",
              f"{ind}            tx: T.let = t0 % {g.twv} + l",
              f"{ind}            tl: T.let = tv * {lanes} + l"]  # fmt: skip
    return ind + " " * 12


def _input_transform_source(g: WinogradGeometry, kn: WinogradKnobs, ind: str, par: str) -> list[str]:
    ntb = _chunk_tiles(g, kn) // g.nr
    lines = [f"{ind}for c in {par}({g.c}):"]
    body = _tile_vectors(lines, ind + "    ", g, kn)
    lines.append(f"{body}base: T.let = (c * {g.ph} + {M_TILE} * ty) * {g.pw} + {M_TILE} * tx")
    lines += [f"{body}d{r}{s}: T.let = pad[base + {r * g.pw + s}]" for r in range(ALPHA) for s in range(ALPHA)]
    for i in range(ALPHA):
        for s in range(ALPHA):
            lines.append(f"{body}z{i}{s}: T.let = {_combination(BT[i], [f'd{r}{s}' for r in range(ALPHA)])}")
    for i in range(ALPHA):
        for j in range(ALPHA):
            dst = f"wv[(({i * ALPHA + j} * {ntb} + tl // {g.nr}) * {g.c} + c) * {g.nr} + tl % {g.nr}]"
            lines.append(f"{body}{dst} = {_combination(BT[j], [f'z{i}{s}' for s in range(ALPHA)])}")
    return lines


def _gemm_source(g: WinogradGeometry, kn: WinogradKnobs, ind: str, par: str, entries: int | None) -> list[str]:
    """The 36 GEMMs; ``filters_outer``: each filter block's weights stay in L1 while the tile panels stream
    (when a transform's weights outweigh its tiles), else each tile panel stays while the weights stream.
    ``entries`` (sparse): the loop over channels walks the block's kept channels (``boff``, ``bch``)."""
    mr, nv, v = kn.mr, kn.nv, VECTOR
    nr, nob, ntb = g.nr, g.op // kn.mr, _chunk_tiles(g, kn) // g.nr
    outer, inner = (("ob", nob), ("tb", ntb)) if kn.filters_outer else (("tb", ntb), ("ob", nob))
    if entries is None:
        channels = [f"            for c in range({g.c}):",
                    f"                src: T.let = ((xi * {ntb} + tb) * {g.c} + c) * {nr}"]
        weight = f"u[((xi * {nob} + ob) * {g.c} + c) * {mr} + m]"
    else:
        channels = ["            for e in range(boff[ob], boff[ob + 1]):",
                    f"                src: T.let = ((xi * {ntb} + tb) * {g.c} + bch[e]) * {nr}"]
        weight = f"u[(xi * {entries} + e) * {mr} + m]"
    body = [
        f"for xi in {par}({XI}):",
        f"    for {outer[0]} in range({outer[1]}):",
        f"        for {inner[0]} in range({inner[1]}):",
        f"            acc = T.alloc_buffer(({mr}, {nr}), 'float32')",
        f"            for m in T.unroll({mr}):",
        f"                for j in T.vectorized({nr}):",
        "                    acc[m, j] = T.float32(0)",
        *channels,
        f"                for m in T.unroll({mr}):",
        f"                    wgt: T.let = {weight}",
        f"                    for q in T.unroll({nv}):",
        f"                        for l in T.vectorized({v}):",
        f"                            acc[m, q * {v} + l] = acc[m, q * {v} + l] + wgt * wv[src + q * {v} + l]",
        f"            for m in T.unroll({mr}):",
        f"                for j in T.vectorized({nr}):",
        f"                    mv[((xi * {ntb} + tb) * {g.op} + ob * {mr} + m) * {nr} + j] = acc[m, j]",
    ]
    return [ind + line for line in body]


def _output_source(g: WinogradGeometry, kn: WinogradKnobs, ind: str, par: str, bias: bool) -> list[str]:
    ntb = _chunk_tiles(g, kn) // g.nr
    lines = [f"{ind}for o in {par}({g.o}):"]
    body = _tile_vectors(lines, ind + "    ", g, kn)
    lines += [f"{body}m{a}{c}: T.let = mv[(({a * ALPHA + c} * {ntb} + tl // {g.nr}) * {g.op} + o) * {g.nr}"
              f" + tl % {g.nr}]" for a in range(ALPHA) for c in range(ALPHA)]  # fmt: skip
    for i in range(M_TILE):
        for c in range(ALPHA):
            lines.append(f"{body}s{i}{c}: T.let = {_combination(AT[i], [f'm{a}{c}' for a in range(ALPHA)])}")
    add = " + bias[o]" if bias else ""
    for i in range(M_TILE):
        for j in range(M_TILE):
            value = f"({_combination(AT[j], [f's{i}{c}' for c in range(ALPHA)])}){add}"
            lines.append(f"{body}plane[(o * {g.qh} + {M_TILE} * ty + {i}) * {g.qw} + {M_TILE} * tx + {j}] = {value}")
    return lines


def _crop_source(g: WinogradGeometry, residual: bool, bounds) -> list[str]:
    """``out`` = the OH x OW window of the tile-padded output planes (+ residual, activation)."""
    lines = [f"        for o in T.parallel({g.o}):", f"            for y in range({g.oh}):",
             f"                row: T.let = b * {g.o * g.oh * g.ow} + (o * {g.oh} + y) * {g.ow}"]
    value = f"plane[(o * {g.qh} + y) * {g.qw} + {{x}}]" + (" + res[row + {x}]" if residual else "")
    _copy(lines, " " * 16, g.ow, "out[row + {x}]", epilogue(value, bounds))
    return lines


def _chunk_tiles(g: WinogradGeometry, kn: WinogradKnobs) -> int:
    """Tiles per chunk: ``kn.chunk``, or every tile (padded to whole register blocks) when 0."""
    return kn.chunk if kn.chunk else g.tp


def _source(g: WinogradGeometry, kn: WinogradKnobs, bias: bool, residual: bool, bounds, entries: int | None) -> str:
    params = [f"data_t: T.Buffer({i64(g.n, g.c, g.h, g.w)}, 'float32')"]
    if residual:
        params.append(f"res_t: T.Buffer({i64(g.n, g.o, g.oh, g.ow)}, 'float32')")
    if entries is None:
        params.append(f"u: T.Buffer({i64(XI * g.op * g.c)}, 'float32')")
    else:
        params += [f"u: T.Buffer({i64(XI * max(entries, 1) * kn.mr)}, 'float32')",
                   f"boff: T.Buffer({i64(g.op // kn.mr + 1)}, 'int32')",
                   f"bch: T.Buffer({i64(max(entries, 1))}, 'int32')"]
    if bias:
        params.append(f"bias: T.Buffer({i64(g.o)}, 'float32')")
    params.append(f"out_t: T.Buffer({i64(g.n, g.o, g.oh, g.ow)}, 'float32')")
    tc = _chunk_tiles(g, kn)
    work = [f"wv = T.alloc_buffer(({XI * g.c * tc},), 'float32')",
            f"mv = T.alloc_buffer(({XI * g.op * tc},), 'float32')"]
    lines = [
        "@T.prim_func(s_tir=True)",
        f"def winograd_conv2d({', '.join(params)}):",
        "    T.func_attr({'tirx.noalias': True})",
        f"    data = T.decl_buffer(({g.n * g.c * g.h * g.w},), 'float32', data=data_t.data)",
        f"    out = T.decl_buffer(({g.n * g.o * g.oh * g.ow},), 'float32', data=out_t.data)",
        *([f"    res = T.decl_buffer(({g.n * g.o * g.oh * g.ow},), 'float32', data=res_t.data)"] if residual else []),
        f"    pad = T.alloc_buffer(({g.c * g.ph * g.pw},), 'float32')",
        f"    plane = T.alloc_buffer(({g.o * g.qh * g.qw},), 'float32')",
    ]
    if not kn.chunk:
        lines += ["    " + line for line in work]
    lines.append(f"    for b in range({g.n}):")
    lines += _pad_source(g)
    if kn.chunk:  # one parallel loop over chunks; each thread's chunk stays in L2 through the three stages
        ind, par = " " * 12, "range"
        lines.append(f"        for k in T.parallel({-(-(g.th * g.twv) // tc)}):")
        lines += [ind + line for line in work]
    else:  # each stage is parallel on its own
        ind, par = " " * 8, "T.parallel"
        lines.append("        k: T.let = 0")
    lines += _input_transform_source(g, kn, ind, par)
    lines += _gemm_source(g, kn, ind, par, entries)
    lines += _output_source(g, kn, ind, par, bias)
    lines += _crop_source(g, residual, bounds)
    return "\n".join(lines) + "\n"


def sparse_knobs(weight_shape, data_shape, padding, csr: BlockCsr) -> WinogradKnobs:
    """The connectivity-sparse kernel's knobs: ``csr.mr`` filters x 2 vectors of tiles (``default_knobs``' rules
    for lanes, loop order and chunks, on the kept weights)."""
    lanes = VECTOR if geometry(weight_shape, data_shape, padding, WinogradKnobs()).tw >= VECTOR else 4
    g = geometry(weight_shape, data_shape, padding, WinogradKnobs(csr.mr, 2, lanes))
    chunked = XI * csr.entries * csr.mr * 4 <= CHUNK_WEIGHTS and g.th * g.twv >= 4 * CHUNK_TILES
    return WinogradKnobs(csr.mr, 2, lanes, g.op > g.tp, CHUNK_TILES if chunked else 0)


def winograd_conv2d(weight: np.ndarray, data_shape, padding=(1, 1, 1, 1), bias: np.ndarray | None = None,
                    activation=None, residual: bool = False, knobs: WinogradKnobs | None = None,
                    registers: int = 16, block: int = 0) -> DenseKernel:
    """A 3x3 stride-1 NCHW conv2d of ``weight`` (O, C, 3, 3) by Winograd F(4x4, 3x3).

    ``padding``: int, (ph, pw) or (top, left, bottom, right); ``activation``: None, "relu", "relu6" or
    ("clip", lo, hi); ``residual``: the kernel takes a second input (N, O, OH, OW) added before the activation;
    ``knobs``: the register block and chunking (default ``default_knobs`` for ``registers`` vector registers);
    ``block`` > 0: connectivity-sparse, filters in blocks of ``block`` walk only their kept channels (the knobs'
    ``mr`` is then ``block``; default ``sparse_knobs``). Returns ``DenseKernel(func, arrays, out_shape)`` with
    ``arrays = (u[, boff, bch][, bias])``; call ``func(data, [residual], *arrays, out)``.
    """
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 4:
        raise TvmPatternError(f"weight must be (O, C, 3, 3), got shape {weight.shape}")
    if block < 0:
        raise TvmPatternError(f"block must be >= 0 (0: dense), got {block}")
    csr = block_csr(weight, block) if block > 0 else None
    if csr is None:
        knobs = knobs or default_knobs(weight.shape, data_shape, padding, registers)
    else:
        knobs = knobs or sparse_knobs(weight.shape, data_shape, padding, csr)
        if knobs.mr != block:
            raise TvmPatternError(f"a sparse Winograd kernel's mr must be its block {block}, got knobs {knobs}")
    g = geometry(weight.shape, data_shape, padding, knobs)
    bounds = check_activation(activation)
    entries = None if csr is None else csr.entries
    func = parse_source(_source(g, knobs, bias is not None, residual, bounds, entries))
    if csr is None:
        arrays = [transform_weights(weight, g, knobs.mr)]
    else:
        u = sparse_transform_weights(weight, g, csr) if csr.entries else np.zeros(XI * knobs.mr, np.float32)
        arrays = [u, csr.offsets, csr.channels if csr.entries else np.zeros(1, np.int32)]
    if bias is not None:
        arrays.append(bias_array(bias, g.o))
    return DenseKernel(func, tuple(arrays), (g.n, g.o, g.oh, g.ow))
