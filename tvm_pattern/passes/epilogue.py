"""Relax dataflow helpers the Relax passes share: DPL patterns of the per-channel epilogue that follows a
conv (inference batch_norm, bias add, ReLU), its matching, and binding lookups.

``match_epilogue`` follows a conv's sole users; the ops it absorbs become the kernel's epilogue (batch_norm
folded into the weights as a scale and a bias). ``match_max_pool`` finds a 2x2 / stride-2 max-pool after that
chain, which a kernel may store instead of the full-size map. ``match_activation_epilogue`` (the dense
kernels') also takes a residual add and clip / ReLU6 activations, as the ONNX importer emits them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

__all__ = ["BATCH_NORM", "BIAS", "BIAS_ADD", "BIAS_CONST", "CONV2D", "MAX_POOL", "OPAQUE", "RELU", "Epilogue",
           "FunctionBindings", "as_constant", "as_scalar", "match_activation_epilogue", "match_epilogue",
           "match_max_pool", "static_shape"]  # fmt: skip

OPAQUE = 8  # relay/relax OpPatternKind kOpaque: FuseOps must not merge more ops into a generated kernel

# DPL patterns of the epilogue that follows a conv (the conv's own var stands for the wildcard).
BIAS_CONST = is_const()
BIAS = BIAS_CONST | is_op("relax.reshape")(BIAS_CONST, wildcard())
BIAS_ADD = is_op("relax.add")(wildcard(), BIAS) | is_op("relax.add")(BIAS, wildcard())
RELU = is_op("relax.nn.relu")(wildcard())
CONV2D = is_op("relax.nn.conv2d")(wildcard(), wildcard())
BATCH_NORM = is_op("relax.nn.batch_norm")(wildcard(), is_const(), is_const(), is_const(), is_const())
MAX_POOL = is_op("relax.nn.max_pool2d")(wildcard())



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
    rank = len(out_shape)  # NCHW convs (4), (batch, features) dense layers (2): channels on axis 1
    aligned = (1,) * (rank - len(shape)) + shape if len(shape) <= rank else None
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
    residual: relax.Expr | None = None  # a tensor of the output's shape added before the activation
    bounds: tuple[float, float] | None = None  # the activation as clip bounds (ReLU: (0, inf)); None: identity
    absorbed: tuple[relax.Var, ...] = ()  # vars of the absorbed bindings (match_activation_epilogue)


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


def match_max_pool(tail: relax.Var, fn: FunctionBindings, out_shape: tuple[int, ...]) -> relax.VarBinding | None:
    """The binding of a 2x2 / stride-2, unpadded, floor-mode NCHW max-pool that is ``tail``'s sole user, if
    ``out_shape`` (``tail``'s NCHW shape) has an even height and width; None otherwise."""
    user = fn.sole_user(tail)
    if user is None or len(out_shape) != 4 or out_shape[2] % 2 or out_shape[3] % 2:
        return None
    if not MAX_POOL.match(user.value, fn.var2val) or not user.value.args[0].same_as(tail):
        return None
    a = user.value.attrs
    ints = [tuple(int(v) for v in x) for x in (a.pool_size, a.strides, a.padding, a.dilation)]
    if ints != [(2, 2), (2, 2), (0, 0, 0, 0), (1, 1)] or bool(a.ceil_mode):
        return None
    if (str(a.layout), str(a.out_layout or a.layout)) != ("NCHW", "NCHW"):
        return None
    return user


_MINMAX_TIR = re.compile(r"^(maximum|minimum)\d*$")  # what the ONNX importer's Clip emits through call_te


def as_scalar(expr: relax.Expr, var2val: dict) -> float | None:
    """The float value of a one-element constant, or of ``where(isnan(c), a, b)`` on constants (the ONNX
    importer's Clip bounds), through var bindings; None if it is not one."""
    while isinstance(expr, relax.Var) and expr in var2val:
        expr = var2val[expr]
    if isinstance(expr, tvm.tirx.FloatImm | tvm.tirx.IntImm):  # relax.clip's bounds
        return float(expr.value)
    value = as_constant(expr, var2val)
    if value is not None:
        return float(value.reshape(-1)[0]) if value.size == 1 else None
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.where":
        cond = expr.args[0]
        while isinstance(cond, relax.Var) and cond in var2val:
            cond = var2val[cond]
        if isinstance(cond, relax.Call) and isinstance(cond.op, tvm.ir.Op) and cond.op.name == "relax.isnan":
            c = as_scalar(cond.args[0], var2val)
            flag = None if c is None else bool(np.isnan(c))
        else:
            c = as_constant(cond, var2val)
            flag = None if c is None or c.size != 1 else bool(c.reshape(-1)[0])
        if flag is not None:
            return as_scalar(expr.args[1] if flag else expr.args[2], var2val)
    return None


def _op_name(call: relax.Expr) -> str | None:
    return call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) else None


