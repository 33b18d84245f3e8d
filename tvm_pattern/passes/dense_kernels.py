"""``DenseKernels``: the Relax pass that runs the dense ops of CNNs through generated kernels.

Every ``relax.nn.conv2d`` left after ``PatternSparseConv2d`` (any kernel size, stride and padding; ``groups=1``,
or depthwise with ``groups = C = O``; NCHW / OIHW float32, constant weight, no dilation) and every dense layer
(``relax.matmul`` of a ``(B, I)`` input, ``B <= MAX_BATCH``, by a constant ``(I, O)`` weight or
``permute_dims`` of a constant ``(O, I)`` one, which is what the ONNX importer emits for Gemm with ``transB``
and for MatMul) becomes a ``call_tir`` of a kernel its ``DenseKernelProvider`` gives (default: the templates'
defaults, ``schedules.dense_cpu``). The epilogue that follows (``epilogue.match_activation_epilogue``: inference
batch_norm folded into the weights, per-channel bias, a residual add, ReLU / ReLU6 / clip) goes into the kernel.
Kernels are ``op_pattern`` OPAQUE so FuseOps leaves them alone. ``summary`` holds a ``DenseReport`` per op,
with the reason for anything left to TVM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.target import Target

from ..errors import TvmPatternError
from ..targets import resolve_target
from .epilogue import OPAQUE, FunctionBindings, as_constant, match_activation_epilogue, static_shape
from .provider import DefaultDenseKernels, DenseKernelProvider, DenseLayer
from .rewrite import KernelCall, rewrite_functions

__all__ = ["MAX_BATCH", "DenseKernels", "DenseReport"]

log = logging.getLogger(__name__)

MAX_BATCH = 8  # the dense kernel keeps MO x B accumulators in registers: a GEMV for small batches only


@dataclass(frozen=True)
class DenseReport:
    """What the pass did with one conv2d or matmul."""

    name: str
    op: str  # "conv2d", "depthwise", "dense"
    weight_shape: tuple[int, ...]
    rewritten: bool
    reason: str = ""
    epilogue: tuple[str, ...] = ()
    winograd: bool = False  # run as Winograd F(4x4, 3x3)

    def __str__(self) -> str:
        shape = "x".join(map(str, self.weight_shape)) or "?"
        if not self.rewritten:
            return f"{self.name} [{shape}]: left to TVM ({self.reason})"
        fused = "".join(f" +{e}" for e in self.epilogue)
        how = "Winograd F(4x4, 3x3) " if self.winograd else ""
        return f"{self.name} [{shape}]: generated {how}{self.op} kernel{fused}"


class _Leave(Exception):
    """The op stays with TVM's pipeline, for ``reason``."""


