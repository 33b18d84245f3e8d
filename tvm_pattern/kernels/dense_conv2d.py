"""Dense conv2d NCHW fp32 of any kernel size, stride and padding, as a register-blocked GEMM.

Design. The input is repacked (once per image, in parallel over channels) into stride-phase planes:
``slab[c, ph, pw, i, j] = pad(data)[c, i*sh + ph, j*sw + pw]`` with plane pitch ``Wq = ceil(Wpad/sw)``.
Then every tap ``(dy, dx)`` of output pixel ``(y, x)`` reads plane ``(dy % sh, dx % sw)`` at flat index
``(y + dy//sh) * Wq + x + dx//sw``: with the output also flattened on pitch ``Wq`` (``q = y*Wq + x``,
``Wq - OW`` garbage columns per row), the conv is a GEMM ``out[oc, q] = sum_k W[oc, k] * slab[off[k] + q]``
over ``k = (ic, dy, dx)`` with contiguous vector loads at any stride; ``off`` is a constant table.
A 1x1 stride-1 unpadded conv needs no phase planes (``Wq = W``, no halo: 7x7 and 14x14 maps are one flat
run of pixels, stored with vector stores). Knob ``panel`` (default for every flat-pitch conv): before the
GEMM each pixel block's ``K x NR`` input strip is copied into a contiguous panel (im2col of the block), so
the micro-kernel streams one contiguous array. Knob ``rows`` (default for the stems, where the flat pitch
would need cropped scalar stores and K is small): pixel blocks lie within one output row (vector stores).

Micro-kernel: an ``MR`` output channels x ``NV`` vectors of ``V`` pixels accumulator block in registers
(a small "global" buffer, unrolled, vectorized); per ``k``: ``NV`` vector loads, ``MR`` weight broadcasts,
``MR*NV`` FMAs. Weights are packed at compile time as ``wp[ob, k, m]`` (the order the kernel broadcasts
them). Edge blocks (channels and pixels) are shifted back to end on the edge (recomputing a little) so
every block is full. Work: tiles of ``oc_blocks`` channel blocks x ``px_blocks`` pixel blocks, tiles split
contiguously over ``threads``; the channel-chunk's weights stay in L2 while the pixel strips stream.
Epilogue in the store: bias (accumulator init), residual add, activation (relu / relu6 / clip).

Call: ``func(data, [residual], wp, off, [bias], out)``; ``Kernel.arrays = (wp, off[, bias])``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import TvmPatternError
from .dense_common import DenseKernel, bias_array, check_activation, epilogue, i64, padding4, pair
from .parse_cache import parse_source

__all__ = ["ConvGeometry", "ConvKnobs", "blocks", "dense_conv2d", "fit_knobs", "geometry", "pack_weights"]


@dataclass(frozen=True)
class ConvKnobs:
    mr: int  # output channels per register block
    nv: int  # vectors per register block
    lanes: int  # fp32 lanes per vector
    oc_blocks: int  # channel blocks per tile (the weights a tile keeps in L2)
    px_blocks: int  # pixel blocks per tile
    threads: int
    panel: bool = False  # copy each pixel block's K x NR input strip into a contiguous panel first
    rows: bool = False  # pixel blocks within one output row (vector stores) instead of the flat pitch


@dataclass(frozen=True)
class ConvGeometry:
    n: int
    c: int
    h: int
    w: int
    oc: int
    kh: int
    kw: int
    sh: int
    sw: int
    top: int
    left: int
    oh: int
    ow: int
    direct: bool  # 1x1 / stride 1 / no padding: the input is read in place
    phases_h: tuple[int, ...]
    phases_w: tuple[int, ...]
    hq: int
    wq: int

    @property
    def k(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def plane(self) -> int:
        return self.hq * self.wq

    @property
    def nflat(self) -> int:
        """Flat output positions computed: rows on pitch ``wq``, the last row only up to ``ow``."""
        return (self.oh - 1) * self.wq + self.ow

    @property
    def slab_size(self) -> int:
        return self.c * len(self.phases_h) * len(self.phases_w) * self.plane

    def offsets(self) -> np.ndarray:
        off = np.zeros(self.k, np.int32)
        for ic in range(self.c):
            for dy in range(self.kh):
                for dx in range(self.kw):
                    k = (ic * self.kh + dy) * self.kw + dx
                    if self.direct:
                        off[k] = ic * self.plane
                        continue
                    ph, pw = self.phases_h.index(dy % self.sh), self.phases_w.index(dx % self.sw)
                    base = ((ic * len(self.phases_h) + ph) * len(self.phases_w) + pw) * self.plane
                    off[k] = base + (dy // self.sh) * self.wq + dx // self.sw
        return off


def geometry(weight_shape, data_shape, strides, padding) -> ConvGeometry:
    oc, c, kh, kw = (int(x) for x in weight_shape)
    if len(data_shape) != 4 or min(data_shape) < 1:
        raise TvmPatternError(f"data_shape must be NCHW with positive sizes, got {data_shape}")
    n, dc, h, w = (int(x) for x in data_shape)
    if dc != c:
        raise TvmPatternError(f"data has {dc} channels but the weight expects {c}")
    sh, sw = pair(strides, "strides")
    top, left, bottom, right = padding4(padding)
    hp, wp = h + top + bottom, w + left + right
    if hp < kh or wp < kw:
        raise TvmPatternError(f"input {data_shape} with padding {padding} is smaller than the {kh}x{kw} kernel")
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    direct = kh == kw == 1 and sh == sw == 1 and top == left == bottom == right == 0
    if direct:
        return ConvGeometry(n, c, h, w, oc, kh, kw, sh, sw, 0, 0, oh, ow, True, (0,), (0,), h, w)
    phases_h = tuple(sorted({dy % sh for dy in range(kh)}))
    phases_w = tuple(sorted({dx % sw for dx in range(kw)}))
    hq, wq = -(-hp // sh), -(-wp // sw)
    return ConvGeometry(n, c, h, w, oc, kh, kw, sh, sw, top, left, oh, ow, False, phases_h, phases_w, hq, wq)


# ---------------------------------------------------------------------------------------------- knobs

def fit_knobs(knobs: ConvKnobs, g: ConvGeometry) -> ConvKnobs:
    """Shrink a block to the layer: at most OC channels, at most the flat pixels (row mode: one row)."""
    rows = knobs.rows and g.wq != g.ow
    span = g.ow if rows else g.nflat
    lanes = knobs.lanes
    while lanes > 1 and lanes > span:
        lanes //= 2
    nv = max(1, min(knobs.nv, span // lanes))
    mr = max(1, min(knobs.mr, g.oc))
    return replace(knobs, mr=mr, nv=nv, lanes=lanes, rows=rows)


def blocks(g: ConvGeometry, mr: int, nr: int, rows: bool = False) -> tuple[int, int]:
    if rows:
        return -(-g.oc // mr), g.oh * -(-g.ow // nr)
    return -(-g.oc // mr), -(-g.nflat // nr)


# ---------------------------------------------------------------------------------------------- source

def _pack_source(g: ConvGeometry, ind: str) -> list[str]:
    """Zero-padded stride-phase planes of image ``b``, parallel over channels."""
    nph, npw = len(g.phases_h), len(g.phases_w)
    lines = [f"{ind}for c in T.parallel({g.c}):"]
    for a, ph in enumerate(g.phases_h):
        for bb, pw in enumerate(g.phases_w):
            base = f"((c * {nph} + {a}) * {npw} + {bb}) * {g.plane}"
            lines += [
                f"{ind}    for i in range({g.hq}):",
                f"{ind}        y{a}_{bb}: T.let = i * {g.sh} + {ph - g.top}",
                f"{ind}        if 0 <= y{a}_{bb} and y{a}_{bb} < {g.h}:",
                f"{ind}            for j in range({g.wq}):",
                f"{ind}                x{a}_{bb}: T.let = j * {g.sw} + {pw - g.left}",
                f"{ind}                slab[{base} + i * {g.wq} + j] = T.if_then_else("
                f"0 <= x{a}_{bb} and x{a}_{bb} < {g.w}, dflat[b * {g.c * g.h * g.w} + (c * {g.h} + y{a}_{bb}) * {g.w}"
                f" + x{a}_{bb}], T.float32(0))",
                f"{ind}        else:",
                f"{ind}            for j in {'T.vectorized' if g.wq % 8 == 0 else 'range'}({g.wq}):",
                f"{ind}                slab[{base} + i * {g.wq} + j] = T.float32(0)",
            ]
    return lines


def _source(g: ConvGeometry, kn: ConvKnobs, bias: bool, residual: bool, bounds) -> str:
    mr, nv, v = kn.mr, kn.nv, kn.lanes
    nr = nv * v
    nob, npb = blocks(g, mr, nr, kn.rows)
    n_occ, n_pc = -(-nob // kn.oc_blocks), -(-npb // kn.px_blocks)
    items = n_occ * n_pc
    per = -(-items // kn.threads)
    ohw = g.oh * g.ow
    params = [f"data: T.Buffer({i64(g.n, g.c, g.h, g.w)}, 'float32')"]
    if residual:
        params.append(f"res: T.Buffer({i64(g.n, g.oc, g.oh, g.ow)}, 'float32')")
    params += [f"wp: T.Buffer({i64(nob * g.k * mr)}, 'float32')", f"off: T.Buffer({i64(g.k)}, 'int32')"]
    if bias:
        params.append(f"bias: T.Buffer({i64(g.oc)}, 'float32')")
    params.append(f"out: T.Buffer({i64(g.n, g.oc, g.oh, g.ow)}, 'float32')")
    oc0 = f"T.min(ob * {mr}, {g.oc - mr})" if g.oc % mr else f"ob * {mr}"
    if kn.rows:  # p0: where the block reads (pitch wq), q0: where it stores (pitch ow)
        ncb = -(-g.ow // nr)
        x0 = f"T.min(pb % {ncb} * {nr}, {g.ow - nr})" if g.ow % nr else f"pb % {ncb} * {nr}"
        p0 = f"pb // {ncb} * {g.wq} + {x0}"
        q0 = f"pb // {ncb} * {g.ow} + {x0}"
    else:
        p0 = f"T.min(pb * {nr}, {g.nflat - nr})" if g.nflat % nr else f"pb * {nr}"
        q0 = "p0"
    src = "dflat" if g.direct else "slab"
    src_base = f"b * {g.c * g.h * g.w} + " if g.direct else ""
    lines = [
        "@T.prim_func(s_tir=True)",
        f"def dense_conv2d({', '.join(params)}):",
        "    T.func_attr({'tirx.noalias': True})",
        f"    dflat = T.decl_buffer(({g.n * g.c * g.h * g.w},), 'float32', data=data.data)",
        f"    oflat = T.decl_buffer(({g.n * g.oc * ohw},), 'float32', data=out.data)",
    ]
    if residual:
        lines.append(f"    rflat = T.decl_buffer(({g.n * g.oc * ohw},), 'float32', data=res.data)")
    if not g.direct:
        lines.append(f"    slab = T.alloc_buffer(({g.slab_size},), 'float32')")
    if kn.panel:
        lines.append(f"    panel = T.alloc_buffer(({npb * g.k * nr},), 'float32')")
    lines.append(f"    for b in range({g.n}):")
    if not g.direct:
        lines += _pack_source(g, " " * 8)
    if kn.panel:
        lines += [
            f"        for pb in T.parallel({npb}):",
            f"            p0: T.let = {p0}",
            f"            for k in range({g.k}):",
            f"                o: T.let = {src_base}off[k] + p0",
            f"                for j in T.vectorized({nr}):",
            f"                    panel[(pb * {g.k} + k) * {nr} + j] = {src}[o + j]",
        ]
        src, src_base = "panel", ""
    init = "bias[oc0 + m]" if bias else "T.float32(0)"
    lines += [
        f"        for t in T.parallel({kn.threads}):",
        f"            for it in range({per}):",
        f"                item: T.let = t * {per} + it",
        f"                if item < {items}:",
        f"                    occ: T.let = item // {n_pc}",
        f"                    pc: T.let = item % {n_pc}",
        f"                    for pbi in range({kn.px_blocks}):",
        f"                        pb: T.let = pc * {kn.px_blocks} + pbi",
        f"                        if pb < {npb}:",
        f"                            p0: T.let = {p0}",
        f"                            for obi in range({kn.oc_blocks}):",
        f"                                ob: T.let = occ * {kn.oc_blocks} + obi",
        f"                                if ob < {nob}:",
        f"                                    oc0: T.let = {oc0}",
        f"                                    acc = T.alloc_buffer(({mr}, {nr}), 'float32')",
        f"                                    for m in T.unroll({mr}):",
        f"                                        for j in T.vectorized({nr}):",
        f"                                            acc[m, j] = {init}",
        f"                                    for k in range({g.k}):",
        f"                                        o: T.let = (pb * {g.k} + k) * {nr}" if kn.panel else
        f"                                        o: T.let = {src_base}off[k] + p0",
        f"                                        for m in T.unroll({mr}):",
        f"                                            wv: T.let = wp[(ob * {g.k} + k) * {mr} + m]",
        f"                                            for u in T.unroll({nv}):",
        f"                                                for l in T.vectorized({v}):",
        f"                                                    acc[m, u * {v} + l] = acc[m, u * {v} + l]"
        f" + wv * {src}[o + u * {v} + l]",
    ]
    ind = " " * 36
    if g.wq == g.ow or kn.rows:
        value = "acc[m, j]" + (" + rflat[ob_base + q0 + j]" if residual else "")
        lines += [
            f"{ind}q0: T.let = {q0}",
            f"{ind}for m in T.unroll({mr}):",
            f"{ind}    ob_base: T.let = (b * {g.oc} + oc0 + m) * {ohw}",
            f"{ind}    for j in T.vectorized({nr}):",
            f"{ind}        oflat[ob_base + q0 + j] = {epilogue(value, bounds)}",
        ]
    else:
        value = "acc[m, j]" + (f" + rflat[ob_base + yy * {g.ow} + xx]" if residual else "")
        lines += [
            f"{ind}for m in T.unroll({mr}):",
            f"{ind}    ob_base: T.let = (b * {g.oc} + oc0 + m) * {ohw}",
            f"{ind}    for j in T.unroll({nr}):",
            f"{ind}        yy: T.let = (p0 + j) // {g.wq}",
            f"{ind}        xx: T.let = p0 + j - yy * {g.wq}",
            f"{ind}        if xx < {g.ow}:",
            f"{ind}            oflat[ob_base + yy * {g.ow} + xx] = {epilogue(value, bounds)}",
        ]
    return "\n".join(lines) + "\n"


def pack_weights(weight: np.ndarray, g: ConvGeometry, mr: int) -> np.ndarray:
    """``wp[ob, k, m] = W[oc0(ob) + m, k]`` with the last block shifted back like the kernel's."""
    w2 = np.asarray(weight, np.float32).reshape(g.oc, g.k)
    nob = -(-g.oc // mr)
    starts = [min(ob * mr, g.oc - mr) for ob in range(nob)]
    wp = np.stack([w2[s:s + mr].T for s in starts])  # (nob, k, mr)
    return np.ascontiguousarray(wp.reshape(-1), dtype=np.float32)


def dense_conv2d(
    weight: np.ndarray,
    data_shape,
    knobs: ConvKnobs,
    strides=(1, 1),
    padding=(0, 0, 0, 0),
    bias: np.ndarray | None = None,
    activation=None,
    residual: bool = False,
) -> DenseKernel:
    """A dense NCHW conv2d of ``weight`` (OC, C, KH, KW) for inputs of ``data_shape``.

    ``padding``: int, (ph, pw) or (top, left, bottom, right). ``activation``: None, "relu", "relu6" or
    ("clip", lo, hi). ``residual``: the kernel takes a second input (N, OC, OH, OW) added before the
    activation. Returns ``Kernel(func, arrays=(wp, off[, bias]), out_shape)``; call
    ``func(data, [residual], *arrays, out)``.
    """
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 4:
        raise TvmPatternError(f"weight must be (OC, C, KH, KW), got shape {weight.shape}")
    g = geometry(weight.shape, data_shape, strides, padding)
    bounds = check_activation(activation)
    kn = fit_knobs(knobs, g)
    func = parse_source(_source(g, kn, bias is not None, residual, bounds))
    arrays = [pack_weights(weight, g, kn.mr), g.offsets()]
    if bias is not None:
        b = bias_array(bias, g.oc)
        arrays.append(b)
    return DenseKernel(func, tuple(arrays), (g.n, g.oc, g.oh, g.ow))
