"""Tuning tasks of the ops no template covers: the PrimFuncs TVM's legalization leaves after the project's passes
(pooling, adds and other elementwise ops not absorbed by a kernel, reductions, ...), searched in MetaSchedule's
default CPU design space; ``pipeline.build(database=...)`` applies the records with ``MetaScheduleApplyDatabase``.

The workloads are MetaSchedule's own (``relax_integration.extract_tasks`` on the module after
``legalize``, the same phases as the CPU pipeline's up to fusion), so ``MetaScheduleApplyDatabase`` at the same
point of ``build`` finds them. Skipped: the project's kernels (``op_pattern`` OPAQUE: they have their own
templates), reshapes (the pipeline turns them into views, ``RewriteDataflowReshape``), functions already
scheduled, and tiny ones (``MIN_WORK``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm
from tvm import relax, s_tir
from tvm.ir import IRModule
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..passes import OPAQUE
from ..schedules.space import TuningTask
from ..targets import target_cores

log = logging.getLogger(__name__)

__all__ = ["MIN_WORK", "OpTask", "default_space", "legalize", "op_tasks", "untuned_schedule", "work"]

MIN_WORK = 1024  # loop iterations of a function's largest loop nest below which it is not tuned


@dataclass(frozen=True)
class OpTask(TuningTask):
    """A leftover op's ``TuningTask`` in MetaSchedule's default space; ``weight``: how many calls share it.
    Runners fill its arguments with random data (``arrays`` is empty)."""

    weight: int = 1
    cores: int = 1  # the target's: the untuned schedule (``untuned_schedule``) spreads loops over them


def legalize(mod: IRModule, target: Target) -> IRModule:
    """The CPU pipeline's phases up to fusion (library dispatch, legalization, FuseOps / FuseTIR): where
    ``build`` applies a database to the leftover ops."""
    with target:
        return tvm.transform.Sequential(cpu_generic.library_dispatch_passes(target)
                                        + cpu_generic.legalize_passes(target))(mod)  # fmt: skip


def work(stmt: tvm.tirx.Stmt, outer: int = 1) -> int:
    """Iterations of the largest loop nest in ``stmt`` (loops of non-constant extent count once)."""
    if isinstance(stmt, tvm.tirx.For):
        extent = stmt.extent
        return work(stmt.body, outer * (int(extent) if isinstance(extent, tvm.tirx.IntImm) else 1))
    if isinstance(stmt, tvm.tirx.SeqStmt):
        return max((work(s, outer) for s in stmt.seq), default=outer)
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        return work(stmt.block, outer)
    if isinstance(stmt, tvm.tirx.IfThenElse):
        return max(work(stmt.then_case, outer), work(stmt.else_case, outer) if stmt.else_case else outer)
    body = getattr(stmt, "body", None)
    return work(body, outer) if isinstance(body, tvm.tirx.Stmt) else outer


def _skip(func: tvm.tirx.PrimFunc) -> str | None:
    """Why a legalized PrimFunc is not tuned, or None."""
    attrs = func.attrs or {}
    if int(attrs.get("op_pattern", 0)) == OPAQUE:
        return "a project kernel"
    if attrs.get("tirx.is_scheduled", False):
        return "already scheduled"
    if relax.analysis.has_reshape_pattern(func):
        return "a reshape (a view at run time)"
    if work(func.body) < MIN_WORK:
        return f"fewer than {MIN_WORK} loop iterations"
    return None


def untuned_schedule(mod: IRModule, cores: int) -> s_tir.Schedule:
    """The workload as an untuned build runs it, as a schedule MetaSchedule can replay and measure first, so a
    tuned op is never slower than the untuned one: ``passes.ParallelizeDense``'s loop nests (per top-level
    block, the leading spatial loops fused until there is work for the cores, then parallel).

    Planned on a scratch schedule, then replayed on a fresh one, so a refused step leaves nothing in the trace.
    """
    scratch, steps = s_tir.Schedule(mod), []
    if cores > 1:
        for block in scratch.get_child_blocks(scratch.get_sblock("root")):
            count = _parallel_loops(scratch, block, cores)
            if count:
                steps.append((scratch.get(block).name_hint, count))
    sch = s_tir.Schedule(mod)
    for name, count in steps:
        loops = sch.get_loops(sch.get_sblock(name))[:count]
        sch.parallel(sch.fuse(*loops) if count > 1 else loops[0])
    return sch


def _parallel_loops(sch: s_tir.Schedule, block, cores: int) -> int:
    """How many leading loops of ``block`` ``ParallelizeDense`` fuses and parallelises (0: none); done on ``sch``."""
    loops, iters = sch.get_loops(block), sch.get(block).iter_vars
    if not loops or len(loops) != len(iters) or any(sch.get(loop).kind != tvm.tirx.ForKind.SERIAL for loop in loops):
        return 0
    amount, count = 1, 0
    for loop, iter_var in zip(loops, iters, strict=True):
        extent = sch.get(loop).extent
        if iter_var.iter_type != 0 or not isinstance(extent, tvm.tirx.IntImm) or amount >= 4 * cores:
            break  # 0 = kDataPar
        amount, count = amount * int(extent), count + 1
    if count == 0 or amount < 2:
        return 0
    try:
        sch.parallel(sch.fuse(*loops[:count]) if count > 1 else loops[0])
    except Exception:  # ScheduleError: ParallelizeDense leaves this nest serial too
        return 0
    return count


def default_space() -> ms.space_generator.PostOrderApply:
    """MetaSchedule's default CPU space (its llvm rules, postprocs and mutators), named rather than taken
    ``from-target``: the x86 / Arm variants ask for int8 tensor intrinsics these fp32 ops never use."""
    return ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm", mutator_probs="llvm")


def op_tasks(mod: IRModule, target: Target) -> list[OpTask]:
    """The leftover ops of ``mod`` (after the project's passes) as tuning tasks, heaviest-called first."""
    lowered = legalize(mod, target)
    out = []
    for task in ms.relax_integration.extract_tasks(lowered, target):
        workload = task.dispatched[0]
        why = _skip(workload["main"])
        if why is not None:
            log.info("%s: not tuned (%s)", task.task_name, why)
            continue
        out.append(OpTask(f"op_{task.task_name}", workload, default_space(), (), lambda m: m["main"],
                          int(task.weight), target_cores(target)))  # fmt: skip
    log.info("%d leftover op(s) to tune in MetaSchedule's default space", len(out))
    return out
