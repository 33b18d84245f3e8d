"""Relax dataflow helpers the Relax passes share: DPL patterns of the per-channel epilogue that follows a
conv (inference batch_norm, bias add, ReLU), its matching, and binding lookups.

``match_epilogue`` follows a conv's sole users; the ops it absorbs become the kernel's epilogue (batch_norm
folded into the weights as a scale and a bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

__all__ = ["BATCH_NORM", "BIAS", "BIAS_ADD", "BIAS_CONST", "CONV2D", "OPAQUE", "RELU", "Epilogue",
           "FunctionBindings", "as_constant", "match_epilogue", "static_shape"]  # fmt: skip

OPAQUE = 8  # relay/relax OpPatternKind kOpaque: FuseOps must not merge more ops into a generated kernel

# DPL patterns of the epilogue that follows a conv (the conv's own var stands for the wildcard).
BIAS_CONST = is_const()
BIAS = BIAS_CONST | is_op("relax.reshape")(BIAS_CONST, wildcard())
BIAS_ADD = is_op("relax.add")(wildcard(), BIAS) | is_op("relax.add")(BIAS, wildcard())
RELU = is_op("relax.nn.relu")(wildcard())
CONV2D = is_op("relax.nn.conv2d")(wildcard(), wildcard())
BATCH_NORM = is_op("relax.nn.batch_norm")(wildcard(), is_const(), is_const(), is_const(), is_const())



def static_shape(ty: relax.TensorType) -> tuple[int, ...] | None:
    shape = getattr(ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def as_constant(expr: relax.Expr, var2val: dict) -> np.ndarray | None:
    """The value of ``expr`` if it is a constant or a var bound to one."""
    while isinstance(expr, relax.Var) and expr in var2val:
        expr = var2val[expr]
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


class FunctionBindings:
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


def _per_channel_bias(add: relax.Call, tail: relax.Var, fn: FunctionBindings,
                      out_shape: tuple[int, ...]) -> np.ndarray | None:
    """The (O,) bias of ``add(tail, b)`` if ``b`` is a float32 constant broadcast along channels only."""
    other = add.args[1] if add.args[0].same_as(tail) else add.args[0]
    shape = static_shape(other.ty)
    if shape is None or str(other.ty.dtype) != "float32" or static_shape(add.ty) != out_shape:
        return None
    channels = out_shape[1]
    aligned = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None
    if aligned is None or aligned[1] != channels or any(d != 1 for i, d in enumerate(aligned) if i != 1):
        return None
    matched = BIAS.extract_matched_expr(other, fn.var2val)  # a constant, or reshape(constant)
    value = None if matched is None else matched[BIAS_CONST].value.numpy()
    if value is None or value.size != channels:
        return None
    return value.reshape(channels).astype(np.float32)


@dataclass
class Epilogue:
    """Per-channel ops after a conv that the sparse kernel absorbs: ``relu(conv * scale + bias)``."""

    tail: relax.Var  # the last var of the chain: its binding becomes the call_tir
    scale: np.ndarray | None = None  # (O,), folded into the weights (inference BatchNorm)
    bias: np.ndarray | None = None  # (O,)
    relu: bool = False
    names: tuple[str, ...] = ()


def _fold_batch_norm(epi: Epilogue, fn: FunctionBindings, channels: int) -> None:
    """Absorb ``batch_norm(tail)[0]`` (inference) as a scale and a bias, as torch.export emits it."""
    user = fn.sole_user(epi.tail)
    if user is None or not BATCH_NORM.match(user.value, fn.var2val):
        return
    attrs = user.value.attrs
    item = fn.sole_item_user(user.var, 0)
    if int(attrs.axis) not in (1, -3) or bool(attrs.training) or item is None:
        return
    stats = [as_constant(arg, fn.var2val) for arg in user.value.args[1:]]
    if any(v is None or v.size != channels for v in stats):
        return
    gamma, beta, mean, var = (v.reshape(channels).astype(np.float64) for v in stats)
    scale = (gamma if attrs.scale else 1.0) / np.sqrt(var + float(attrs.epsilon))
    shift = (beta if attrs.center else 0.0) - mean * scale
    epi.tail, epi.scale, epi.bias = item.var, scale.astype(np.float32), shift.astype(np.float32)
    epi.names += ("batch_norm",)


def match_epilogue(conv_var: relax.Var, fn: FunctionBindings, out_shape: tuple[int, ...]) -> Epilogue:
    """Follow the conv's sole users through optional batch_norm, bias add and ReLU, in that order.

    An op whose input has other users ends the chain: fusing it would keep the dense conv alive for them.
    """
    epi = Epilogue(conv_var)
    _fold_batch_norm(epi, fn, out_shape[1])
    user = fn.sole_user(epi.tail)
    if user is not None and BIAS_ADD.match(user.value, fn.var2val):
        bias = _per_channel_bias(user.value, epi.tail, fn, out_shape)
        if bias is not None:
            epi.bias = bias if epi.bias is None else epi.bias + bias
            epi.tail, epi.names, user = user.var, (*epi.names, "bias"), fn.sole_user(user.var)
    if user is not None and RELU.match(user.value, fn.var2val) and user.value.args[0].same_as(epi.tail):
        epi.tail, epi.relu, epi.names = user.var, True, (*epi.names, "relu")
    return epi
