"""The x86 schedule template of the pattern-sparse conv (AVX2 / AVX-512).

Knobs, and who owns them:

- structural, fixed when the kernel is generated (``tvm_pattern.kernels.pattern_conv2d``): ``rows`` (R, output rows
  per register block), ``cols`` (output columns per block, NV * V), ``threads`` (the parallel loop over
  output blocks; filters are split into groups balanced by kept kernels when blocks are few) and ``peel``
  (peel the last row / column block into its own shape variant instead of shifting it back);
- schedule decisions, recorded in the trace so MetaSchedule can sample and mutate them: the split of
  a block's columns into ``vectors`` x ``vector`` lanes (``sample_perfect_tile``; the lanes loop is
  vectorized, the vectors loop unrolled) and ``unroll`` (``sample_categorical`` over auto-unroll steps
  for the rows loop; unrolled rows keep the whole R x NV accumulator block in registers).

All of them are one ``CpuKnobs``.

Why these defaults: the accumulator block must fit the vector register file next to the broadcast weights
(16 ymm registers on AVX2, 32 zmm with AVX-512; ``targets.vector_registers`` reads the target's CPU
features); more spills and halves the speed. 8-lane vectors: as fast as 16-lane ones on AVX-512 CPUs that
double-pump 512-bit FMAs, and the only choice on AVX2. The block shape is picked by a small cost model
(register budget, recomputed edge overlap, per-kernel overhead) fitted on AVX2 measurements. Threads: the
target's ``num-cores`` (``targets.target_cores``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir

from tvm_pattern.kernels.pattern_conv2d import (
    CHUNKS_ATTR,
    POOL_ATTR,
    VARIANTS_ATTR,
    KernelSpec,
    NestShape,
    SparseConvKernel,
    check_layer,
    conv_out_shape,
    geometry,
    kernel_arrays,
    pooled_shape,
    unscheduled,
)
from tvm_pattern.targets import target_cores, vector_registers

from .base import Knobs
from .space import TuningTask, design_space, materialize_template, template_mod

NAME = "x86"
UNROLL = (0, 16, 64)  # auto-unroll steps for the rows loop (LLVM may unroll small loops anyway)


@dataclass(frozen=True)
class CpuKnobs(Knobs):
    """The knobs of the CPU template (x86 and Arm): the generated nest's structure and the schedule's decisions.

    ``rows`` x ``cols``: the output block of accumulators; ``vector``: lanes per vector (the split of ``cols``);
    ``unroll``: the rows loop's auto-unroll step; ``peel``: peel edge blocks; ``threads``: parallel chunks;
    ``max_groups``: size the filter split for that many groups (0: what this block needs); ``chunk``: input
    channels per chunk (0: all at once).
    """

    rows: int
    cols: int
    vector: int
    unroll: int = 64
    peel: bool = True
    threads: int = 1
    max_groups: int = 0
    chunk: int = 0

    def nest(self) -> NestShape:
        """The structure of the generated nest."""
        return NestShape(self.rows, self.cols, self.threads, self.peel, self.max_groups, self.chunk)

    def description(self) -> dict:
        """As recorded in a template description (``peel`` as 0/1, no ``max_groups``)."""
        return {"rows": self.rows, "cols": self.cols, "vector": self.vector, "unroll": self.unroll,
                "peel": int(self.peel), "threads": self.threads, "chunk": self.chunk}  # fmt: skip


def _acc_budget(regs: int, taps: int) -> int:
    """Accumulator vectors that fit next to the ``taps`` broadcast weights and the input vectors in flight.

    Measured on AVX2 (16 registers): 4-tap patterns run best with 10 accumulators (12 spill weights),
    the 9-tap dense pattern with 6.
    """
    return max(2, min(28, regs - taps - (2 if taps <= 4 else 1)))


def _cost(oh: int, ow: int, rows: int, vectors: int, lanes: int, taps: int) -> float:
    """Relative time per output of an R x (NV * V) block tiling, as the generator peels it.

    Per kept kernel a block pays a fixed cost (index, weight broadcasts, loop; ~24 FMA slots) plus
    ``taps`` FMAs per accumulator vector, and about half a row more for the two halo input rows. The last
    row block is peeled (shorter); the last column block too when a whole number of 4-lane vectors, else
    it is shifted back and recomputes overlapping outputs.
    """
    cols = vectors * lanes
    nrb, ncb = -(-oh // rows), -(-ow // cols)
    row_sizes = [rows] * (nrb - 1) + [oh - (nrb - 1) * rows]
    tail = ow - (ncb - 1) * cols
    col_sizes = [cols] * (ncb - 1) + [tail if tail % 4 == 0 else cols]
    total = sum(24 + taps * (c / lanes) * (r + 0.5) for r in row_sizes for c in col_sizes)
    if taps > 4:  # many live weights: a single column of vectors spills and reloads inputs
        total *= 1 + 0.5 / vectors
    return total / (oh * ow / lanes * taps)


def _block_shape(oh: int, ow: int, budget: int, lanes: int, taps: int) -> tuple[int, int]:
    """(rows, vectors) of least modelled cost (``_cost``) whose accumulators fit the register budget."""
    best, best_cost = (1, 1), float("inf")
    for rows in range(1, min(oh, 8) + 1):
        for vectors in range(1, min(-(-ow // lanes), 6) + 1):
            if rows * vectors > budget or vectors * lanes > ow:
                continue
            cost = _cost(oh, ow, rows, vectors, lanes, taps)
            if cost < best_cost - 1e-9:
                best, best_cost = (rows, vectors), cost
    return best


def block_config(out_shape, taps: int, registers: int, max_lanes: int, threads: int) -> CpuKnobs:
    """The R x NV block of least modelled cost whose accumulators fit ``registers`` vector registers."""
    oh, ow = out_shape[2], out_shape[3]
    lanes = max_lanes if ow >= max_lanes else 4 if ow >= 4 else 1
    rows, vectors = _block_shape(oh, ow, _acc_budget(registers, taps), lanes, taps)
    return CpuKnobs(rows=rows, cols=vectors * lanes, vector=lanes, unroll=64, peel=True, threads=threads)


def block_candidates(base: CpuKnobs, out_shape, taps: int, registers: int) -> list[CpuKnobs]:
    """Every (rows, vectors) block of ``base``'s lanes within the register budget."""
    oh, ow = out_shape[2], out_shape[3]
    budget, lanes = _acc_budget(registers, taps), base.vector
    return [
        base.with_overrides({"rows": r, "cols": v * lanes})
        for r in range(1, min(oh, 8) + 1)
        for v in range(1, min(-(-ow // lanes), 6) + 1)
        if r * v <= budget and v * lanes <= ow
    ]


SEGMENT_KERNELS = 8  # kept kernels a (filter, chunk, pattern) segment should hold on average


def default_chunk(packed) -> int:
    """Input channels per chunk (0: one chunk): as many chunks as keep ~``SEGMENT_KERNELS`` kernels per segment.

    Why: a chunk's input rows stay in L1 (measured 1.24x at 2.25x on 512 channels, AVX2), but every (filter,
    chunk, pattern) segment costs a loop exit whose trip count the branch predictor cannot know; at 8x on 512
    channels, 64-channel chunks (2 kernels per segment) were 1.2x slower than none.
    """
    c = packed.in_channels
    per_channel = packed.nnz / max(1, packed.out_channels * c * packed.k)  # kernels per (filter, channel, pattern)
    chunks = int(c * per_channel // SEGMENT_KERNELS)
    return 0 if chunks <= 1 else -(-c // chunks)


def default_config(packed, data_shape, out_shape, target=None) -> CpuKnobs:
    """Good knobs for one layer: the R x NV block that fits the registers and wastes least, 8-lane vectors,
    input channels in chunks (``default_chunk``)."""
    cfg = block_config(out_shape, packed.n, vector_registers(target), 8, target_cores(target))
    return cfg.with_overrides({"chunk": default_chunk(packed)})


def candidate_configs(packed, data_shape, out_shape, target=None) -> list[CpuKnobs]:
    """The register blocks a tuner picks from for one layer (the ``block`` knob of ``tuning_task``)."""
    base = default_config(packed, data_shape, out_shape, target)
    return block_candidates(base, out_shape, packed.n, vector_registers(target))


def _pooled(sch: s_tir.Schedule) -> bool:
    return int(sch.mod["main"].attrs.get(POOL_ATTR, 0)) == 1


POOL_MIN_BYTES = 1 << 20  # conv outputs at least this large fuse their max-pool even at the cost of an even block


def _block_cost(cfg: CpuKnobs, out_shape, taps: int) -> float:
    return _cost(out_shape[2], out_shape[3], cfg.rows, cfg.cols // cfg.vector, cfg.vector, taps)


def even_block(candidates: list[CpuKnobs], out_shape, taps: int) -> CpuKnobs | None:
    """The candidate block of least modelled cost with an even height (a fused max-pool's), None if there is none."""
    even = [c for c in candidates if c.rows % 2 == 0 and c.cols % 2 == 0]
    return min(even, key=lambda c: _block_cost(c, out_shape, taps)) if even else None


def fuses_pool(packed, data_shape, out_shape, target=None, family=None) -> bool:
    """Whether the kernel should store the 2x2 max-pool of its output instead of leaving it to a pool op.

    What a fused pool saves is traffic: the full-size map is neither stored nor read back, only its quarter
    stored. Its cost: the block must have an even height, and the best block may be odd. Measured on AVX2,
    VGG-16 at 8x, fused vs conv + pool op, interleaved: 64@224 1.44x, 128@112 1.15x, 256@56 1.03x (even
    block anyway), 512@28 1.07x (5 -> 4 rows), 512@14 0.94x (7 -> 8 rows; a 0.4 MB map). So: fuse when the
    best block is even already, or when the output (``POOL_MIN_BYTES``) is too big for the L2 to hide the pool.
    """
    family = family or _this()
    if out_shape[2] % 2 or out_shape[3] % 2:
        return False
    base = family.default_config(packed, data_shape, out_shape, target)
    if base.rows % 2 == 0 and base.cols % 2 == 0:
        return True
    even = even_block(family.candidate_configs(packed, data_shape, out_shape, target), out_shape, packed.n)
    return even is not None and 4 * int(np.prod(out_shape)) >= POOL_MIN_BYTES


def _variant_blocks(sch: s_tir.Schedule, k: int, v: int) -> list:
    """The sblocks of block-shape variant ``v`` that span the whole block: init, one per pattern, [keep], [store]
    (a pooled store spans half the block: ``_schedule_pool``)."""
    keep = [sch.get_sblock(f"keep_v{v}")] if int(sch.mod["main"].attrs.get(CHUNKS_ATTR, 1)) > 1 else []
    store = [] if _pooled(sch) else [sch.get_sblock(f"store_v{v}")]
    return [sch.get_sblock(f"acc_init_v{v}"), *[sch.get_sblock(f"acc_p{p}_v{v}") for p in range(k)],
            *keep, *store]


def _schedule_pool(sch: s_tir.Schedule, v: int, vector: int) -> None:
    """The pooled store of variant ``v``: its columns in vectors of up to ``vector`` lanes, everything unrolled,
    so the accumulators it reads stay registers (not a schedule decision: it runs once per filter and block)."""
    block = sch.get_sblock(f"pool_v{v}")
    r, j = sch.get_loops(block)[-2:]
    lanes = _lanes(int(sch.get(j).extent), vector)
    outer, inner = sch.split(j, [None, lanes])
    sch.vectorize(inner)
    sch.unroll(outer)
    sch.unroll(r)


def _variant_count(sch: s_tir.Schedule) -> int:
    """Set by the generator as a function attribute (probing block names with ``get_sblock`` would put
    failing instructions into the trace that MetaSchedule replays)."""
    return int(sch.mod["main"].attrs[VARIANTS_ATTR])


def _lanes(cols: int, vector: int) -> int:
    """The largest power-of-two lane count <= ``vector`` dividing ``cols`` (a perfect split)."""
    v = 1
    while v * 2 <= min(vector, cols) and cols % (v * 2) == 0:
        v *= 2
    return v


def schedule(sch: s_tir.Schedule, k: int, decisions: CpuKnobs | Mapping | None = None) -> None:
    """Apply the template; ``decisions`` fixes ``vector`` and ``unroll``, else they are sampled.

    Every knob is an instruction of the trace (a sampled value used as a split factor or annotation),
    so MetaSchedule's replay and mutators change the program without re-running this function. Each
    block-shape variant (full blocks, peeled last row / column block) gets its own vector split.
    """
    unroll_decision = None
    if decisions is not None:
        unroll_decision = UNROLL.index(int(decisions.get("unroll", UNROLL[-1])))
    unroll = sch.sample_categorical(list(UNROLL), [1 / len(UNROLL)] * len(UNROLL), decision=unroll_decision)
    for variant in range(_variant_count(sch)):
        blocks = _variant_blocks(sch, k, variant)
        j = sch.get_loops(blocks[0])[-1]
        cols = int(sch.get(j).extent)
        tile_decision = None
        if decisions is not None:
            v = _lanes(cols, int(decisions.get("vector", 8)))
            tile_decision = [cols // v, v]
        factors = sch.sample_perfect_tile(j, n=2, max_innermost_factor=16, decision=tile_decision)
        for block in blocks:
            r, j = sch.get_loops(block)[-2:]
            nv, v = sch.split(j, factors)
            sch.vectorize(v)
            sch.unroll(nv)  # vectors of a row: always unrolled, or the accumulators cannot live in registers
            sch.annotate(r, "pragma_auto_unroll_max_step", unroll)  # rows: unrolled when R x NV <= the step
            sch.annotate(r, "pragma_unroll_explicit", 1)
        if _pooled(sch):
            _schedule_pool(sch, variant, tile_decision[1] if tile_decision else 8)


def apply_default(func: tvm.tirx.PrimFunc, cfg: CpuKnobs, k: int) -> tvm.tirx.PrimFunc:
    """The generated function with the default (or ``cfg``'s) schedule decisions applied."""
    sch = s_tir.Schedule(func)
    schedule(sch, k, cfg)
    return sch.mod["main"]


def knob_choices(packed, data_shape, out_shape, target, candidates: list[CpuKnobs]) -> dict[str, list[int]]:
    """What the tuner may pick per knob: a register block (an index into ``candidates``), lanes per
    vector, parallel chunks per core count, the rows' unroll step, and whether to peel edge blocks."""
    cores = target_cores(target)
    return {
        "block": list(range(len(candidates))),
        "lanes": [4, 8],
        "threads": [cores, 2 * cores],
        "unroll": list(UNROLL),
        "peel": [1, 0],
    }


def _untuned_knobs(base: CpuKnobs, candidates: list[CpuKnobs]) -> dict[str, int]:
    """The knob values that select the untuned kernel (``base``, the default config)."""
    knobs = {"lanes": base.vector, "threads": base.threads, "unroll": base.unroll, "peel": int(base.peel)}
    shapes = [(c.rows, c.cols) for c in candidates]
    if (base.rows, base.cols) in shapes:
        knobs["block"] = shapes.index((base.rows, base.cols))
    return knobs


def generate(packed, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), bias: bool = False, relu: bool = False,
             target=None, config: Mapping | None = None, family=None, pool: bool = False) -> SparseConvKernel:
    """The scheduled CPU kernel of one layer: ``family``'s (default: this module's) knobs, ``config`` applied.

    ``pool``: the kernel stores the 2x2 / stride-2 max-pool of its output; unless ``config`` sets ``rows``, the
    block is the cheapest even-height one (``even_block``).
    """
    family = family or _this()
    data_shape, strides, padding = check_layer(packed, data_shape, strides, padding)
    out_shape = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    cfg = family.default_config(packed, data_shape, out_shape, target).with_overrides(config)
    if pool and cfg.rows % 2 and "rows" not in (config or {}):
        even = even_block(family.candidate_configs(packed, data_shape, out_shape, target), out_shape, packed.n)
        cfg = cfg if even is None else cfg.with_overrides({"rows": even.rows, "cols": even.cols})
    func = unscheduled(packed, data_shape, strides, padding, bias, relu, cfg.nest(), pool)
    func = apply_default(func, cfg, packed.k)
    groups = geometry(packed, data_shape, strides, padding, cfg.nest()).groups(cfg.threads)
    arrays = kernel_arrays(packed, max(groups, cfg.max_groups or 1), cfg.chunk)
    return SparseConvKernel(func=func, arrays=arrays, out_shape=pooled_shape(out_shape) if pool else out_shape)


def _this():
    """This module, as the family whose knobs ``generate`` / ``tuning_task`` use by default."""
    return sys.modules[__name__]


def tuning_task(packed, data_shape, strides, padding, bias, relu: bool, target, family=None) -> TuningTask:
    """The layer as a ``TuningTask``: the default kernel as template, every knob a MetaSchedule sample.

    ``bias``: the bias values (O,), or a bool. ``family``: the module whose ``candidate_configs`` /
    ``default_config`` define the choices (default this one; the Arm template reuses this template).
    """
    family = family or _this()
    data_shape, strides, padding = check_layer(packed, data_shape, strides, padding)
    out_shape = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    base = family.default_config(packed, data_shape, out_shape, target)
    candidates = family.candidate_configs(packed, data_shape, out_shape, target)
    choices = knob_choices(packed, data_shape, out_shape, target, candidates)
    max_groups = max(geometry(packed, data_shape, strides, padding, c.nest().with_threads(t)).groups(t)
                     for c in candidates for t in choices["threads"])
    description = {
        "family": family.NAME, "kernel": KernelSpec.of(packed).to_json(), "data_shape": list(data_shape),
        "strides": list(strides), "padding": list(padding), "bias": bias is not False and bias is not None,
        "relu": bool(relu), "blocks": [[c.rows, c.cols] for c in candidates], "max_groups": max_groups,
        "default": base.description(), "knobs": _untuned_knobs(base, candidates),
    }
    base = base.with_overrides({"max_groups": max_groups})
    func = unscheduled(packed, data_shape, strides, padding, description["bias"], relu, base.nest())
    arrays = kernel_arrays(packed, max_groups, base.chunk)
    if description["bias"]:
        values = np.zeros(packed.out_channels, np.float32) if isinstance(bias, bool) else bias
        arrays = (*arrays, np.ascontiguousarray(values, dtype=np.float32))
    shape = "x".join(map(str, data_shape))
    name = (f"pattern_conv2d_{family.NAME}_{shape}_o{packed.out_channels}_s{strides[0]}{strides[1]}"
            f"_k{packed.k}n{packed.n}_nnz{packed.nnz}")
    space = design_space(choices, description["knobs"])
    return TuningTask(name, template_mod(func, description), space, arrays,
                      lambda mod: materialize_template(mod, materialize))


def materialize(description: dict, knobs: dict[str, int]) -> tvm.tirx.PrimFunc:
    """The kernel of a template (``tuning_task``) for sampled ``knobs`` (missing ones: the defaults)."""
    spec = KernelSpec.from_json(description["kernel"])
    default = description["default"]
    rows, cols = description["blocks"][knobs["block"]] if "block" in knobs else (default["rows"], default["cols"])
    cfg = CpuKnobs(
        rows=rows, cols=cols, vector=knobs.get("lanes", default["vector"]),
        threads=knobs.get("threads", default["threads"]), unroll=knobs.get("unroll", default["unroll"]),
        peel=bool(knobs.get("peel", default["peel"])), max_groups=description["max_groups"],
        chunk=int(default.get("chunk", 0)),
    )
    func = unscheduled(spec, description["data_shape"], description["strides"], description["padding"],
                       description["bias"], description["relu"], cfg.nest())
    return apply_default(func, cfg, spec.k)
