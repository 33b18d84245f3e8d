"""What the dense-op kernel generators (``dense_conv2d``, ``depthwise_conv2d``, ``dense``) share: the kernel
record, the epilogue's activation bounds and its TVMScript.

Generators take their typed knobs (frozen dataclasses defined next to each generator) and know no target;
``tvm_pattern.schedules.dense_cpu`` derives default knobs from a target's lanes, vector registers and cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from ..errors import TvmPatternError
from .tvmscript import i64_shape

__all__ = ["ACTIVATIONS", "DenseKernel", "bias_array", "check_activation", "epilogue", "i64", "padding4", "pair"]


@dataclass(frozen=True)
class DenseKernel:
    """A generated kernel: call ``func(data, [residual], *arrays, out)``; ``arrays`` are compile-time constants."""

    func: tvm.tirx.PrimFunc
    arrays: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]


def i64(*dims: int) -> str:
    """A TVMScript shape with int64 dims (what Relax legalisation emits)."""
    return i64_shape(*(int(d) for d in dims))


ACTIVATIONS = (None, "relu", "relu6")


def check_activation(activation) -> tuple[float, float] | None:
    """``None`` / ``"relu"`` / ``"relu6"`` / ``("clip", lo, hi)`` as (lo, hi) bounds (None: identity)."""
    if activation is None:
        return None
    if activation == "relu":
        return (0.0, float("inf"))
    if activation == "relu6":
        return (0.0, 6.0)
    if isinstance(activation, tuple | list) and len(activation) == 3 and activation[0] == "clip":
        return (float(activation[1]), float(activation[2]))
    raise TvmPatternError(f"activation must be None, 'relu', 'relu6' or ('clip', lo, hi), got {activation!r}")


def _f32(v: float) -> str:
    return f"T.float32({float(v)!r})"


def epilogue(value: str, bounds: tuple[float, float] | None) -> str:
    """TVMScript for the activation applied to ``value``."""
    if bounds is None:
        return value
    lo, hi = bounds
    value = f"T.max({value}, {_f32(lo)})" if lo != float("-inf") else value
    return f"T.min({value}, {_f32(hi)})" if hi != float("inf") else value


def bias_array(bias, n: int) -> np.ndarray:
    """``bias`` as a contiguous float32 (n,) array; ``TvmPatternError`` if it does not hold ``n`` values."""
    b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if b.shape != (n,):
        raise TvmPatternError(f"bias must have {n} values, got shape {np.shape(bias)}")
    return b


def pair(v, name: str) -> tuple[int, int]:
    """One or two positive ints as a pair."""
    v = (v, v) if isinstance(v, int) else tuple(int(x) for x in v)
    if len(v) != 2 or min(v) < 1:
        raise TvmPatternError(f"{name} must be one or two positive ints, got {v}")
    return v


def padding4(p) -> tuple[int, int, int, int]:
    """int, (ph, pw) or (top, left, bottom, right) as (top, left, bottom, right)."""
    if isinstance(p, int):
        p = (p,)
    p = tuple(int(x) for x in p)
    if len(p) == 1:
        p = p * 4
    elif len(p) == 2:
        p = (p[0], p[1], p[0], p[1])
    if len(p) != 4 or min(p) < 0:
        raise TvmPatternError(f"padding must be int, (ph, pw) or (top, left, bottom, right) >= 0, got {p}")
    return p
