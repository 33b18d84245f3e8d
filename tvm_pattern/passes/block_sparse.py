"""``BlockSparseDense``: the Relax pass that runs sparse 1x1 convs and linear layers through block-sparse kernels.

Every ``relax.nn.conv2d`` with a constant (O, C, 1, 1) weight (``groups=1``, NCHW / OIHW, float32, any stride and
padding) and every dense layer (``relax.matmul`` of a ``(B, I)`` input, ``B <= MAX_BATCH``, by a constant
``(I, O)`` weight or ``permute_dims`` of a constant ``(O, I)`` one, as the ONNX importer emits) is packed
from its zeros (``sparsity.blocks.pack``: the block height ``G`` of least modelled cost is detected, the pruner is
not trusted); when the stored density (padding zeros included) is at most ``max_density`` it becomes a
``call_tir`` of ``schedules.block_sparse``'s kernel, with the epilogue that follows absorbed
(``epilogue.match_activation_epilogue``: batch_norm folded into the weights, bias, residual add for convs,
ReLU / ReLU6 / clip); OpenCL (Mali) targets get the kernels' simple GPU variants. Denser layers are left for
``DenseKernels``; run this pass before it. Kernels are ``op_pattern`` OPAQUE. ``summary`` holds a
``BlockSparseReport`` per candidate op; ``strict`` refuses a sparse-looking candidate the kernels cannot run,
like ``PatternSparseConv2d``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.target import Target

from ..errors import PatternError, TvmPatternError
from ..schedules import block_sparse
from ..sparsity.blocks import GROUPS, BlockSparse, pack
from ..targets import resolve_target
from .epilogue import OPAQUE, FunctionBindings, as_constant, match_activation_epilogue, static_shape
from .rewrite import KernelCall, rewrite_functions

__all__ = ["MAX_BATCH", "BlockSparseDense", "BlockSparseReport"]

log = logging.getLogger(__name__)

MAX_BATCH = 8  # the linear kernel keeps U x B accumulator vectors in registers


@dataclass(frozen=True)
class BlockSparseReport:
    """What the pass did with one 1x1 conv or dense layer."""

    name: str
    op: str  # "conv1x1" or "linear"
    weight_shape: tuple[int, ...]
    rewritten: bool
    reason: str = ""
    epilogue: tuple[str, ...] = ()
    group: int = 0  # the detected block height G
    density: float = 1.0  # stored weights (padding zeros included) / dense weights

    def __str__(self) -> str:
        shape = "x".join(map(str, self.weight_shape)) or "?"
        if not self.rewritten:
            return f"{self.name} [{shape}]: dense ({self.reason})"
        fused = "".join(f" +{e}" for e in self.epilogue)
        return f"{self.name} [{shape}]: block-sparse, blocks of {self.group} rows, density {self.density:.3f}{fused}"


class _Dense(Exception):
    """The op stays dense; ``conforming`` is False when strict mode must refuse it."""

    def __init__(self, reason: str, conforming: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.conforming = conforming


def _op(expr: relax.Expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def _candidate(call: relax.Call) -> str | None:
    """"conv1x1" / "linear" for the ops this pass looks at, None for the others (never reported)."""
    if _op(call) == "relax.matmul":
        return "linear"
    if _op(call) != "relax.nn.conv2d":
        return None
    shape = static_shape(call.args[1].ty)
    layout = str(call.attrs.kernel_layout)
    if shape is None or len(shape) != 4 or int(call.attrs.groups) != 1 or "H" not in layout or "W" not in layout:
        return None
    return "conv1x1" if (shape[layout.index("H")], shape[layout.index("W")]) == (1, 1) else None


def _constant_weight(op: str, call: relax.Call, fn: FunctionBindings) -> np.ndarray:
    """The weight as an (O, I) matrix: a 1x1 conv's constant, or the (O, I) of ``matmul(x, W)`` for a constant
    (I, O) ``W`` or ``permute_dims`` of a constant (O, I) one (the ONNX importer's Gemm / MatMul)."""
    if op == "conv1x1":
        weight = as_constant(call.args[1], fn.var2val)
        if weight is None:
            raise _Dense("weight is not a constant (bind the parameters, e.g. relax.transform.BindParams)", False)
        return weight.reshape(weight.shape[0], -1)
    rhs = call.args[1]
    value = as_constant(rhs, fn.var2val)
    if value is not None and value.ndim == 2:
        return np.ascontiguousarray(value.T)
    while isinstance(rhs, relax.Var) and rhs in fn.var2val:
        rhs = fn.var2val[rhs]
    if _op(rhs) == "relax.permute_dims":
        axes = rhs.attrs.axes
        inner = as_constant(rhs.args[0], fn.var2val)
        if inner is not None and inner.ndim == 2 and (axes is None or [int(a) for a in axes] == [1, 0]):
            return np.ascontiguousarray(inner)
    raise _Dense("not a dense layer: the weight is not a constant (or a transposed constant)")


def _check_supported(op: str, call: relax.Call, weight: np.ndarray, data_shape: tuple[int, ...]) -> None:
    """Raise ``_Dense(conforming=False)`` for a sparse candidate the kernels cannot run."""
    data_dtype = str(call.args[0].ty.dtype)
    out_dtype = str(call.attrs.out_dtype or data_dtype) if op == "conv1x1" else str(call.ty.dtype)
    dtypes = (data_dtype, str(weight.dtype), out_dtype)
    if any(d != "float32" for d in dtypes):
        raise _Dense(f"dtype (data, weight, out) = {dtypes}, only float32", False)
    if op == "conv1x1":
        attrs = call.attrs
        layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout or attrs.data_layout))
        if layouts != ("NCHW", "OIHW", "NCHW"):
            raise _Dense(f"layout {'/'.join(layouts)} is not NCHW/OIHW/NCHW", False)
        return  # a 1x1 kernel reads no neighbours: dilation changes nothing
    if len(data_shape) != 2:
        raise _Dense(f"input has rank {len(data_shape)}, not 2 (batch, features)", False)
    if weight.shape[1] != data_shape[1]:
        raise _Dense(f"weight {weight.shape} does not take {data_shape[1]} features", False)
    if data_shape[0] > MAX_BATCH:
        raise _Dense(f"batch {data_shape[0]} > {MAX_BATCH}: the kernel is for small batches", False)


