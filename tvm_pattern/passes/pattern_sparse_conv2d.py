"""``PatternSparseConv2d``: the Relax pass that swaps pattern-sparse 3x3 convs for the sparse kernel.

Every ``relax.nn.conv2d`` with a constant 3x3 weight whose kernels fit the pattern library becomes a
``call_tir`` of a pattern-sparse PrimFunc, which the pass's ``KernelProvider`` gives (default: the
templates' default kernels; tuning supplies a database-backed one). The per-channel ops that follow
it (an inference batch_norm, as torch.export emits, folded into the weights; a bias add, as ONNX and
torch.export emit; a ReLU), matched with ``tvm.relax.dpl``, become the kernel's epilogue, and a 2x2 / stride-2
max-pool after them too where the provider's kernel stores it (``ProvidedKernel.pooled``: x86, where it pays).
Every other conv stays dense and the reason is logged, so a user can see why a layer did not speed up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir import IRModule
from tvm.target import Target

from ..errors import PatternError
from ..kernels.pattern_conv2d import pooled_shape
from ..sparsity.format import PackedConv, pack
from ..sparsity.library import KERNEL, PatternLibrary
from ..targets import resolve_target
from .epilogue import CONV2D, OPAQUE, FunctionBindings, as_constant, match_epilogue, match_max_pool, static_shape
from .provider import ConvLayer, DefaultKernels, KernelProvider, ProvidedKernel
from .rewrite import KernelCall, rewrite_functions

__all__ = ["ConvReport", "PatternSparseConv2d"]

log = logging.getLogger(__name__)

# Errors raised inside a pass cross the FFI (Pass.__call__); registered, they come back as themselves.
tvm_ffi.register_error(PatternError)

DENSE_LIBRARY = PatternLibrary(np.ones((1, KERNEL, KERNEL), dtype=bool))  # an unpruned 3x3 conv as one pattern

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
    winograd: bool = False  # run as Winograd F(4x4, 3x3), dense or connectivity-sparse: faster for this layer

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
        how = ", run as Winograd F(4x4, 3x3) (faster for this layer)" if self.winograd else ""
        return (
            f"{self.name} [{shape}]: pattern-sparse, {self.kept_kernels}/{total} kernels kept, "
            f"{self.patterns} patterns{how}{fused}"
        )


class _Dense(Exception):
    """A conv stays dense; ``conforming`` is False when strict mode must refuse it."""

    def __init__(self, reason: str, conforming: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.conforming = conforming


def _load_library(library: PatternLibrary | str | os.PathLike | None) -> PatternLibrary | None:
    if library is None or isinstance(library, PatternLibrary):
        return library
    return PatternLibrary.load(library)


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
    if static_shape(call.args[0].ty) is None:
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
    (default: the current one). ``config``: knobs overriding the schedule's defaults for every conv (of the
    default provider).
    ``dense_kernel``: also run unpruned 3x3 convs through the generated kernel as one 9-tap pattern, a
    register-blocked direct conv, since TVM's stock CPU pipeline leaves a dense conv unscheduled.
    ``provider``: where kernels come from (a ``KernelProvider``; default ``DefaultKernels(config)``), e.g.
    ``tvm_pattern.tune.DatabaseKernels`` for the best schedules of a tuning database.
    After a run, ``summary`` lists a ``ConvReport`` per conv2d.
    """

    def __init__(
        self,
        library: PatternLibrary | str | os.PathLike | None = None,
        strict: bool = False,
        target: Target | str | None = None,
        config: Mapping | None = None,
        dense_kernel: bool = False,
        provider: KernelProvider | None = None,
    ) -> None:
        self.library = _load_library(library)
        self.strict = strict
        self.dense_kernel = dense_kernel
        self.target = target if target is None or isinstance(target, Target) else resolve_target(target)
        self.provider = provider if provider is not None else DefaultKernels(config)
        self.summary: list[ConvReport] = []

    @property
    def rewritten(self) -> list[ConvReport]:
        """Convs replaced by the generated kernel (pattern-sparse, or dense ones if ``dense_kernel``)."""
        return [r for r in self.summary if r.rewritten]

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        self.summary = []
        return rewrite_functions(mod, self._plan_function)

    def _plan_function(self, fname: str, func: relax.Function, builder: relax.BlockBuilder) -> dict:
        fn = FunctionBindings(func)
        plans: dict[relax.Var, KernelCall] = {}
        for binding in fn.bindings:
            if not CONV2D.match(binding.value):
                continue
            name = f"conv2d '{binding.var.name}' in {fname}"
            report, plan = self._plan_conv(name, binding, fn, builder)
            self.summary.append(report)
            if plan is not None:
                plans[plan[0]] = plan[1]
        return plans

    def _plan_conv(self, name: str, binding: relax.VarBinding, fn: FunctionBindings, builder: relax.BlockBuilder):
        call = binding.value
        weight = as_constant(call.args[1], fn.var2val)
        weight_shape = static_shape(call.args[1].ty)
        out_shape = static_shape(binding.var.ty)
        try:
            _check_candidate(call, weight_shape)
            _check_supported(call, weight)
            epi = match_epilogue(binding.var, fn, out_shape)
            if epi.scale is not None:  # scaling filters keeps every zero: the patterns are unchanged
                weight = (weight * epi.scale[:, None, None, None]).astype(np.float32)
            packed, dense_kernel = _pack(weight, self.library, self.dense_kernel)
            pool = match_max_pool(epi.tail, fn, out_shape)
            plan, kernel = self._build(name, call, packed, epi.bias, epi.relu, out_shape, builder, pool is not None)
        except _Dense as dense:
            return self._leave_dense(name, weight_shape or (), dense), None
        names, tail = epi.names, epi.tail
        if kernel.pooled:  # the kernel stores the pool's result: the pool's binding becomes the call
            names, tail = (*names, "max_pool"), pool.var
        report = ConvReport(name, weight_shape, True, "", names, packed.nnz, packed.k, dense_kernel, kernel.tuned,
                            kernel.winograd)  # fmt: skip
        log.info("%s", report)
        return report, (tail, plan)

    def _leave_dense(self, name: str, weight_shape: tuple[int, ...], dense: _Dense) -> ConvReport:
        if self.strict and not dense.conforming:
            raise PatternError(f"{name}: {dense.reason}")
        report = ConvReport(name, weight_shape, False, dense.reason)
        (log.info if dense.conforming else log.warning)("%s", report)
        return report

    def _build(self, name, call, packed, bias, relu, out_shape, builder,
               pool: bool = False) -> tuple[KernelCall, ProvidedKernel]:
        """The ``call_tir`` plan of one conv and the kernel the provider gave (``pool``: a max-pool follows,
        which the kernel may store instead; then the plan's output is the pooled map)."""
        attrs = call.attrs
        layer = ConvLayer(name, packed, static_shape(call.args[0].ty), tuple(int(s) for s in attrs.strides),
                          tuple(int(p) for p in attrs.padding), bias, relu, out_shape, self._target(),
                          pool)  # fmt: skip
        try:
            kernel = self.provider.kernel(layer)
        except PatternError as err:  # a shape the kernel generator refuses
            raise _Dense(f"the sparse kernel cannot run it: {err}", False) from err
        func = kernel.func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE)
        gvar = builder.add_func(func, "winograd_conv2d" if kernel.winograd else "pattern_conv2d")
        shape = pooled_shape(out_shape) if kernel.pooled else out_shape
        return KernelCall((call.args[0],), gvar, tuple(kernel.arrays), shape), kernel

    def _target(self) -> Target | None:
        return self.target if self.target is not None else Target.current(allow_none=True)
