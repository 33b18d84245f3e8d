"""Tuning tasks: one pattern-sparse layer as a MetaSchedule workload with its design space.

A ``TuningTask`` is what ``tvm_pattern.tune`` hands to MetaSchedule for one layer:

- ``mod``: the workload, the layer's template PrimFunc as ``main``; the JSON database keys records by it;
- ``space``: the design space (a ``ScheduleFn``) whose trace samples every knob of the template;
- ``arrays``: the real values of every parameter after ``data`` and before ``out`` (the FKW index and
  weight arrays, the filter split, the bias): runners must pass them, random index arrays read out of bounds;
- ``materialize``: the compiled kernel for a schedule of ``mod`` (a trace applied). Templates whose knobs
  are all schedule primitives return the scheduled function as it is; templates with structural knobs
  (block shapes of generated code) read the sampled values from the trace and generate the kernel they select.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm.ir import IRModule


def _identity(mod: IRModule) -> tvm.tirx.PrimFunc:
    return mod["main"]


@dataclass(frozen=True)
class TuningTask:
    """One layer to tune: workload, design space, real argument values, and how to get the kernel."""

    name: str
    mod: IRModule
    space: object  # tvm.s_tir.meta_schedule.space_generator.SpaceGenerator
    arrays: tuple[np.ndarray, ...]
    materialize: Callable[[IRModule], tvm.tirx.PrimFunc] = field(default=_identity)