@tvm.transform.module_pass(opt_level=0, name="BlockSparseDense")
class BlockSparseDense:
    """Rewrite block-sparse 1x1 conv2d / dense layers (+ epilogue) into ``call_tir`` of block-sparse kernels.

    ``target``: the kernels' target (default: the current one): llvm CPUs, or OpenCL (Mali) for the simple GPU
    variants. ``max_density``: the
    densest packed weight (padding zeros included) still worth the sparse kernel. ``groups``: candidate block
    heights. ``convs`` / ``linear``: which op kinds to rewrite; ``residual``: absorb residual adds. ``strict``:
    raise ``PatternError`` for a candidate whose weight is sparse enough but cannot run (layout, dtype, batch,
    non-constant weight, target) instead of leaving it dense. After a run, ``summary`` lists a
    ``BlockSparseReport`` per 1x1 conv and dense layer.
    """

    def __init__(self, target: Target | str | None = None, max_density: float = block_sparse.MAX_DENSITY,
                 groups: Sequence[int] = GROUPS, convs: bool = True, linear: bool = True, residual: bool = True,
                 strict: bool = False) -> None:
        self.target = target if target is None or isinstance(target, Target) else resolve_target(target)
        if not 0 <= float(max_density) <= 1:
            raise TvmPatternError(f"max_density must be in [0, 1], got {max_density}")
        self.max_density = float(max_density)
        self.groups = tuple(int(g) for g in groups)
        self.kinds = {"conv1x1": convs, "linear": linear}
        self.residual = residual
        self.strict = strict
        self.summary: list[BlockSparseReport] = []

    @property
    def rewritten(self) -> list[BlockSparseReport]:
        return [r for r in self.summary if r.rewritten]

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        self.summary = []
        return rewrite_functions(mod, self._plan_function)

    def _plan_function(self, fname: str, func: relax.Function, builder: relax.BlockBuilder) -> dict:
        fn = FunctionBindings(func)
        plans: dict[relax.Var, KernelCall] = {}
        claimed: set[relax.Var] = set()
        for binding in fn.bindings:
            op = _candidate(binding.value) if binding.var not in claimed else None
            if op is None or not self.kinds[op]:
                continue
            name = f"{'conv2d' if op == 'conv1x1' else 'dense'} '{binding.var.name}' in {fname}"
            weight_shape = static_shape(binding.value.args[1].ty) or ()
            try:
                report, epi, plan = self._plan(name, op, binding, fn, claimed, builder)
            except _Dense as dense:
                self.summary.append(self._leave(name, op, weight_shape, dense))
                continue
            claimed.update(epi.absorbed)
            plans[epi.tail] = plan
            log.info("%s", report)
            self.summary.append(report)
        return plans

    def _plan(self, name, op, binding, fn, claimed, builder):
        call = binding.value
        out_shape, data_shape = static_shape(binding.var.ty), static_shape(call.args[0].ty)
        if out_shape is None or data_shape is None:
            raise _Dense("shapes are not static", False)
        weight = _constant_weight(op, call, fn)
        packed = pack(weight, groups=self.groups)
        if packed.density > self.max_density:
            raise _Dense(f"dense: density {packed.density:.3f} (blocks of {packed.group}) > {self.max_density}")
        _check_supported(op, call, weight, data_shape)
        target = self._target()
        if target is not None and target.kind.name not in ("llvm", "opencl"):
            raise _Dense(f"no block-sparse kernel for {target.kind.name} targets", False)
        weight = weight.astype(np.float32)
        epi = match_activation_epilogue(binding.var, fn, out_shape, claimed, self.residual and op == "conv1x1")
        if epi.scale is not None:  # a per-row scale keeps every zero: the blocks are unchanged
            packed = pack(weight * epi.scale[:, None], packed.group)
        kernel = self._kernel(op, packed, call, data_shape, epi, target)
        if tuple(kernel.out_shape) != tuple(out_shape):
            raise _Dense(f"kernel output shape {kernel.out_shape} != {out_shape}", False)
        func = kernel.func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE)
        gvar = builder.add_func(func, f"block_sparse_{op}")
        inputs = (call.args[0],) if epi.residual is None else (call.args[0], epi.residual)
        plan = KernelCall(inputs, gvar, tuple(kernel.arrays), out_shape)
        report = BlockSparseReport(name, op, tuple(int(d) for d in call.args[1].ty.shape), True, "", epi.names,
                                   packed.group, packed.density)  # fmt: skip
        return report, epi, plan

    def _kernel(self, op: str, packed: BlockSparse, call: relax.Call, data_shape, epi, target):
        activation = None if epi.bounds is None else ("clip", *epi.bounds)
        gpu = target is not None and target.kind.name == "opencl"
        try:
            if op == "linear":
                if gpu:
                    return block_sparse.gpu_linear(packed, data_shape[0], epi.bias, activation)
                return block_sparse.linear(packed, data_shape[0], epi.bias, activation, target)
            strides = tuple(int(s) for s in call.attrs.strides)
            padding = tuple(int(p) for p in call.attrs.padding)
            if gpu:
                return block_sparse.gpu_conv2d(packed, data_shape, strides, padding, epi.bias, activation,
                                               epi.residual is not None)  # fmt: skip
            return block_sparse.conv2d(packed, data_shape, strides, padding, epi.bias, activation,
                                       epi.residual is not None, target)  # fmt: skip
        except TvmPatternError as err:
            raise _Dense(f"the block-sparse kernel cannot run it: {err}", False) from err

    def _leave(self, name: str, op: str, weight_shape: tuple[int, ...], dense: _Dense) -> BlockSparseReport:
        if self.strict and not dense.conforming:
            raise PatternError(f"{name}: {dense.reason}")
        report = BlockSparseReport(name, op, weight_shape, False, dense.reason)
        (log.info if dense.conforming else log.warning)("%s", report)
        return report

    def _target(self) -> Target | None:
        return self.target if self.target is not None else Target.current(allow_none=True)
