"""What every kernel-substituting pass shares: the planned ``call_tir`` and the rewrite that installs it.

A pass plans, per Relax function, which binding (the tail of an op + epilogue chain) becomes a ``call_tir`` of a
generated kernel; ``rewrite_functions`` rebinds each planned var to its call and drops what became unused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.expr_functor import PyExprMutator, mutator

__all__ = ["KernelCall", "is_kernel", "rewrite_functions"]


@dataclass
class KernelCall:
    """``call_tir(gvar, [*inputs, *arrays as constants], out)``: ``inputs`` are Relax values (data, [residual])."""

    inputs: tuple[relax.Expr, ...]
    gvar: relax.GlobalVar
    arrays: tuple[np.ndarray, ...]  # every constant argument between the inputs and out, bias included
    out_shape: tuple[int, ...]


def is_kernel(func: relax.Function) -> bool:
    """Functions produced by fusion/offload; their bodies are not ours to rewrite."""
    attrs = func.attrs or {}
    return any(key in attrs for key in ("Primitive", "Composite", "Codegen"))


Planner = Callable[[str, relax.Function, relax.BlockBuilder], dict[relax.Var, KernelCall]]


def rewrite_functions(mod: IRModule, plan_function: Planner) -> IRModule:
    """Every Relax function of ``mod`` with the calls ``plan_function(name, func, builder)`` planned for it."""
    rewriter = _Rewriter(mod)
    for gvar, func in mod.functions_items():
        if not isinstance(func, relax.Function) or is_kernel(func):
            continue
        plans = plan_function(gvar.name_hint, func, rewriter.builder_)
        if plans:
            rewriter.plans = plans
            new_func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
            rewriter.builder_.update_func(gvar, new_func)
    return rewriter.builder_.get()


@mutator
class _Rewriter(PyExprMutator):
    """Rebind the tail var of each planned chain to its ``call_tir``; the bypassed ops become unused."""

    def __init__(self, mod: IRModule) -> None:
        super().__init__(mod)
        self.plans: dict[relax.Var, KernelCall] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = self.plans.get(binding.var)
        if plan is None:
            super().visit_var_binding_(binding)
            return
        args = [*(self.visit_expr(x) for x in plan.inputs), *(relax.const(a) for a in plan.arrays)]
        call = relax.call_tir(plan.gvar, args, relax.TensorType(plan.out_shape, "float32"))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))
