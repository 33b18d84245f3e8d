"""Which schedule family serves a target, and the kernels of tuning templates of any family.

``family(target)`` is the one place that maps targets to families: OpenCL targets get ``mali``, llvm targets
of an Arm triple ``arm_cpu``, other CPUs ``x86``. Adding a device is one module that satisfies
``base.ScheduleFamily`` and one ``REGISTRY`` entry.
"""

from __future__ import annotations

import tvm
from tvm.ir import IRModule
from tvm.target import Target

from . import arm_cpu, mali, x86
from .base import ScheduleFamily
from .space import materialize_template, template

__all__ = ["REGISTRY", "build", "family", "family_name", "for_target", "materialize", "materialize_module", "named"]

REGISTRY: dict[str, ScheduleFamily] = {m.NAME: m for m in (x86, arm_cpu, mali)}  # type: ignore[misc]


def family_name(target: Target | None = None) -> str:
    """``mali`` for OpenCL targets, ``arm_cpu`` for llvm targets of an Arm triple, else ``x86`` (None: the host)."""
    if target is None:
        return x86.NAME
    kind = target.kind.name
    if kind == "opencl":
        return mali.NAME
    triple = str(target.attrs.get("mtriple", ""))
    if kind == "llvm" and triple.startswith(("aarch64", "arm")):
        return arm_cpu.NAME
    return x86.NAME


def named(name: str) -> ScheduleFamily:
    """The family registered as ``name`` (``x86``, ``arm_cpu``, ``mali``)."""
    return REGISTRY[name]


def family(target: Target | None = None) -> ScheduleFamily:
    """The schedule family for ``target`` (None: the host)."""
    return named(family_name(target))


for_target = family  # the name the Arm tests and older code use


def materialize(mod: IRModule | tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The kernel a scheduled template of any family selects (the function itself if it is no template)."""
    func = mod["main"] if isinstance(mod, IRModule) else mod
    description = template(func)
    if description is None:
        return func
    return materialize_template(func, named(description["family"]).materialize)


def materialize_module(mod: IRModule) -> IRModule:
    """Every template PrimFunc of ``mod`` replaced by the kernel it selects."""
    updates = {gv: materialize(f) for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and template(f) is not None}
    if not updates:
        return mod
    mod = mod.clone()
    for gvar, func in updates.items():
        symbol = gvar.name_hint
        mod.update_func(gvar, func.with_attr("global_symbol", symbol))
    return mod


def build(mod: IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    """A MetaSchedule builder's ``f_build``: generate the kernels the sampled knobs select, then compile.

    Not MetaSchedule's ``default_build``: it imports ``tvm.s_tir.tensor_intrin``, which takes minutes in every
    new builder process (it parses every CUDA / ROCm / Hexagon intrinsic); these kernels use none.
    """
    return tvm.tirx.build(materialize_module(mod), target=target)
