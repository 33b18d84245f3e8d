"""Per-target schedule templates for the pattern-sparse conv2d (shipped as ``tvm_pattern.schedules``).

One module per target family, each a ``base.ScheduleFamily``: ``x86`` and ``arm_cpu`` schedule the CPU kernel
that ``tvm_pattern.kernels.pattern_conv2d`` generates (knobs: ``x86.CpuKnobs``); ``mali`` generates its own
OpenCL loop nest (``mali.MaliKnobs``). ``registry.family(target)`` picks one; ``space`` makes tuning tasks
(every knob a MetaSchedule sample) and ``registry.materialize`` the kernel a sampled template selects.
``pattern_conv2d`` composes them for one layer (``sparse_conv2d``, ``tuning_task``, ``layer_config``).
``dense_cpu``: the default knobs of the dense-op kernels (dense / depthwise conv2d, dense layers) on x86 and Arm
CPUs, from the target's lanes, vector registers and cores. ``winograd``: which 3x3 convs run as Winograd F(4x4, 3x3).
"""

from __future__ import annotations

from . import arm_cpu, dense_cpu, mali, space, winograd, x86
from .base import Knobs, ScheduleFamily
from .mali import MaliKnobs
from .pattern_conv2d import layer_config, sparse_conv2d, tuning_task
from .registry import REGISTRY, build, family, family_name, for_target, materialize, materialize_module, named
from .space import TuningTask
from .x86 import CpuKnobs

__all__ = ["REGISTRY", "CpuKnobs", "Knobs", "MaliKnobs", "ScheduleFamily", "TuningTask", "arm_cpu", "build",
           "dense_cpu", "family", "family_name", "for_target", "layer_config", "mali", "materialize",
           "materialize_module",
           "named", "space", "sparse_conv2d", "tuning_task", "winograd", "x86"]  # fmt: skip