def _op(expr: relax.Expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def _conv_op(call: relax.Call, weight: np.ndarray | None, data_shape, weight_shape) -> str:
    """"conv2d" or "depthwise" for a conv the kernels run; raises ``_Leave`` otherwise."""
    attrs = call.attrs
    if weight is None:
        raise _Leave("weight is not a constant")
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout or attrs.data_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        raise _Leave(f"layout {'/'.join(layouts)} is not NCHW/OIHW/NCHW")
    if data_shape is None or weight_shape is None:
        raise _Leave("shapes are not static")
    dtypes = (str(call.args[0].ty.dtype), str(weight.dtype), str(attrs.out_dtype or call.args[0].ty.dtype))
    if any(d != "float32" for d in dtypes):
        raise _Leave(f"dtype (data, weight, out) = {dtypes}, only float32")
    if tuple(int(d) for d in attrs.dilation) != (1, 1):
        raise _Leave(f"dilation {tuple(int(d) for d in attrs.dilation)}")
    groups, channels, oc = int(attrs.groups), data_shape[1], weight_shape[0]
    if groups == 1:
        return "conv2d"
    if groups == channels == oc and weight_shape[1] == 1:
        return "depthwise"
    if groups == channels:
        raise _Leave(f"depthwise with channel multiplier {oc // channels}")
    raise _Leave(f"grouped conv (groups={groups})")


def _dense_weight(call: relax.Call, fn: FunctionBindings) -> np.ndarray:
    """The (O, I) weight of ``matmul(x, W)``: a constant (I, O), or ``permute_dims`` of a constant (O, I)."""
    rhs = call.args[1]
    value = as_constant(rhs, fn.var2val)
    if value is not None:
        if value.ndim != 2:
            raise _Leave(f"weight has rank {value.ndim}, not 2")
        return np.ascontiguousarray(value.T)
    expr = rhs
    while isinstance(expr, relax.Var) and expr in fn.var2val:
        expr = fn.var2val[expr]
    if _op(expr) == "relax.permute_dims":
        axes = expr.attrs.axes
        value = as_constant(expr.args[0], fn.var2val)
        if value is not None and value.ndim == 2 and (axes is None or [int(a) for a in axes] == [1, 0]):
            return np.ascontiguousarray(value)
    raise _Leave("weight is not a constant (or a transposed constant)")


@tvm.transform.module_pass(opt_level=0, name="DenseKernels")
class DenseKernels:
    """Rewrite dense conv2d / depthwise conv2d / dense layers (+ epilogue) into ``call_tir`` of generated kernels.

    ``target``: the kernels' target (default: the current one). ``provider``: where kernels come from (a
    ``DenseKernelProvider``; default ``DefaultDenseKernels``). ``convs`` / ``depthwise`` / ``dense``: which op
    kinds to rewrite. ``residual``: absorb residual adds. After a run, ``summary`` lists a ``DenseReport`` per op.
    """

    def __init__(self, target: Target | str | None = None, provider: DenseKernelProvider | None = None,
                 convs: bool = True, depthwise: bool = True, dense: bool = True, residual: bool = True) -> None:
        self.target = target if target is None or isinstance(target, Target) else resolve_target(target)
        self.provider = provider if provider is not None else DefaultDenseKernels()
        self.kinds = {"conv2d": convs, "depthwise": depthwise, "dense": dense}
        self.residual = residual
        self.summary: list[DenseReport] = []

    @property
    def rewritten(self) -> list[DenseReport]:
        return [r for r in self.summary if r.rewritten]

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        self.summary = []
        return rewrite_functions(mod, self._plan_function)

    def _plan_function(self, fname: str, func: relax.Function, builder: relax.BlockBuilder) -> dict:
        fn = FunctionBindings(func)
        plans: dict[relax.Var, KernelCall] = {}
        claimed: set[relax.Var] = set()
        for binding in fn.bindings:
            op = _op(binding.value)
            if op not in ("relax.nn.conv2d", "relax.matmul") or binding.var in claimed:
                continue
            kind = "conv2d" if op == "relax.nn.conv2d" else "dense"
            name = f"{kind if kind == 'dense' else 'conv2d'} '{binding.var.name}' in {fname}"
            weight_shape = static_shape(binding.value.args[1].ty) or ()
            try:
                layer, epi = self._layer(name, binding, fn, claimed)
                plan, winograd = self._build(layer, binding.value.args[0], epi.residual, builder)
            except _Leave as leave:
                report = DenseReport(name, kind, weight_shape, False, str(leave))
                log.info("%s", report)
                self.summary.append(report)
                continue
            claimed.update(epi.absorbed)
            plans[epi.tail] = plan
            report = DenseReport(name, layer.op, tuple(layer.weight.shape), True, "", epi.names, winograd)
            log.info("%s", report)
            self.summary.append(report)
        return plans

    def _layer(self, name: str, binding: relax.VarBinding, fn: FunctionBindings, claimed: set):
        call = binding.value
        out_shape = static_shape(binding.var.ty)
        data_shape = static_shape(call.args[0].ty)
        if out_shape is None or data_shape is None:
            raise _Leave("shapes are not static")
        if _op(call) == "relax.nn.conv2d":
            weight = as_constant(call.args[1], fn.var2val)
            op = _conv_op(call, weight, data_shape, static_shape(call.args[1].ty))
            strides = tuple(int(s) for s in call.attrs.strides)
            padding = tuple(int(p) for p in call.attrs.padding)
        else:
            if len(data_shape) != 2:
                raise _Leave(f"input has rank {len(data_shape)}, not 2 (batch, features)")
            if data_shape[0] > MAX_BATCH:
                raise _Leave(f"batch {data_shape[0]} > {MAX_BATCH}: the kernel is a GEMV for small batches")
            dtypes = (str(call.args[0].ty.dtype), str(call.args[1].ty.dtype), str(call.ty.dtype))
            if any(d != "float32" for d in dtypes):
                raise _Leave(f"dtype (data, weight, out) = {dtypes}, only float32")
            weight = _dense_weight(call, fn).astype(np.float32)
            if weight.shape[1] != data_shape[1]:
                raise _Leave(f"weight {weight.shape} does not take {data_shape[1]} features")
            op, strides, padding = "dense", (1, 1), (0, 0, 0, 0)
        if not self.kinds[op]:
            raise _Leave(f"{op} kernels are off")
        epi = match_activation_epilogue(binding.var, fn, out_shape, claimed, self.residual and op != "dense")
        if epi.scale is not None:
            weight = weight * epi.scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        activation = None if epi.bounds is None else ("clip", *epi.bounds)
        if epi.bounds == (0.0, float("inf")):
            activation = "relu"
        layer = DenseLayer(name, op, np.ascontiguousarray(weight, dtype=np.float32), data_shape, strides, padding,
                           epi.bias, activation, epi.residual is not None, out_shape, self._target())  # fmt: skip
        return layer, epi

    def _build(self, layer: DenseLayer, data: relax.Expr, residual, builder: relax.BlockBuilder):
        """The ``call_tir`` plan of one op and whether its kernel is Winograd."""
        try:
            kernel = self.provider.kernel(layer)
        except TvmPatternError as err:  # a shape the generator refuses
            raise _Leave(f"the generated kernel cannot run it: {err}") from err
        func = kernel.func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE)
        gvar = builder.add_func(func, "winograd_conv2d" if kernel.winograd else f"dense_{layer.op}")
        inputs = (data,) if residual is None else (data, residual)
        return KernelCall(inputs, gvar, tuple(kernel.arrays), layer.out_shape), kernel.winograd

    def _target(self) -> Target | None:
        return self.target if self.target is not None else Target.current(allow_none=True)
