"""The Arm CPU (AArch64 NEON) schedule template of the pattern-sparse conv.

The generated loop nest, its schedule decisions, its knobs (``x86.CpuKnobs``) and its tuning space are the x86
template's (``schedule``, ``apply_default``, ``knob_choices``, ``materialize`` come from ``x86``; ``generate``
and ``tuning_task`` are x86's with this module's block shapes); only the register file differs, and so the
default block shape:

- NEON vectors are 128 bits: 4 fp32 lanes (``vector`` = 4; the lane split is still sampled when tuning, and
  wider splits compile to several NEON registers per vector);
- AArch64 has 32 vector registers (v0-v31), so an output block may hold ~26 accumulator vectors next to a
  4-tap pattern's broadcast weights (x86's register budget rule, with the target's register count);
- threads: the target's ``num-cores`` (``targets.arm_target`` says 4, a phone's big cluster).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from tvm_pattern.targets import target_cores, vector_registers

from . import x86
from .space import TuningTask
from .x86 import CpuKnobs, apply_default, knob_choices, materialize, schedule

__all__ = ["NAME", "NEON_LANES", "NEON_REGISTERS", "CpuKnobs", "apply_default", "candidate_configs",
           "default_config", "generate", "knob_choices", "materialize", "schedule", "tuning_task"]  # fmt: skip

NAME = "arm_cpu"
NEON_LANES = 4  # fp32 lanes of a 128-bit NEON register
NEON_REGISTERS = 32  # v0-v31 (AArch64); ``targets.vector_registers`` reads it from the target


def default_config(packed, data_shape, out_shape, target=None) -> CpuKnobs:
    """The R x NV block of least modelled cost that fits NEON's registers, 4-lane vectors, one thread per core,
    x86's input-channel chunks (``x86.default_chunk``: the same L1 and branch trade-off)."""
    cfg = x86.block_config(out_shape, packed.n, _registers(target), NEON_LANES, target_cores(target))
    return cfg.with_overrides({"chunk": x86.default_chunk(packed)})


def candidate_configs(packed, data_shape, out_shape, target=None) -> list[CpuKnobs]:
    """Every (rows, vectors) block within the NEON register budget, 4 lanes."""
    base = default_config(packed, data_shape, out_shape, target)
    return x86.block_candidates(base, out_shape, packed.n, _registers(target))


def _registers(target) -> int:
    return vector_registers(target) if target is not None else NEON_REGISTERS


def generate(packed, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), bias: bool = False, relu: bool = False,
             target=None, config: Mapping | None = None):
    """The scheduled NEON kernel of one layer (x86's generator and schedule, this module's knobs)."""
    return x86.generate(packed, data_shape, strides, padding, bias, relu, target, config, family=sys.modules[__name__])


def tuning_task(packed, data_shape, strides, padding, bias, relu: bool, target) -> TuningTask:
    """The layer as a ``TuningTask`` over this module's candidate blocks (x86's template and knobs)."""
    return x86.tuning_task(packed, data_shape, strides, padding, bias, relu, target, family=sys.modules[__name__])
