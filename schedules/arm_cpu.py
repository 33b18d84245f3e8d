"""The Arm CPU (AArch64 NEON) schedule template of the pattern-sparse conv.

The generated loop nest, its schedule decisions and its tuning space are the x86 template's (``schedule``,
``apply_default``, ``knob_choices``, ``materialize`` come from ``x86``; ``tuning_task`` is x86's
with this module's block shapes); only the register file differs, and so the default block shape:

- NEON vectors are 128 bits: 4 fp32 lanes (``vector`` = 4; the lane split is still sampled when tuning, and
  wider splits compile to several NEON registers per vector);
- AArch64 has 32 vector registers (v0-v31), so an output block may hold ~26 accumulator vectors next to a
  4-tap pattern's broadcast weights (x86's register budget rule, with 32 registers);
- threads: the target's ``num-cores`` (``targets.arm_target`` says 4, a phone's big cluster).
"""

from __future__ import annotations

from . import x86
from .x86 import apply_default, knob_choices, materialize, schedule

__all__ = ["NEON_LANES", "NEON_REGISTERS", "apply_default", "candidate_configs", "default_config", "knob_choices",
           "materialize", "schedule", "tuning_task"]  # fmt: skip

NEON_LANES = 4  # fp32 lanes of a 128-bit NEON register
NEON_REGISTERS = 32  # v0-v31


def _threads(target) -> int:
    cores = int(target.attrs.get("num-cores", 0)) if target is not None else 0
    return cores or 4


def default_config(packed, data_shape, out_shape, target=None) -> dict:
    """The R x NV block of least modelled cost that fits NEON's registers, 4-lane vectors, one thread per core."""
    return x86.block_config(out_shape, packed.n, NEON_REGISTERS, NEON_LANES, _threads(target))


def candidate_configs(packed, data_shape, out_shape, target=None) -> list[dict]:
    """Every (rows, vectors) block within the NEON register budget, 4 lanes."""
    base = default_config(packed, data_shape, out_shape, target)
    return x86.block_candidates(base, out_shape, packed.n, NEON_REGISTERS)


def tuning_task(packed, data_shape, strides, padding, bias, relu: bool, target):
    """The layer as a ``TuningTask`` over this module's candidate blocks (x86's template and knobs)."""
    return x86.tuning_task(packed, data_shape, strides, padding, bias, relu, target, family="arm_cpu")
