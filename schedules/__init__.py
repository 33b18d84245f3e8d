"""Per-target schedule templates for the pattern-sparse conv2d (shipped as ``tvm_pattern.schedules``).

One module per device family (``family(target)``): ``x86`` and ``arm_cpu`` schedule the CPU kernel that
``tvm_pattern.sparse_conv`` generates (``default_config`` / ``candidate_configs``, ``schedule`` /
``apply_default``); ``mali`` generates its own OpenCL loop nest (``generate``). Every module provides
``tuning_task`` (the layer as a MetaSchedule workload, every knob a sample; see ``space``) and
``materialize`` (the kernel for sampled knobs). Adding a device is adding one file and a ``REGISTRY`` entry.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import x86

# target family -> schedule module (imported on first use); see ``family``
REGISTRY: dict[str, str] = {"x86": "x86", "arm_cpu": "arm_cpu", "mali": "mali"}


def family(target=None) -> str:
    """``mali`` for OpenCL targets, ``arm_cpu`` for llvm targets of an Arm triple, else ``x86`` (the host)."""
    if target is None:
        return "x86"
    kind = target.kind.name
    if kind == "opencl":
        return "mali"
    triple = str(target.attrs.get("mtriple", ""))
    if kind == "llvm" and triple.startswith(("aarch64", "arm")):
        return "arm_cpu"
    return "x86"


def module(name: str) -> ModuleType:
    """The schedule module of a family (``x86``, ``arm_cpu``, ``mali``)."""
    return x86 if name == "x86" else importlib.import_module(f"{__name__}.{REGISTRY[name]}")


def for_target(target=None) -> ModuleType:
    """The schedule module for ``target`` (None: the host, x86)."""
    return module(family(target))


def default_config(packed, data_shape, out_shape, target=None) -> dict:
    """Default knobs of the target's schedule for one layer."""
    return for_target(target).default_config(packed, data_shape, out_shape, target)
