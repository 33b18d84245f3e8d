"""The Mali (OpenCL) Relax pipeline, and a way to run what it schedules on PoCL.

TVM's generic GPU pipeline (``relax.backend.gpu_generic``) already schedules every op with dlight's GPU rules
(Matmul, GEMV, Reduction, GeneralReduction, then Fallback), but its ``ApplyDefaultSchedule`` stops the whole
build when one rule crashes on a function it should have declined: dlight 0.27's ``GEMV`` asserts on a
depthwise conv over a 1x1 map (MobileNet-V2's last blocks at 32x32 input) instead of returning None.
``ScheduleGPU`` applies the same rules in the same order, treats a rule that raises as not applicable, so the
next one (at worst ``Fallback``) schedules the function, and fails naming the function if none does. The
project's pattern-sparse Mali kernels come scheduled (``tirx.is_scheduled``), and kernels that bind their own
threads (the block-sparse GPU kernels) count as scheduled: both are left alone.

``fold_weight_ops`` runs first: it folds with numpy the reshapes / ``isnan`` / ``where`` that the ONNX importer
puts on weights and ``Clip`` bounds, which ``FoldConstant`` folds by building a kernel for each (MobileNet-V2:
140 of them, ~20 s).

``OpenCLModel`` checks numerics without a Mali GPU: TVM's wheel has no OpenCL runtime, so it takes the
module right after scheduling, runs its ``main`` binding by binding, and launches every ``call_tir`` kernel
with ``devices.opencl`` (pyopencl, e.g. on PoCL), every kernel of the model in one OpenCL program.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir import IRModule
from tvm.relax.backend import gpu_generic
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.s_tir import dlight as dl
from tvm.target import Target

from ..devices.opencl import OpenCLError, OpenCLProgram, opencl_device
from ..errors import TvmPatternError

__all__ = ["OpenCLModel", "ScheduleGPU", "fold_weight_ops", "gpu_rules", "link", "lowering_pipeline",
           "mali_pipeline", "run_opencl_model", "schedule", "schedule_passes"]  # fmt: skip

log = logging.getLogger(__name__)


def gpu_rules() -> list[dl.ScheduleRule]:
    """dlight's GPU rules in ``gpu_generic``'s order; ``Fallback`` binds whatever the others decline."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    """Marked scheduled, or a hand-written GPU kernel that binds its own threads (a generated sparse kernel)."""
    if (func.attrs or {}).get("tirx.is_scheduled", False):
        return True
    found = []

    def visit_attr(node: tirx.AttrStmt) -> None:
        if node.attr_key in ("thread_extent", "virtual_thread"):
            found.append(node)

    def visit_for(node: tirx.For) -> None:
        if node.kind == tirx.ForKind.THREAD_BINDING:
            found.append(node)

    tvm_ffi.structural_walk(func.body, [(tirx.AttrStmt, visit_attr), (tirx.For, visit_for)], order="post")
    return bool(found)


@tvm.transform.module_pass(opt_level=0, name="ScheduleGPU")
class ScheduleGPU:
    """dlight's ``ApplyDefaultSchedule`` that skips a rule raising on a function instead of failing the build.

    ``chosen``: function name -> the name of the rule that scheduled it.
    """

    def __init__(self, rules: Sequence[dl.ScheduleRule] | None = None) -> None:
        self.rules = list(rules) if rules is not None else gpu_rules()
        self.chosen: dict[str, str] = {}

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
                target = Target.current(allow_none=False)
                if "target" in (func.attrs or {}):
                    target = func.attrs["target"]
                updates[gvar] = self._schedule(gvar.name_hint, func, target)
        mod = mod.clone()  # the caller's module stays as it was (dlight's pass edits it in place)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    def _schedule(self, name: str, func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
        errors = []
        for rule in self.rules:
            try:
                space = rule.apply(func, target, False)
            except Exception as err:  # a dlight rule's assertion on a shape it does not handle: not applicable
                errors.append(f"{type(rule).__name__}: {type(err).__name__} {err}".strip())
                log.debug("dlight %s failed on %s: %s", type(rule).__name__, name, err)
                continue
            if space is None:
                continue
            sch = space if isinstance(space, tvm.s_tir.Schedule) else space[0]
            self.chosen[name] = type(rule).__name__
            return sch.mod["main"].with_attr("tirx.is_scheduled", True)
        raise TvmPatternError(
            f"no dlight GPU rule schedules {name} for {target.kind.name}"
            + (f" ({'; '.join(errors)})" if errors else "")
        )


def _shape(expr: relax.Expr) -> list[int] | None:
    if isinstance(expr, relax.ShapeExpr) and all(isinstance(d, tirx.IntImm) for d in expr.values):
        return [int(d) for d in expr.values]
    return None


def _permute(x: np.ndarray, call: relax.Call) -> np.ndarray:
    axes = call.attrs.axes
    return np.transpose(x, None if axes is None else [int(a) for a in axes])


_FOLDS = {  # op -> numpy, on (the constant arrays, the arguments, the call); what the ONNX importer puts on weights
    "relax.isnan": lambda xs, _, __: np.isnan(xs[0]),
    "relax.where": lambda xs, _, __: np.where(*xs),
    "relax.reshape": lambda xs, args, _: xs[0].reshape(_shape(args[1])),
    "relax.permute_dims": lambda xs, _, call: _permute(xs[0], call),
}


@mutator
class _ConstantFolder(PyExprMutator):
    """The ops of ``_FOLDS`` on constants, evaluated with numpy."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        fold = _FOLDS.get(call.op.name) if isinstance(call.op, tvm.ir.Op) else None
        args = [self._value(a) for a in call.args]
        data = [a for a in args if isinstance(a, tvm.ir.GenericConst)]
        shapes = [a for a in args if _shape(a) is not None]
        if fold is None or not data or len(data) + len(shapes) != len(args):
            return call
        value = np.asarray(fold([c.value.numpy() for c in data], args, call)).copy()  # C order, 0-d kept
        ty = call.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None or str(ty.dtype) != str(value.dtype):
            return call  # numpy's result type differs from the op's: leave it to FoldConstant
        return relax.const(value) if _shape(ty.shape) == list(value.shape) else call

    def _value(self, expr: relax.Expr) -> relax.Expr:
        """What a var is bound to (a folded constant), else the expression."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        return expr if bound is None else bound


@tvm.transform.module_pass(opt_level=0, name="FoldWeightOps")
def fold_weight_ops(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """Reshapes / transposes of weights and the ``where(isnan(c), inf, c)`` bounds of the ONNX importer's ``Clip``,
    folded with numpy: ``FoldConstant`` builds and runs a kernel for each (~20 s for MobileNet-V2 on 2 cores)."""
    folder = _ConstantFolder(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gvar, folder.visit_expr(func))
    return folder.builder_.get()


def schedule_passes(target: Target, scheduler: ScheduleGPU | None = None) -> list[tvm.transform.Pass]:
    """``gpu_generic``'s dispatch and legalization phases with ``ScheduleGPU`` in place of ``ApplyDefaultSchedule``
    (and ``fold_weight_ops`` first): the module after them has only scheduled PrimFuncs and ``call_tir``s
    (what ``OpenCLModel`` runs)."""
    legalize = [p for p in gpu_generic.legalize_passes(target) if not isinstance(p, dl.ApplyDefaultSchedule)]
    return [fold_weight_ops, *gpu_generic.library_dispatch_passes(target), *legalize, scheduler or ScheduleGPU()]


def lowering_passes(target: Target) -> list[tvm.transform.Pass]:
    """``gpu_generic``'s phases after scheduling: from ``call_tir``s to VM code."""
    return gpu_generic.dataflow_lower_passes(target) + gpu_generic.finalize_passes(target)


