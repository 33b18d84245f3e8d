"""Per-target schedule templates for the pattern-sparse conv2d (shipped as ``tvm_pattern.schedules``).

One module per device family; adding a device is adding one file here. ``REGISTRY`` maps a target kind /
key to its module; every module provides ``default_config`` / ``candidate_configs`` (structural knobs),
``apply_default`` / ``schedule`` / ``sample`` (schedule decisions) and ``host_target``.
"""

from __future__ import annotations

from types import ModuleType

from . import x86

REGISTRY: dict[str, ModuleType] = {"llvm": x86, "cpu": x86}


def for_target(target=None) -> ModuleType:
    """The schedule module for ``target`` (None: the host, x86)."""
    if target is None:
        return x86
    kind = getattr(getattr(target, "kind", None), "name", str(target))
    return REGISTRY.get(kind, x86)


def default_config(packed, data_shape, out_shape, target=None) -> dict:
    """Default knobs of the target's schedule for one layer."""
    return for_target(target).default_config(packed, data_shape, out_shape, target)
