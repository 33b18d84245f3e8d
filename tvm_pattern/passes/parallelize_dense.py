"""``ParallelizeDense``: the outer spatial loops of every unscheduled PrimFunc run in parallel."""

from __future__ import annotations

import tvm
from tvm.ir import IRModule

from .epilogue import OPAQUE

__all__ = ["ParallelizeDense"]


@tvm.transform.module_pass(opt_level=0, name="ParallelizeDense")
class ParallelizeDense:
    """Run the outer spatial loops of every unscheduled PrimFunc in parallel.

    Why: without tuning, TVM's CPU pipeline runs dense ops (remaining convs, pooling, dense layers)
    on one core. This is no tuned schedule, only the cheap part of one; already scheduled functions
    (the sparse kernel, any loop already parallel) are left alone.
    """

    def __init__(self, cores: int = 1) -> None:
        self.cores = max(1, cores)

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and int((func.attrs or {}).get("op_pattern", 0)) != OPAQUE:
                scheduled = _parallelize(func, self.cores)
                if scheduled is not None:
                    updates[gvar] = scheduled
        if not updates:
            return mod
        mod = mod.clone()  # a pass must not change its input module
        for gvar, func in updates.items():
            mod.update_func(gvar, func)
        return mod


def _parallelize(func: tvm.tirx.PrimFunc, cores: int) -> tvm.tirx.PrimFunc | None:
    """``func`` with each top-level loop nest's outer spatial loops fused and parallel, or None."""
    if cores < 2:
        return None
    try:
        sch = tvm.s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # not a TensorIR function with a root block (hand-written kernels)
        return None
    changed = False
    for block in blocks:
        changed |= _parallelize_nest(sch, block, cores)
    return sch.mod["main"] if changed else None


def _parallelize_nest(sch: tvm.s_tir.Schedule, block, cores: int) -> bool:
    """Fuse the leading data-parallel loops of ``block`` until there is work for the cores, then parallelise.

    Unscheduled TE functions nest one loop per block iter, in order, so the leading spatial iters name the
    loops that are safe to run in parallel; the schedule re-checks and refuses anything else.
    """
    loops = sch.get_loops(block)
    iters = sch.get(block).iter_vars
    if not loops or len(loops) != len(iters) or any(sch.get(loop).kind != tvm.tirx.ForKind.SERIAL for loop in loops):
        return False
    work, count = 1, 0
    for loop, iter_var in zip(loops, iters, strict=True):
        extent = sch.get(loop).extent
        if iter_var.iter_type != 0 or not isinstance(extent, tvm.tirx.IntImm) or work >= 4 * cores:
            break  # 0 = kDataPar
        work, count = work * int(extent), count + 1
    if count == 0 or work < 2:
        return False
    try:
        sch.parallel(sch.fuse(*loops[:count]) if count > 1 else loops[0])
    except Exception:  # ScheduleError: a check we did not foresee; leave this nest serial
        return False
    return True