def _sequence(target: Target, passes: list[tvm.transform.Pass], name: str) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def mali_pipeline(target: Target, scheduler: ScheduleGPU | None = None) -> tvm.transform.Pass:
    """The Relax pipeline of OpenCL / Mali targets: ``gpu_generic``'s with ``ScheduleGPU`` (see the module doc)."""
    return _sequence(target, schedule_passes(target, scheduler) + lowering_passes(target), "PatternGPUPipeline")


def lowering_pipeline(target: Target) -> tvm.transform.Pass:
    """``lowering_passes`` as a Relax pipeline: ``tvm.compile`` of a module ``schedule`` returned."""
    return _sequence(target, lowering_passes(target), "PatternGPULowering")


def schedule(mod: IRModule, target: Target, scheduler: ScheduleGPU | None = None) -> IRModule:
    """``mod`` after ``schedule_passes``: one scheduling serves both ``tvm.compile(..., lowering_pipeline)`` and
    ``OpenCLModel``."""
    with target:
        return tvm.transform.Sequential(schedule_passes(target, scheduler))(mod)


# ---------------------------------------------------------------------------------------------- on PoCL


class OpenCLModel:
    """A module ``schedule`` returned, run on the first OpenCL device (e.g. PoCL): ``model(x, ...)`` runs ``main``
    binding by binding (``call_tir``s, constants, tuples) with numpy arrays in and out.

    ``programs``: each PrimFunc's ``OpenCLProgram`` (its source, launches, ``verify``); ``prefix`` goes before
    every kernel name, so several models can share one OpenCL program (``link``): PoCL pays ~2 s per build.
    """

    def __init__(self, mod: IRModule, target: Target, prefix: str = "") -> None:
        if target.kind.name != "opencl":
            raise OpenCLError(f"OpenCLModel needs an opencl target, got {target.kind.name}")
        self.mod = mod
        self.programs: dict[str, OpenCLProgram] = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                try:
                    self.programs[gvar.name_hint] = OpenCLProgram(func, target, name=prefix + gvar.name_hint)
                except Exception as err:
                    raise OpenCLError(f"{gvar.name_hint} does not lower to OpenCL: {err}") from err
        self.device = None  # (context, queue, program), from link()

    def __call__(self, *inputs: np.ndarray, entry: str = "main"):
        if self.device is None:
            link([self])
        func = self.mod[entry]
        if len(inputs) != len(func.params):
            raise OpenCLError(f"{entry} takes {len(func.params)} inputs, got {len(inputs)}")
        env = {p: np.asarray(x) for p, x in zip(func.params, inputs, strict=True)}
        body = func.body
        for block in body.blocks:
            for binding in block.bindings:
                env[binding.var] = self._eval(binding.value, env)
        return self._eval(body.body, env)

    def _eval(self, expr: relax.Expr, env: dict):
        if isinstance(expr, relax.Var):
            return env[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Tuple):
            return tuple(self._eval(f, env) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self._eval(expr.tuple_value, env)[expr.index]
        if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.call_tir"):
            return self._call_tir(expr, env)
        raise OpenCLError(f"cannot run {type(expr).__name__} {expr} on OpenCL (only call_tir, constants, tuples)")

    def _call_tir(self, call: relax.Call, env: dict):
        gvar, args = call.args[0], call.args[1]
        if len(call.args) > 2:
            raise OpenCLError(f"call_tir {gvar.name_hint} has symbolic shape arguments (tir_vars)")
        ins = [self._eval(a, env) for a in args.fields]
        out_types = call.ty.fields if isinstance(call.ty, relax.TupleType) else [call.ty]
        outs = [_unwritten([int(d) for d in t.shape], str(t.dtype)) for t in out_types]
        results = self.programs[gvar.name_hint].run(*self.device, [*ins, *outs])
        outs = results[len(ins) :]
        return tuple(outs) if isinstance(call.ty, relax.TupleType) else outs[0]


def _unwritten(shape: list[int], dtype: str) -> np.ndarray:
    """An output buffer that shows elements no kernel wrote: NaN for floats, all-ones bits otherwise."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return np.full(shape, np.nan, dtype)
    return np.full(shape, -1, dtype) if np.issubdtype(np.dtype(dtype), np.signedinteger) else np.zeros(shape, dtype)


def link(models: Sequence[OpenCLModel]) -> None:
    """Build the kernels of ``models`` as one OpenCL program on the first device (kernel names must differ:
    give each model its own ``prefix``)."""
    import pyopencl  # opencl_device() checks that it is installed

    ctx, queue = opencl_device()
    names = [name for m in models for p in m.programs.values() for name in {x.name for x in p.launches}]
    if len(set(names)) != len(names):
        raise OpenCLError("kernel names repeat across the models: give each OpenCLModel a distinct prefix")
    source = "\n".join(p.source for m in models for p in m.programs.values())
    program = pyopencl.Program(ctx, source).build()
    for m in models:
        m.device = (ctx, queue, program)


def run_opencl_model(mod: IRModule, target: Target, inputs: Sequence[np.ndarray], entry: str = "main"):
    """Run Relax ``mod`` (after ``PatternSparseConv2d``) on the first OpenCL device: ``schedule``, then
    ``OpenCLModel``. Returns numpy arrays (a tuple for a tuple output)."""
    return OpenCLModel(schedule(mod, target), target)(*inputs, entry=entry)
