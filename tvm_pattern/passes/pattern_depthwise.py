"""``PatternDepthwiseConv2d``: the Relax pass that runs pattern-sparse depthwise convs through the pattern kernel.

Every ``relax.nn.conv2d`` with ``groups = C = O`` and a constant (C, 1, KH, KW) weight is read off its zeros:
each channel's support is its pattern, the library the distinct supports (``sparsity.depthwise``; nothing from
the pruner is needed). When every channel keeps at most ``max_taps`` taps and the sparse kernel is modelled to
pay against the dense depthwise kernel (``schedules.pattern_depthwise.pays``), the conv and its epilogue
(``epilogue.match_activation_epilogue``: inference batch_norm folded into the weights, bias, residual add,
ReLU / ReLU6 / clip) become one ``call_tir`` of the generated kernel, ``op_pattern`` OPAQUE. Run it before
``DenseKernels``, which takes the depthwise convs left. ``summary`` holds a ``DepthwiseReport`` per depthwise conv,
with the reason for any left dense; ``strict`` refuses a pruned-looking one the kernel cannot take.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir import IRModule
from tvm.target import Target

from ..errors import PatternError, TvmPatternError
from ..schedules import pattern_depthwise as schedule
from ..sparsity.depthwise import DepthwisePatterns, pack_depthwise
from ..targets import resolve_target
from .epilogue import OPAQUE, FunctionBindings, as_constant, match_activation_epilogue, static_shape
from .rewrite import KernelCall, rewrite_functions

__all__ = ["MAX_TAPS", "DepthwiseReport", "PatternDepthwiseConv2d"]

log = logging.getLogger(__name__)

tvm_ffi.register_error(PatternError)

MAX_TAPS = 4  # PatDNN's patterns keep 4 of 9 taps; more taps per channel rarely pay (see schedules.pays)


@dataclass(frozen=True)
class DepthwiseReport:
    """What the pass did with one depthwise conv2d."""

    name: str
    weight_shape: tuple[int, ...]
    rewritten: bool
    reason: str = ""
    epilogue: tuple[str, ...] = ()
    patterns: int = 0
    empty_channels: int = 0
    taps: int = 0  # kept taps, all channels

    def __str__(self) -> str:
        shape = "x".join(map(str, self.weight_shape)) or "?"
        if not self.rewritten:
            return f"{self.name} [{shape}]: depthwise, not pattern-sparse ({self.reason})"
        fused = "".join(f" +{e}" for e in self.epilogue)
        total = int(np.prod(self.weight_shape)) if self.weight_shape else 0
        return (f"{self.name} [{shape}]: pattern-sparse depthwise, {self.taps}/{total} taps kept, {self.patterns} "
                f"patterns, {self.empty_channels} empty channels{fused}")  # fmt: skip


class _Dense(Exception):
    """The conv stays dense; ``conforming`` False: strict mode refuses it."""

    def __init__(self, reason: str, conforming: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.conforming = conforming


def _is_depthwise(call: relax.Call) -> bool:
    data, weight = static_shape(call.args[0].ty), static_shape(call.args[1].ty)
    groups = int(call.attrs.groups)
    return (data is not None and weight is not None and len(data) == 4 and len(weight) == 4 and groups > 1
            and groups == data[1] == weight[0] and weight[1] == 1)  # fmt: skip


def _check_supported(call: relax.Call, weight: np.ndarray | None) -> None:
    attrs = call.attrs
    if weight is None:
        raise _Dense("weight is not a constant (bind the parameters, e.g. relax.transform.BindParams)", False)
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout or attrs.data_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        raise _Dense(f"layout {'/'.join(layouts)} is not NCHW/OIHW/NCHW", False)
    dtypes = (str(call.args[0].ty.dtype), str(weight.dtype), str(attrs.out_dtype or call.args[0].ty.dtype))
    if any(d != "float32" for d in dtypes):
        raise _Dense(f"dtype (data, weight, out) = {dtypes}, only float32", False)
    if tuple(int(d) for d in attrs.dilation) != (1, 1):
        raise _Dense(f"dilation {tuple(int(d) for d in attrs.dilation)} is not 1", False)


def _pack(weight: np.ndarray, max_taps: int) -> DepthwisePatterns:
    """The weight grouped by pattern; ``_Dense`` if unpruned (conforming) or if a channel keeps too many taps."""
    kh, kw = weight.shape[2:]
    taps = (weight != 0).reshape(len(weight), -1).sum(axis=1)
    if not (taps < kh * kw).any():
        raise _Dense("dense: every channel keeps all its taps")
    over = np.nonzero(taps > max_taps)[0]
    if len(over):
        raise _Dense(f"channel {int(over[0])} keeps {int(taps[over[0]])} taps > {max_taps} ({len(over)} channels "
                     f"do)", False)  # fmt: skip
    packed = pack_depthwise(weight)
    ok, why = schedule.pays(packed)
    if not ok:
        raise _Dense(f"the sparse kernel would not pay: {why}")
    return packed


@tvm.transform.module_pass(opt_level=0, name="PatternDepthwiseConv2d")
class PatternDepthwiseConv2d:
    """Rewrite pattern-sparse depthwise conv2d (+ epilogue) into ``call_tir`` of the pattern depthwise kernel.

    ``strict``: raise ``PatternError`` for a depthwise conv that looks pruned (or cannot be read) but cannot run
    sparse (non-constant weight, layout, dtype, dilation, a channel keeping more than ``max_taps`` taps) instead
    of leaving it; unpruned convs are never an error. ``max_taps``: the most taps a channel may keep.
    ``residual``: absorb a residual add. ``target``: the kernels' target (default: the current one).
    After a run, ``summary`` lists a ``DepthwiseReport`` per depthwise conv2d.
    """

    def __init__(self, strict: bool = False, target: Target | str | None = None, max_taps: int = MAX_TAPS,
                 residual: bool = True) -> None:  # fmt: skip
        if max_taps < 1:
            raise TvmPatternError(f"max_taps must be at least 1, got {max_taps}")
        self.strict = strict
        self.max_taps = max_taps
        self.residual = residual
        self.target = target if target is None or isinstance(target, Target) else resolve_target(target)
        self.summary: list[DepthwiseReport] = []

    @property
    def rewritten(self) -> list[DepthwiseReport]:
        return [r for r in self.summary if r.rewritten]

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        self.summary = []
        return rewrite_functions(mod, self._plan_function)

    def _plan_function(self, fname: str, func: relax.Function, builder: relax.BlockBuilder) -> dict:
        fn = FunctionBindings(func)
        plans: dict[relax.Var, KernelCall] = {}
        claimed: set[relax.Var] = set()
        for binding in fn.bindings:
            call = binding.value
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name == "relax.nn.conv2d" and _is_depthwise(call)) or binding.var in claimed:
                continue
            name = f"conv2d '{binding.var.name}' in {fname}"
            shape = static_shape(call.args[1].ty) or ()
            try:
                plan, epi, report = self._plan(name, binding, fn, claimed, builder)
            except _Dense as dense:
                self.summary.append(self._leave(name, shape, dense))
                continue
            claimed.update(epi.absorbed)
            plans[epi.tail] = plan
            log.info("%s", report)
            self.summary.append(report)
        return plans

    def _plan(self, name, binding, fn, claimed, builder):
        call = binding.value
        weight = as_constant(call.args[1], fn.var2val)
        _check_supported(call, weight)
        out_shape = static_shape(binding.var.ty)
        if out_shape is None:
            raise _Dense("output shape is not static", False)
        epi = match_activation_epilogue(binding.var, fn, out_shape, claimed, self.residual)
        weight = weight.astype(np.float32)
        if epi.scale is not None:  # scaling channels keeps every zero: the patterns are unchanged
            weight = (weight * epi.scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        packed = _pack(weight, self.max_taps)
        target = self._target()
        if target is not None and target.kind.name != "llvm":  # not a strict-mode error: the op still runs
            raise _Dense(f"no pattern depthwise kernel for {target.kind.name} targets yet (the dense path runs it)")
        activation = None if epi.bounds is None else ("clip", *epi.bounds)
        try:
            strides = tuple(int(s) for s in call.attrs.strides)
            padding = tuple(int(p) for p in call.attrs.padding)
            kernel = schedule.depthwise(packed, static_shape(call.args[0].ty), strides, padding, epi.bias, activation,
                                        epi.residual is not None, self._target())  # fmt: skip
        except TvmPatternError as err:
            raise _Dense(f"the sparse kernel cannot run it: {err}", False) from err
        if tuple(kernel.out_shape) != tuple(out_shape):
            raise _Dense(f"kernel output shape {kernel.out_shape} != conv2d's {out_shape}", False)
        func = kernel.func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE)
        gvar = builder.add_func(func, "pattern_depthwise")
        inputs = (call.args[0],) if epi.residual is None else (call.args[0], epi.residual)
        empty = int(packed.counts()[-1])
        report = DepthwiseReport(name, tuple(weight.shape), True, "", epi.names, packed.k, empty, packed.nnz)
        return KernelCall(inputs, gvar, tuple(kernel.arrays), out_shape), epi, report

    def _leave(self, name: str, shape: tuple[int, ...], dense: _Dense) -> DepthwiseReport:
        if self.strict and not dense.conforming:
            raise PatternError(f"{name}: {dense.reason}")
        report = DepthwiseReport(name, shape, False, dense.reason)
        (log.info if dense.conforming else log.warning)("%s", report)
        return report

    def _target(self) -> Target | None:
        return self.target if self.target is not None else Target.current(allow_none=True)
