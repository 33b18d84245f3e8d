"""``PatternSparseConv2d``: the Relax pass that swaps pattern-sparse 3x3 convs for the sparse kernel.

Every ``relax.nn.conv2d`` with a constant 3x3 weight whose kernels fit the pattern library becomes a
``call_tir`` of the pattern-sparse PrimFunc (``tvm_pattern.sparse_conv``). The per-channel ops that follow
it (an inference batch_norm, as torch.export emits, folded into the weights; a bias add, as ONNX and
torch.export emit; a ReLU), matched with ``tvm.relax.dpl``, become the kernel's epilogue. Every other conv
stays dense and the reason is logged, so a user can see why a layer did not speed up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from .errors import PatternError
from .sparsity.format import PackedConv, pack
from .sparsity.library import KERNEL, PatternLibrary
from .targets import resolve_target

__all__ = ["ConvReport", "PatternSparseConv2d"]

log = logging.getLogger(__name__)

# Errors raised inside a pass cross the FFI (Pass.__call__); registered, they come back as themselves.
tvm_ffi.register_error(PatternError)

DENSE_LIBRARY = PatternLibrary(np.ones((1, KERNEL, KERNEL), dtype=bool))  # an unpruned 3x3 conv as one pattern
OPAQUE = 8  # relay/relax OpPatternKind kOpaque: FuseOps must not merge more ops into the sparse kernel

# DPL patterns of the epilogue that follows a conv (the conv's own var stands for the wildcard).
_BIAS_CONST = is_const()
_BIAS = _BIAS_CONST | is_op("relax.reshape")(_BIAS_CONST, wildcard())
_BIAS_ADD = is_op("relax.add")(wildcard(), _BIAS) | is_op("relax.add")(_BIAS, wildcard())
_RELU = is_op("relax.nn.relu")(wildcard())
_CONV = is_op("relax.nn.conv2d")(wildcard(), wildcard())
_BATCH_NORM = is_op("relax.nn.batch_norm")(wildcard(), is_const(), is_const(), is_const(), is_const())


@dataclass(frozen=True)
class ConvReport:
    """What the pass did with one conv2d, for logs and the CLI."""

    name: str
    weight_shape: tuple[int, ...]
    rewritten: bool
    reason: str = ""
    epilogue: tuple[str, ...] = ()
    kept_kernels: int = 0
    patterns: int = 0
    dense_kernel: bool = False  # an unpruned conv run by the generated kernel as one 9-tap pattern
    tuned: bool = False  # its kernel is the best schedule of a tuning database

    @property
    def sparse(self) -> bool:
        return self.rewritten and not self.dense_kernel

    def __str__(self) -> str:
        shape = "x".join(map(str, self.weight_shape)) or "?"
        if not self.rewritten:
            return f"{self.name} [{shape}]: dense ({self.reason})"
        total = int(np.prod(self.weight_shape[:2]))
        fused = "".join(f" +{e}" for e in self.epilogue) + (", tuned" if self.tuned else "")
        if self.dense_kernel:
            return f"{self.name} [{shape}]: dense, run by the generated kernel as one 9-tap pattern{fused}"
        return (
            f"{self.name} [{shape}]: pattern-sparse, {self.kept_kernels}/{total} kernels kept, "
            f"{self.patterns} patterns{fused}"
        )


class _Dense(Exception):
    """A conv stays dense; ``conforming`` is False when strict mode must refuse it."""

    def __init__(self, reason: str, conforming: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.conforming = conforming


@dataclass
class _Plan:
    """The ``call_tir`` that replaces the binding at the tail of a conv [+ batch_norm] [+ bias] [+ relu] chain."""

    data: relax.Expr
    gvar: relax.GlobalVar
    arrays: tuple[np.ndarray, ...]
    bias: np.ndarray | None
    out_shape: tuple[int, ...]

    def call(self, data: relax.Expr) -> relax.Call:
        args = [data, *(relax.const(a) for a in self.arrays)]
        if self.bias is not None:
            args.append(relax.const(self.bias))
        return relax.call_tir(self.gvar, args, relax.TensorType(self.out_shape, "float32"))


def _load_library(library: PatternLibrary | str | os.PathLike | None) -> PatternLibrary | None:
    if library is None or isinstance(library, PatternLibrary):
        return library
    return PatternLibrary.load(library)


def _static_shape(ty: relax.TensorType) -> tuple[int, ...] | None:
    shape = getattr(ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _as_constant(expr: relax.Expr, var2val: dict) -> np.ndarray | None:
    """The value of ``expr`` if it is a constant or a var bound to one."""
    while isinstance(expr, relax.Var) and expr in var2val:
        expr = var2val[expr]
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


class _Function:
    """The bindings of one Relax function: values and users of every var."""

    def __init__(self, func: relax.Function) -> None:
        self.var2val = relax.analysis.get_var2val(func)
        self.bindings: list[relax.VarBinding] = []
        self.users: dict[relax.Var, list[relax.VarBinding | None]] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.bindings.append(binding)
                for var in relax.analysis.free_vars(binding.value):
                    self.users.setdefault(var, []).append(binding)
        for var in relax.analysis.free_vars(func.body.body):
            self.users.setdefault(var, []).append(None)  # returned: used outside the function

    def sole_user(self, var: relax.Var) -> relax.VarBinding | None:
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 and isinstance(users[0], relax.VarBinding) else None

    def sole_item_user(self, var: relax.Var, index: int) -> relax.VarBinding | None:
        """The one binding ``var[index]`` of a tuple var whose other uses are dead ``var[i]`` bindings.

        The ONNX importer binds batch_norm's running mean and variance (``bn[1]``, ``bn[2]``) unused.
        """
        live = []
        for user in self.users.get(var, []):
            if not isinstance(user, relax.VarBinding) or not isinstance(user.value, relax.TupleGetItem):
                return None
            if int(user.value.index) == index:
                live.append(user)
            elif self.users.get(user.var):
                return None
        return live[0] if len(live) == 1 else None


def _per_channel_bias(add: relax.Call, tail: relax.Var, fn: _Function, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """The (O,) bias of ``add(tail, b)`` if ``b`` is a float32 constant broadcast along channels only."""
    other = add.args[1] if add.args[0].same_as(tail) else add.args[0]
    shape = _static_shape(other.ty)
    if shape is None or str(other.ty.dtype) != "float32" or _static_shape(add.ty) != out_shape:
        return None
    channels = out_shape[1]
    aligned = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None
    if aligned is None or aligned[1] != channels or any(d != 1 for i, d in enumerate(aligned) if i != 1):
        return None
    matched = _BIAS.extract_matched_expr(other, fn.var2val)  # a constant, or reshape(constant)
    value = None if matched is None else matched[_BIAS_CONST].value.numpy()
    if value is None or value.size != channels:
        return None
    return value.reshape(channels).astype(np.float32)


@dataclass
class _Epilogue:
    """Per-channel ops after a conv that the sparse kernel absorbs: ``relu(conv * scale + bias)``."""

    tail: relax.Var  # the last var of the chain: its binding becomes the call_tir
    scale: np.ndarray | None = None  # (O,), folded into the weights (inference BatchNorm)
    bias: np.ndarray | None = None  # (O,)
    relu: bool = False
    names: tuple[str, ...] = ()


def _fold_batch_norm(epi: _Epilogue, fn: _Function, channels: int) -> None:
    """Absorb ``batch_norm(tail)[0]`` (inference) as a scale and a bias, as torch.export emits it."""
    user = fn.sole_user(epi.tail)
    if user is None or not _BATCH_NORM.match(user.value, fn.var2val):
        return
    attrs = user.value.attrs
    item = fn.sole_item_user(user.var, 0)
    if int(attrs.axis) not in (1, -3) or bool(attrs.training) or item is None:
        return
    stats = [_as_constant(arg, fn.var2val) for arg in user.value.args[1:]]
    if any(v is None or v.size != channels for v in stats):
        return
    gamma, beta, mean, var = (v.reshape(channels).astype(np.float64) for v in stats)
    scale = (gamma if attrs.scale else 1.0) / np.sqrt(var + float(attrs.epsilon))
    shift = (beta if attrs.center else 0.0) - mean * scale
    epi.tail, epi.scale, epi.bias = item.var, scale.astype(np.float32), shift.astype(np.float32)
    epi.names += ("batch_norm",)


def _epilogue(conv_var: relax.Var, fn: _Function, out_shape: tuple[int, ...]) -> _Epilogue:
    """Follow the conv's sole users through optional batch_norm, bias add and ReLU, in that order.

    An op whose input has other users ends the chain: fusing it would keep the dense conv alive for them.
    """
    epi = _Epilogue(conv_var)
    _fold_batch_norm(epi, fn, out_shape[1])
    user = fn.sole_user(epi.tail)
    if user is not None and _BIAS_ADD.match(user.value, fn.var2val):
        bias = _per_channel_bias(user.value, epi.tail, fn, out_shape)
        if bias is not None:
            epi.bias = bias if epi.bias is None else epi.bias + bias
            epi.tail, epi.names, user = user.var, (*epi.names, "bias"), fn.sole_user(user.var)
    if user is not None and _RELU.match(user.value, fn.var2val) and user.value.args[0].same_as(epi.tail):
        epi.tail, epi.relu, epi.names = user.var, True, (*epi.names, "relu")
    return epi


def _layout_dims(call: relax.Call, weight_shape: tuple[int, ...] | None) -> tuple[int, int] | None:
    """Kernel (height, width) read through the kernel layout; None if unknown."""
    layout = str(call.attrs.kernel_layout)
    if weight_shape is None or "H" not in layout or "W" not in layout or len(layout) != len(weight_shape):
        return None
    return weight_shape[layout.index("H")], weight_shape[layout.index("W")]


def _check_candidate(call: relax.Call, weight_shape: tuple[int, ...] | None) -> None:
    """Raise ``_Dense`` for convs the sparse kernel is not meant for (never a strict-mode error)."""
    dims = _layout_dims(call, weight_shape)
    if dims is None:
        raise _Dense("weight shape is not static")
    if dims != (KERNEL, KERNEL):
        raise _Dense(f"kernel is {dims[0]}x{dims[1]}, not 3x3")
    if int(call.attrs.groups) != 1:
        raise _Dense(f"groups={int(call.attrs.groups)} (grouped/depthwise conv)")


def _check_supported(call: relax.Call, weight: np.ndarray | None) -> None:
    """Raise ``_Dense(conforming=False)`` for a 3x3 conv the sparse kernel cannot run."""
    attrs = call.attrs
    if weight is None:
        raise _Dense("weight is not a constant (bind the parameters, e.g. relax.transform.BindParams)", False)
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout or attrs.data_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        raise _Dense(f"layout {'/'.join(layouts)} is not NCHW/OIHW/NCHW", False)
    data_dtype = str(call.args[0].ty.dtype)
    dtypes = (data_dtype, str(weight.dtype), str(attrs.out_dtype or data_dtype))
    if any(d != "float32" for d in dtypes):
        raise _Dense(f"dtype (data, weight, out) = {dtypes}, only float32 is supported", False)
    if tuple(int(d) for d in attrs.dilation) != (1, 1):
        raise _Dense(f"dilation {tuple(int(d) for d in attrs.dilation)} is not 1", False)
    if _static_shape(call.args[0].ty) is None:
        raise _Dense("input shape is not static", False)


def _pack(weight: np.ndarray, library: PatternLibrary | None, dense_kernel: bool) -> tuple[PackedConv, bool]:
    """Pack the weight; True with it if it is an unpruned conv packed as one 9-tap pattern (``dense_kernel``).

    Raises ``_Dense``: "dense" for an unpruned conv otherwise, non-conforming if no pattern fits.
    """
    taps = (weight != 0).reshape(-1, KERNEL * KERNEL).sum(axis=1)
    if (taps == KERNEL * KERNEL).any():
        if dense_kernel:
            return pack(weight, DENSE_LIBRARY), True
        raise _Dense(f"dense: {int((taps == KERNEL * KERNEL).sum())}/{len(taps)} kernels keep all 9 taps")
    if not taps.any():
        raise _Dense("weight is all zeros")
    try:
        return pack(weight, library), False
    except PatternError as err:
        source = "the pattern library" if library is not None else "a pattern inferred from its non-zeros"
        raise _Dense(f"weight does not fit {source}: {err}", False) from err


@tvm.transform.module_pass(opt_level=0, name="PatternSparseConv2d")
class PatternSparseConv2d:
    """Rewrite pattern-sparse 3x3 conv2d (+ batch_norm + bias + ReLU) into ``call_tir`` of the sparse kernel.

    ``library``: a PatternLibrary or the path of ``patterns.json``; None infers each conv's patterns
    from its non-zeros. ``strict``: raise ``PatternError`` for a 3x3 conv that should be sparse but
    cannot be (non-constant weight, layout, dtype, dilation, weight fitting no pattern) instead of
    leaving it dense; unpruned (dense) convs are never an error. ``target``: the schedule's target
    (default: the current one). ``config``: knobs overriding the schedule's defaults for every conv.
    ``dense_kernel``: also run unpruned 3x3 convs through the generated kernel as one 9-tap pattern, a
    register-blocked direct conv, since TVM's stock CPU pipeline leaves a dense conv unscheduled.
    ``database``: a MetaSchedule database (or a tuning job's work directory, see ``tvm_pattern.tune``); a conv
    whose tuning task has a record there gets the kernel of its best schedule, the others the default kernel.
    ``collect_tasks``: also put each rewritten conv's ``TuningTask`` in ``tasks`` (what ``tune`` measures).
    After a run, ``summary`` lists a ``ConvReport`` per conv2d.
    """

    def __init__(
        self,
        library: PatternLibrary | str | os.PathLike | None = None,
        strict: bool = False,
        target: Target | str | None = None,
        config: dict | None = None,
        dense_kernel: bool = False,
        database=None,
        collect_tasks: bool = False,
    ) -> None:
        self.library = _load_library(library)
        self.strict = strict
        self.dense_kernel = dense_kernel
        self.target = target
        self.config = config
        self.database = _load_database(database)
        self.collect_tasks = collect_tasks
        self.summary: list[ConvReport] = []
        self.tasks: list = []  # schedules.space.TuningTask per rewritten conv, if collect_tasks

    @property
    def rewritten(self) -> list[ConvReport]:
        """Convs replaced by the generated kernel (pattern-sparse, or dense ones if ``dense_kernel``)."""
        return [r for r in self.summary if r.rewritten]

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        self.summary = []
        self.tasks = []
        rewriter = _Rewriter(mod)
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function) or _is_kernel(func):
                continue
            plans = self._plan_function(gvar.name_hint, func, rewriter.builder_)
            if plans:
                rewriter.plans = plans
                new_func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
                rewriter.builder_.update_func(gvar, new_func)
        return rewriter.builder_.get()

    def _plan_function(self, fname: str, func: relax.Function, builder: relax.BlockBuilder) -> dict:
        fn = _Function(func)
        plans: dict[relax.Var, _Plan] = {}
        for binding in fn.bindings:
            if not _CONV.match(binding.value):
                continue
            name = f"conv2d '{binding.var.name}' in {fname}"
            report, plan = self._plan_conv(name, binding, fn, builder)
            self.summary.append(report)
            if plan is not None:
                plans[plan[0]] = plan[1]
        return plans

    def _plan_conv(self, name: str, binding: relax.VarBinding, fn: _Function, builder: relax.BlockBuilder):
        call = binding.value
        weight = _as_constant(call.args[1], fn.var2val)
        weight_shape = _static_shape(call.args[1].ty)
        out_shape = _static_shape(binding.var.ty)
        try:
            _check_candidate(call, weight_shape)
            _check_supported(call, weight)
            epi = _epilogue(binding.var, fn, out_shape)
            if epi.scale is not None:  # scaling filters keeps every zero: the patterns are unchanged
                weight = (weight * epi.scale[:, None, None, None]).astype(np.float32)
            packed, dense_kernel = _pack(weight, self.library, self.dense_kernel)
            plan, tuned = self._build(name, call, packed, epi.bias, epi.relu, out_shape, builder)
        except _Dense as dense:
            return self._leave_dense(name, weight_shape or (), dense), None
        report = ConvReport(name, weight_shape, True, "", epi.names, packed.nnz, packed.k, dense_kernel, tuned)
        log.info("%s", report)
        return report, (epi.tail, plan)

    def _leave_dense(self, name: str, weight_shape: tuple[int, ...], dense: _Dense) -> ConvReport:
        if self.strict and not dense.conforming:
            raise PatternError(f"{name}: {dense.reason}")
        report = ConvReport(name, weight_shape, False, dense.reason)
        (log.info if dense.conforming else log.warning)("%s", report)
        return report

    def _build(self, name, call, packed, bias, relu, out_shape, builder) -> tuple[_Plan, bool]:
        """The ``call_tir`` plan of one conv and whether its kernel is a tuned one."""
        from .sparse_conv import sparse_conv2d, tuning_task  # the kernel generator; imported late, it is heavy

        attrs = call.attrs
        layer = {
            "data_shape": _static_shape(call.args[0].ty),
            "strides": tuple(int(s) for s in attrs.strides),
            "padding": tuple(int(p) for p in attrs.padding),
            "relu": relu,
            "target": self._target(),
        }
        try:
            task = None
            if self.collect_tasks or self.database is not None:
                task = tuning_task(packed, bias=bias if bias is not None else False, **layer)
                if self.collect_tasks:
                    self.tasks.append(task)
            tuned = self._tuned(name, task, layer["target"]) if self.database is not None else None
            kernel = None if tuned is not None else sparse_conv2d(packed, bias=bias is not None, config=self.config,
                                                                  **layer)  # fmt: skip
        except PatternError as err:  # a shape the kernel generator refuses
            raise _Dense(f"the sparse kernel cannot run it: {err}", False) from err
        if kernel is not None and tuple(kernel.out_shape) != out_shape:
            raise PatternError(f"{name}: sparse kernel output shape {kernel.out_shape} != conv2d's {out_shape}")
        func = tuned if tuned is not None else kernel.func
        gvar = builder.add_func(func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE), "pattern_conv2d")
        if tuned is not None:  # the task's arrays are the tuned kernel's arguments, bias included
            return _Plan(call.args[0], gvar, tuple(task.arrays), None, out_shape), True
        return _Plan(call.args[0], gvar, tuple(kernel.arrays), bias, out_shape), False

    def _tuned(self, name: str, task, target: Target | None):
        """The kernel of ``task``'s best record in the database, or None (logged: the default kernel is used)."""
        from .tune import tuned_kernel

        func = tuned_kernel(task, self.database, target if target is not None else resolve_target(None))
        if func is None:
            log.info("%s: no tuning record for %s, default kernel", name, task.name)
        return func

    def _target(self) -> Target | None:
        if self.target is not None:
            return resolve_target(self.target)
        return Target.current(allow_none=True)


def _load_database(database):
    """A MetaSchedule database, or a tuning job's work directory opened as its JSON database."""
    if database is None or not isinstance(database, (str, os.PathLike)):
        return database
    from .tune import open_database

    return open_database(database)


def _is_kernel(func: relax.Function) -> bool:
    """Functions produced by fusion/offload; their bodies are not ours to rewrite."""
    attrs = func.attrs or {}
    return any(key in attrs for key in ("Primitive", "Composite", "Codegen"))


@mutator
class _Rewriter(PyExprMutator):
    """Rebind the tail var of each planned chain to its ``call_tir``; the bypassed ops become unused."""

    def __init__(self, mod: IRModule) -> None:
        super().__init__(mod)
        self.plans: dict[relax.Var, _Plan] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = self.plans.get(binding.var)
        if plan is None:
            super().visit_var_binding_(binding)
            return
        value = self.builder_.normalize(plan.call(self.visit_expr(plan.data)))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
