"""The Mali GPU (OpenCL) template of the pattern-sparse conv: PatDNN's GPU loop nest, generated per layer.

One PrimFunc, two kernels:

1. ``pad``: one thread per element copies the input into a zero-bordered buffer ``xp`` of shape
   (N, C, rows, phases, columns), its columns de-interleaved by the stride (input column ``q * sw + ph``
   is ``xp[.., ph, q]``), sized so that every output block, including the ragged last ones, reads inside it.
   Why: every tap of every thread then reads contiguous float4 vectors with no bounds checks, at any
   stride and any padding; the cost is one extra pass over the input (the CPU template packs per block).
2. ``conv``: one thread per (filter in FKR order, output row block, output column group)::

     oc = perm[o]                                       # FKR order undone in the store
     acc[R x NV] = bias[oc]                             # float4 accumulators, private (registers)
     for pattern p (unrolled in the generator):         # p's tap offsets are literals in the body
       for kept kernel e of (o, p) (FKW CSR), by U:     # partly unrolled by the ``unroll`` knob
         ic = channels[e]; w_t = broadcast(weights[e, t])
         x = vload4(xp[b, ic, row, phase, q])           # each distinct input vector loaded once, reused by
         acc[r, v] += sum_t w_t * x(r, v, t)            # every tap and output row that needs it
     out[b, oc, rows, cols] = relu(acc)                 # vstore4; lanes past the right edge masked

Vector loads and stores are written as ``vload4`` / ``vstore4`` calls (TVM's OpenCL codegen turns
data-dependent vector accesses into gathers otherwise); OpenCL only needs them 4-byte aligned.

Knobs (one ``MaliKnobs``, ``default_config``; all sampled when tuning, see ``tuning_task``):

- structural, fixed when the kernel is generated: ``rows`` (R, output rows per thread), ``vectors``
  (NV, float4 column vectors per thread), ``unroll`` (U, kept kernels per iteration of the kernel loop);
- schedule decisions (``schedule``: split + bind of the generated loops): ``wg_filters`` and ``wg_space``,
  the work-group's threads along filters (``threadIdx.y``) and along output blocks (``threadIdx.x``).

Why these defaults: Bifrost/Valhall Malis have 64 32-bit registers per thread at full occupancy, so the
accumulator block stays at R x NV <= 8 float4 (32 registers) next to the loaded input vectors; work-groups
of 64 threads (4 filters x 16 blocks) keep a core busy without starving small layers. None of this could be
measured here (no Mali): PoCL on the CPU only checks that the generated OpenCL is right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir
from tvm.target import Target

from tvm_pattern.devices.opencl import OpenCLProgram
from tvm_pattern.errors import PatternError
from tvm_pattern.kernels.pattern_conv2d import (
    KernelSpec,
    SparseConvKernel,
    check_layer,
    conv_out_shape,
    fkw_arrays,
    fkw_params,
)
from tvm_pattern.kernels.tvmscript import Script

from .base import Knobs
from .space import TuningTask, design_space, materialize_template, template_mod

__all__ = ["GPU_LIMITS", "NAME", "ROWS", "THREADS_FILTERS", "THREADS_SPACE", "UNROLL", "VECTORS", "MaliKnobs",
           "default_config", "generate", "gpu_limits", "knob_choices", "local_target", "materialize", "schedule",
           "tuning_task", "unscheduled", "verify_gpu"]  # fmt: skip

NAME = "mali"

ROWS = (1, 2, 4)  # R: output rows per thread
VECTORS = (1, 2, 4)  # NV: float4 column vectors per thread (R x NV <= 16 accumulators)
UNROLL = (1, 2, 4)  # U: kept kernels per iteration of a pattern's kernel loop
THREADS_FILTERS = (1, 2, 4, 8)  # work-group threads along filters (threadIdx.y)
THREADS_SPACE = (1, 2, 4, 8, 16, 32)  # work-group threads along output blocks (threadIdx.x); 8 x 32 = 256 at most
PAD_THREADS = 64  # work-group size of the padding kernel
LANES = 4  # float4
# Limits for verify_gpu (MetaSchedule's VerifyGPUCode reads them from the target): TVM's mali target.
GPU_LIMITS = {"max_threads_per_block": 256, "max_shared_memory_per_block": 16384}


@dataclass(frozen=True)
class MaliKnobs(Knobs):
    """The knobs of the Mali template: ``rows`` x ``vectors`` float4 accumulators per thread, ``unroll`` kept
    kernels per iteration, work-groups of ``wg_filters`` x ``wg_space`` threads."""

    rows: int
    vectors: int
    unroll: int = 1
    wg_filters: int = 4
    wg_space: int = 16


def local_target() -> Target:
    """A Mali target whose host is this machine: builds here, and its OpenCL runs on PoCL (``tvm_pattern.opencl``)."""
    return Target({"kind": "opencl", "device": "mali"}, host="llvm")


def _pow2_at_most(n: int, choices: tuple[int, ...]) -> list[int]:
    """The choices up to the first one covering ``n`` (more would only add idle threads / rows)."""
    kept = []
    for c in choices:
        kept.append(c)
        if c >= n:
            break
    return kept


@dataclass(frozen=True)
class _Layout:
    """Sizes of one generated layer: input, output, per-thread blocks and the padded input ``xp``."""

    n: int
    c: int
    h: int
    w: int
    o: int
    top: int
    left: int
    sh: int
    sw: int
    oh: int
    ow: int
    rows: int
    vectors: int

    @property
    def cols(self) -> int:
        return LANES * self.vectors

    @property
    def nrb(self) -> int:
        return -(-self.oh // self.rows)

    @property
    def ncb(self) -> int:
        return -(-self.ow // self.cols)

    @property
    def blocks(self) -> int:
        """Output blocks (threads per filter): batch x row blocks x column groups."""
        return self.n * self.nrb * self.ncb

    @property
    def phases(self) -> int:
        """Column phases of ``xp``: a 3-wide kernel at stride s reads min(s, 3) of them."""
        return min(self.sw, 3)

    @property
    def hp(self) -> int:
        return (self.nrb * self.rows - 1) * self.sh + 3

    @property
    def wq(self) -> int:
        return self.ncb * self.cols + 2 // self.sw

    @property
    def plane(self) -> int:
        """Elements of ``xp`` per (batch, channel)."""
        return self.hp * self.phases * self.wq

    @property
    def size(self) -> int:
        return self.n * self.c * self.plane

    def last_rows(self) -> int:
        """Output rows in the last row block (rows past it are computed on zeros and not stored)."""
        return self.oh - (self.nrb - 1) * self.rows

    def last_cols(self) -> int:
        return self.ow - (self.ncb - 1) * self.cols


def _layout(spec, data_shape, strides, padding, cfg: MaliKnobs) -> _Layout:
    n, c, h, w = data_shape
    _, o, oh, ow = conv_out_shape(data_shape, spec.out_channels, strides, padding)
    rows = max(1, min(cfg.rows, oh))
    vectors = max(1, min(cfg.vectors, -(-ow // LANES)))
    return _Layout(n, c, h, w, o, padding[0], padding[1], strides[0], strides[1], oh, ow, rows, vectors)


def default_config(packed, data_shape, out_shape, target=None) -> MaliKnobs:
    """Knobs for one layer: up to 4 rows x 2 float4 per thread, 4 x 16 threads per work-group, no unroll."""
    oh, ow = out_shape[2], out_shape[3]
    rows = _pow2_at_most(oh, ROWS)[-1]
    vectors = _pow2_at_most(-(-ow // LANES), VECTORS[:2])[-1]
    blocks = out_shape[0] * -(-oh // rows) * -(-ow // (LANES * vectors))
    return MaliKnobs(
        rows=rows,
        vectors=vectors,
        unroll=1,
        wg_filters=_pow2_at_most(out_shape[1], THREADS_FILTERS[:3])[-1],
        wg_space=_pow2_at_most(blocks, THREADS_SPACE[:5])[-1],
    )


def knob_choices(packed, data_shape, out_shape, target=None) -> dict[str, list[int]]:
    """What the tuner may pick per knob for one layer; every combination is a valid kernel (<= 256 threads)."""
    oh, ow = out_shape[2], out_shape[3]
    return {
        "rows": _pow2_at_most(oh, ROWS),
        "vectors": _pow2_at_most(-(-ow // LANES), VECTORS),
        "unroll": list(UNROLL),
        "wg_filters": _pow2_at_most(out_shape[1], THREADS_FILTERS),
        "wg_space": list(THREADS_SPACE),
    }


# ---------------------------------------------------------------- code generation (TVMScript text)


def _pad_source(script: Script, g: _Layout) -> None:
    """Kernel 1: ``xp`` from ``data``, zeros outside the input."""
    with script.block(f"for i in T.serial({g.size}):"), script.block("with T.sblock('pad'):"):
        script.line(
            f"vi = T.axis.spatial({g.size}, i)",
            f"T.reads(data[0:{g.n}, 0:{g.c}, 0:{g.h}, 0:{g.w}])",
            "T.writes(xp[vi])",
            f"bc: T.let = vi // {g.plane}",
            f"y: T.let = vi // {g.phases * g.wq} % {g.hp} - {g.top}",
            f"x: T.let = vi % {g.wq} * {g.sw} + vi // {g.wq} % {g.phases} - {g.left}",
            f"inside: T.let = 0 <= y and y < {g.h} and 0 <= x and x < {g.w}",
            f"xp[vi] = T.if_then_else(inside, data[bc // {g.c}, bc % {g.c}, y, x], T.float32(0))",
        )


def _kernel_body(script: Script, spec, g: _Layout, taps: list[tuple[int, int]], tag: str, e: str) -> None:
    """One kept kernel ``e`` on the thread's R x NV block: loads once, then the FMAs."""
    script.line(
        f"ic_{tag}: T.let = channels[{e}]",
        f"src_{tag}: T.let = (b * {g.c} + ic_{tag}) * {g.plane} + rb * {g.rows * g.sh * g.phases * g.wq}"
        f" + cb * {g.cols}",
    )
    for t in range(len(taps)):  # each weight read once, broadcast once
        script.line(f"s_{tag}_{t}: T.let = weights[({e}) * {spec.n} + {t}]",
                    f"w_{tag}_{t}: T.let = T.Broadcast(s_{tag}_{t}, {LANES})")
    loads: dict[tuple[int, int, int], str] = {}
    updates = []
    for r in range(g.rows):
        for v in range(g.vectors):
            terms = []
            for t, (dr, dc) in enumerate(taps):
                key = (r * g.sh + dr, dc % g.sw, LANES * v + dc // g.sw)
                if key not in loads:
                    loads[key] = f"x_{tag}_{len(loads)}"
                terms.append(f"w_{tag}_{t} * {loads[key]}")
            i = r * g.vectors + v
            updates.append(f"acc[{i}] = acc[{i}] + " + " + ".join(terms))
    for (row, ph, q), name in loads.items():
        offset = (row * g.phases + ph) * g.wq + q
        script.line(f"{name}: T.let = T.call_pure_extern('float32x4', 'vload4', 0,"
                    f" T.address_of(xp[src_{tag} + {offset}]))")
    script.lines(updates)


def _pattern_source(script: Script, spec, g: _Layout, p: int, taps: list[tuple[int, int]], unroll: int) -> None:
    """The loop over filter o's kept kernels of pattern p, ``unroll`` per iteration, then the remainder."""
    k = spec.k
    script.line(f"base_{p}: T.let = offsets[vo * {k} + {p}]",
                f"count_{p}: T.let = offsets[vo * {k} + {p + 1}] - base_{p}")
    if unroll == 1:
        with script.block(f"for kk_{p} in T.serial(count_{p}):"):
            _kernel_body(script, spec, g, taps, f"{p}", f"base_{p} + kk_{p}")
        return
    with script.block(f"for kk_{p} in T.serial(count_{p} // {unroll}):"):
        for u in range(unroll):
            _kernel_body(script, spec, g, taps, f"{p}_{u}", f"base_{p} + kk_{p} * {unroll} + {u}")
    with script.block(f"for kr_{p} in T.serial(count_{p} % {unroll}):"):
        _kernel_body(script, spec, g, taps, f"{p}_r", f"base_{p} + count_{p} // {unroll} * {unroll} + kr_{p}")


def _store_row(script: Script, g: _Layout, relu: bool, r: int) -> None:
    """float4 stores of output row ``r`` of the block; lanes right of the output (last blocks only) are not stored."""
    last_cb, rem = g.ncb - 1, g.last_cols()
    for v in range(g.vectors):
        i = r * g.vectors + v
        value = f"T.max(acc[{i}], T.Broadcast(T.float32(0), {LANES}))" if relu else f"acc[{i}]"
        y = f"y_{r}_{v}"
        store = (f"T.call_extern('void', 'vstore4', {y}, 0,"
                 f" T.address_of(out[b, oc, rb * {g.rows} + {r}, cb * {g.cols} + {LANES * v}]))")
        script.line(f"{y}: T.let = {value}")
        lanes = min(max(rem - LANES * v, 0), LANES)  # lanes inside the output in the last column group
        if lanes == LANES:
            script.line(store)
            continue
        with script.block(f"if cb < {last_cb}:"):
            script.line(store)
        if lanes:
            with script.block("else:"):
                script.lines(f"out[b, oc, rb * {g.rows} + {r}, cb * {g.cols} + {LANES * v + lane}]"
                             f" = T.Shuffle([{y}], [{lane}])" for lane in range(lanes))


def _store_source(script: Script, g: _Layout, relu: bool) -> None:
    """The block's rows; rows below the output (last row block only) are not stored."""
    for r in range(g.rows):
        if r >= g.last_rows():
            with script.block(f"if rb * {g.rows} + {r} < {g.oh}:"):
                _store_row(script, g, relu, r)
        else:
            _store_row(script, g, relu, r)


def _conv_source(script: Script, spec, g: _Layout, bias: bool, relu: bool, unroll: int) -> None:
    """Kernel 2: one (filter, output block) per thread; loops ``o`` and ``s`` are split and bound by ``schedule``."""
    reads = [f"xp[0:{g.size}]", f"offsets[0:{spec.out_channels * spec.k + 1}]", f"channels[0:{max(spec.nnz, 1)}]",
             f"weights[0:{max(spec.nnz, 1) * spec.n}]", f"perm[0:{spec.out_channels}]"]
    reads += [f"bias[0:{spec.out_channels}]"] if bias else []
    init = f"T.Broadcast(bias[oc], {LANES})" if bias else f"T.Broadcast(T.float32(0), {LANES})"
    writes = f"out[0:{g.n}, 0:{g.o}, 0:{g.oh}, 0:{g.ow}]"
    with script.sblock("conv", "o, s", (spec.out_channels, g.blocks), "SS", ", ".join(reads), writes):
        script.line(
            f"acc = T.alloc_buffer(({g.rows * g.vectors},), 'float32x4', scope='local')",
            "oc: T.let = perm[vo]",
            f"b: T.let = vs // {g.nrb * g.ncb}",
            f"rb: T.let = vs // {g.ncb} % {g.nrb}",
            f"cb: T.let = vs % {g.ncb}",
        )
        script.lines(f"acc[{i}] = {init}" for i in range(g.rows * g.vectors))
        for p, taps in enumerate(spec.taps()):
            _pattern_source(script, spec, g, p, taps, unroll)
        _store_source(script, g, relu)


def _source(spec, data_shape, strides, padding, bias: bool, relu: bool, cfg: MaliKnobs) -> Script:
    g = _layout(spec, data_shape, strides, padding, cfg)
    script = Script()
    with script.prim_func("sparse_conv2d", fkw_params(spec, data_shape, (g.n, g.o, g.oh, g.ow), bias),
                          {"tirx.noalias": True}):
        script.line(f"xp = T.alloc_buffer(({g.size},), 'float32')")
        _pad_source(script, g)
        _conv_source(script, spec, g, bias, relu, cfg.unroll)
    return script


def unscheduled(spec, data_shape, strides, padding, bias: bool, relu: bool,
                cfg: MaliKnobs | Mapping) -> tvm.tirx.PrimFunc:
    """The generated PrimFunc before ``schedule`` (loops not yet bound to threads).

    ``spec``: a ``PackedConv`` or a ``kernels.pattern_conv2d.KernelSpec`` (shapes and patterns, no weights).
    """
    cfg = MaliKnobs.of(cfg)
    if cfg.unroll not in UNROLL:
        raise PatternError(f"unroll must be one of {UNROLL}, got {cfg.unroll}")
    size = _layout(spec, data_shape, strides, padding, cfg).size
    if size >= 2**31:
        raise PatternError(f"the padded input has {size} elements, more than int32 indexing in the kernel allows")
    return _source(spec, data_shape, strides, padding, bool(bias), relu, cfg).parse()


# ---------------------------------------------------------------- schedule: the work-group layout


def schedule(sch: s_tir.Schedule, wg_filters, wg_space) -> None:
    """Bind the generated loops to threads; the two sizes may be ints or sampled ``ExprRV``s.

    conv: blocks along output blocks (``blockIdx.x``) and filters (``blockIdx.y``), ``wg_space`` x
    ``wg_filters`` threads per group; neighbouring threads take neighbouring column groups, so their
    vector loads share cache lines. pad: ``PAD_THREADS`` consecutive elements per group.
    """
    (i,) = sch.get_loops(sch.get_sblock("pad"))
    bx, tx = sch.split(i, [None, PAD_THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    o, s = sch.get_loops(sch.get_sblock("conv"))
    bo, to = sch.split(o, [None, wg_filters])
    bs, ts = sch.split(s, [None, wg_space])
    sch.reorder(bo, bs, to, ts)
    sch.bind(bs, "blockIdx.x")
    sch.bind(bo, "blockIdx.y")
    sch.bind(ts, "threadIdx.x")
    sch.bind(to, "threadIdx.y")


def _kernel_func(spec, data_shape, strides, padding, bias: bool, relu: bool, cfg: MaliKnobs) -> tvm.tirx.PrimFunc:
    """Generated and scheduled: the kernel of knobs ``cfg``."""
    threads, limit = cfg.wg_filters * cfg.wg_space, GPU_LIMITS["max_threads_per_block"]
    if threads > limit:
        raise PatternError(f"work-group of {cfg.wg_filters} x {cfg.wg_space} threads exceeds {limit}")
    sch = s_tir.Schedule(unscheduled(spec, data_shape, strides, padding, bias, relu, cfg))
    schedule(sch, cfg.wg_filters, cfg.wg_space)
    # marked scheduled: the Relax GPU pipeline's dlight pass (ApplyDefaultSchedule) skips it
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def generate(packed, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), bias: bool = False, relu: bool = False,
             target=None, config: Mapping | None = None) -> SparseConvKernel:
    """The scheduled Mali kernel of one layer (what ``schedules.sparse_conv2d`` gives for OpenCL targets).

    ``func(data, offsets, channels, weights, perm, [bias (O,)], out)``; ``arrays`` are the four FKW arrays.
    ``config`` overrides ``default_config``'s knobs.
    """
    data_shape, strides, padding = check_layer(packed, data_shape, strides, padding)
    out_shape = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    cfg = default_config(packed, data_shape, out_shape, target).with_overrides(config)
    func = _kernel_func(packed, data_shape, strides, padding, bool(bias), relu, cfg)
    return SparseConvKernel(func=func, arrays=fkw_arrays(packed), out_shape=out_shape)


# ---------------------------------------------------------------- tuning (materialized templates, see space.py)


def tuning_task(packed, data_shape, strides, padding, bias, relu: bool, target) -> TuningTask:
    """The layer as a ``TuningTask``: the default kernel as template, every knob a ``sample_categorical``.

    The sampled values are recorded on the template's root block; ``materialize`` generates and schedules
    the kernel they select (``space.materialize_template``). ``bias``: the bias values (O,) or a bool.
    """
    data_shape, strides, padding = check_layer(packed, data_shape, strides, padding)
    out_shape = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    base = default_config(packed, data_shape, out_shape, target)
    has_bias = bias is not None and bias is not False
    choices = knob_choices(packed, data_shape, out_shape, target)
    untuned = {name: int(base[name]) for name, values in choices.items() if int(base[name]) in values}
    description = {
        "family": NAME, "kernel": KernelSpec.of(packed).to_json(), "data_shape": list(data_shape),
        "strides": list(strides), "padding": list(padding), "bias": has_bias, "relu": bool(relu),
        "default": dict(base), "knobs": untuned,
    }
    func = _kernel_func(packed, data_shape, strides, padding, has_bias, relu, base)
    arrays = fkw_arrays(packed)
    if has_bias:
        values = np.zeros(packed.out_channels, np.float32) if isinstance(bias, bool) else bias
        arrays = (*arrays, np.ascontiguousarray(values, dtype=np.float32).reshape(packed.out_channels))
    shape = "x".join(map(str, data_shape))
    name = (f"pattern_conv2d_mali_{shape}_o{packed.out_channels}_s{strides[0]}{strides[1]}"
            f"_k{packed.k}n{packed.n}_nnz{packed.nnz}")
    return TuningTask(name, template_mod(func, description), design_space(choices, untuned), arrays,
                      lambda mod: materialize_template(mod, materialize))


def materialize(description: dict, knobs: dict[str, int]) -> tvm.tirx.PrimFunc:
    """The scheduled kernel of a template (``tuning_task``) for sampled ``knobs`` (missing ones: the defaults)."""
    spec = KernelSpec.from_json(description["kernel"])
    cfg = MaliKnobs.of(description["default"]).with_overrides(knobs)
    return _kernel_func(spec, tuple(description["data_shape"]), tuple(description["strides"]),
                        tuple(description["padding"]), description["bias"], description["relu"], cfg)


def gpu_limits(target: Target | None = None) -> dict[str, int]:
    """What ``verify_gpu`` checks, from the target's attributes (TVM's ``mali``: 256 threads, 16 KiB shared),
    as MetaSchedule's ``VerifyGPUCode`` postproc does; every work-group dimension within the thread limit."""
    target = target or local_target()
    threads = int(target.attrs.get("max_threads_per_block", GPU_LIMITS["max_threads_per_block"]))
    shared = int(target.attrs.get("max_shared_memory_per_block", GPU_LIMITS["max_shared_memory_per_block"]))
    return {"max_threads_per_block": threads, "max_shared_memory_per_block": shared, "max_thread_x": threads,
            "max_thread_y": threads, "max_thread_z": threads, "max_vthread": 8, "max_vector_bytes": 16}


def verify_gpu(func: tvm.tirx.PrimFunc, target: Target | None = None) -> bool:
    """TVM's ``verify_gpu_code`` on ``func`` lowered for the Mali ``target`` (see ``gpu_limits``).

    Why not the ``VerifyGPUCode`` postproc itself: a ``TuneContext`` imports every tensor intrinsic
    (minutes); the check is the same function on the same lowered code.
    """
    target = target or local_target()
    return OpenCLProgram(func, target).verify(gpu_limits(target))
