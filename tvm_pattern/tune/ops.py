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
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..passes import OPAQUE
from ..schedules.space import TuningTask

log = logging.getLogger(__name__)

__all__ = ["MIN_WORK", "OpTask", "legalize", "op_tasks", "work"]

MIN_WORK = 1024  # loop iterations of a function's largest loop nest below which it is not tuned


@dataclass(frozen=True)
class OpTask(TuningTask):
    """A leftover op's ``TuningTask`` in MetaSchedule's default space; ``weight``: how many calls share it.
    Runners fill its arguments with random data (``arrays`` is empty)."""

    weight: int = 1


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
                          int(task.weight)))  # fmt: skip
    log.info("%d leftover op(s) to tune in MetaSchedule's default space", len(out))
    return out