def _clip_bounds(call: relax.Expr, tail: relax.Var, fn: FunctionBindings) -> tuple[float, float] | None:
    """``call`` as clip bounds on ``tail``: relu, clip, maximum / minimum with a scalar (relax ops or the
    importer's ``call_tir`` of TOPI's maximum / minimum); None if it is none of them."""
    name = _op_name(call)
    inf = float("inf")
    if name == "relax.nn.relu" and call.args[0].same_as(tail):
        return (0.0, inf)
    if name == "relax.clip" and call.args[0].same_as(tail):
        lo, hi = as_scalar(call.args[1], fn.var2val), as_scalar(call.args[2], fn.var2val)
        return None if lo is None or hi is None else (lo, hi)
    args = None
    if name in ("relax.maximum", "relax.minimum"):
        args, kind = call.args, name.split(".")[-1]
    elif name == "relax.call_tir" and isinstance(call.args[0], relax.GlobalVar):
        match = _MINMAX_TIR.match(call.args[0].name_hint)
        if match and isinstance(call.args[1], relax.Tuple) and len(call.args[1].fields) == 2:
            args, kind = call.args[1].fields, match.group(1)
    if args is None or not args[0].same_as(tail) or static_shape(args[1].ty) not in ((), (1,)):
        return None
    value = as_scalar(args[1], fn.var2val)
    if value is None or np.isnan(value):
        return None
    return (value, inf) if kind == "maximum" else (-inf, value)


def _activation_name(bounds: tuple[float, float]) -> str:
    if bounds == (0.0, float("inf")):
        return "relu"
    if bounds == (0.0, 6.0):
        return "relu6"
    return f"clip({bounds[0]:g}, {bounds[1]:g})"


def match_activation_epilogue(var: relax.Var, fn: FunctionBindings, out_shape: tuple[int, ...],
                              claimed: set | frozenset = frozenset(), residual: bool = True) -> Epilogue:
    """Follow the sole users of ``var`` (a conv's or dense layer's output) through optional batch_norm, bias
    add, residual add (a second float32 tensor of the output's shape, as in ResNet blocks) and activations
    (ReLU, clip, maximum / minimum by constants, composed), in that order. ``claimed``: vars of bindings
    another kernel absorbs already (two convs meeting in one residual add: the first one planned takes it).
    The result's ``bounds`` is the activation, ``names`` what was absorbed, ``absorbed`` their vars.
    """
    epi = Epilogue(var)
    absorbed: list[relax.Var] = []

    def user_of(tail):
        user = fn.sole_user(tail)
        return None if user is None or user.var in claimed else user

    if len(out_shape) == 4:
        before = epi.tail
        _fold_batch_norm(epi, fn, out_shape[1])
        if epi.tail is not before:
            if epi.tail in claimed:
                epi = Epilogue(var)
            else:
                absorbed.append(epi.tail)
    user = user_of(epi.tail)
    if user is not None and BIAS_ADD.match(user.value, fn.var2val):
        bias = _per_channel_bias(user.value, epi.tail, fn, out_shape)
        if bias is not None:
            epi.bias = bias if epi.bias is None else epi.bias + bias
            epi.tail, epi.names = user.var, (*epi.names, "bias")
            absorbed.append(user.var)
            user = user_of(epi.tail)
    if residual and user is not None and _op_name(user.value) == "relax.add":
        a, b = user.value.args
        other = b if a.same_as(epi.tail) else a if b.same_as(epi.tail) else None
        if (other is not None and not other.same_as(epi.tail) and as_constant(other, fn.var2val) is None
                and isinstance(other, relax.Var) and static_shape(other.ty) == out_shape
                and str(other.ty.dtype) == "float32" and static_shape(user.value.ty) == out_shape):
            epi.residual, epi.tail, epi.names = other, user.var, (*epi.names, "residual")
            absorbed.append(user.var)
            user = user_of(epi.tail)
    lo, hi = float("-inf"), float("inf")
    while user is not None and static_shape(user.value.ty) == out_shape:
        bounds = _clip_bounds(user.value, epi.tail, fn)
        if bounds is None:
            break
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        epi.tail = user.var
        absorbed.append(user.var)
        user = user_of(epi.tail)
    if (lo, hi) != (float("-inf"), float("inf")):
        epi.bounds = (lo, hi)
        epi.relu = lo == 0.0 and hi == float("inf")
        epi.names = (*epi.names, _activation_name(epi.bounds))
    epi.absorbed = tuple(absorbed)
    return epi
