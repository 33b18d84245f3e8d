"""Resolve the target names users type (``x86``, ``arm``, ``mali``, TVM tags) to ``tvm.target.Target``,
and what a target's CPU offers (cores, vector registers), detected at run time.

The bottom of the compiler side: entrances (``pipeline``, ``tune``, the CLI) resolve a target once and pass
the ``Target`` down. MetaSchedule refuses a CPU target without ``num-cores`` and TVM tags lack it, so every
CPU target made here carries it. Cross targets (``arm``, ``mali``) are compile-only here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tvm
from tvm.target import Target

from .errors import TvmPatternError

__all__ = ["arm_target", "host_cores", "host_target", "is_host", "mali_target", "resolve_target", "runtime_threads",
           "target_cores", "vector_registers"]  # fmt: skip

HOST_NAMES = ("x86", "llvm", "host", "cpu")
ARM_CORES = 4  # a typical phone big cluster; override with a dict target if needed

_ARM_HOST: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def host_cores() -> int:
    """Cores this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def host_target(cores: int | None = None) -> Target:
    """The llvm target of this machine: its triple, its CPU (e.g. znver4) and its core count (or ``cores``)."""
    triple = tvm.get_global_func("tvm.codegen.llvm.GetDefaultTargetTriple")()
    mcpu = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()
    return Target({"kind": "llvm", "mtriple": triple, "mcpu": mcpu, "num-cores": cores or host_cores()})


def arm_target(cores: int = ARM_CORES) -> Target:
    """A 64-bit Arm CPU with NEON (a phone's CPU), for cross-compilation."""
    return Target({**_ARM_HOST, "num-cores": cores})


def mali_target() -> Target:
    """An OpenCL Mali GPU with an aarch64 host; this wheel has no OpenCL runtime, so compile-only."""
    return Target({"kind": "opencl", "device": "mali"}, host={**_ARM_HOST, "num-cores": ARM_CORES})


_NAMED = {"arm": arm_target, "aarch64": arm_target, "mali": mali_target}


def _with_cores(target: Target) -> Target:
    """Add ``num-cores`` to a CPU target (or a GPU target's CPU host) that lacks it."""
    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    config = dict(target.export())
    if config.get("kind") == "llvm" and "num-cores" not in config:
        is_host = config.get("mtriple", "").startswith(("x86_64", "i686")) or "mtriple" not in config
        config["num-cores"] = host_cores() if is_host else ARM_CORES
        return Target(config)
    return target


def resolve_target(target: str | Mapping[str, Any] | Target | None = None) -> Target:
    """A ``Target`` for a name (``x86``/``llvm``/``host``, ``arm``, ``mali``), a TVM tag, a dict or a Target.

    ``None`` means this machine. Raises ``TvmPatternError`` listing what is known for any other name.
    """
    if target is None:
        return host_target()
    if isinstance(target, Target):
        return _with_cores(target)  # a resolved target comes back as it is
    if isinstance(target, Mapping):
        return _with_cores(Target(dict(target)))
    name = str(target).strip()
    if name.lower() in HOST_NAMES:
        return host_target()
    if name.lower() in _NAMED:
        return _NAMED[name.lower()]()
    if name in tvm.target.list_tags():
        return _with_cores(Target(name))
    raise TvmPatternError(
        f"unknown target {name!r}: use one of {', '.join(HOST_NAMES + tuple(_NAMED))}, "
        "a TVM target tag (tvm.target.list_tags(), e.g. 'arm/rk3399') or a target dict"
    )


def is_host(target: Target) -> bool:
    """True if code built for ``target`` runs on this machine (an llvm target with the host triple)."""
    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", ""))
    host = tvm.get_global_func("tvm.codegen.llvm.GetDefaultTargetTriple")()
    return not triple or triple.split("-")[0] == host.split("-")[0]


def target_cores(target: Target | None) -> int:
    """The ``num-cores`` of a CPU target (its host's for a GPU target); this machine's cores if it has none."""
    cpu = target.host if target is not None and target.kind.name != "llvm" and target.host is not None else target
    cores = int(cpu.attrs.get("num-cores", 0)) if cpu is not None and cpu.kind.name == "llvm" else 0
    return cores or host_cores()


def vector_registers(target: Target | None) -> int:
    """Vector registers of the target's CPU, from its LLVM feature set: 32 with AVX-512 (zmm0-31) or on
    AArch64 (v0-v31), else 16 (x86 ymm0-15). ``None``: this machine."""
    from tvm.target import codegen

    target = target if target is not None else host_target()
    triple = str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()
    if triple.startswith(("aarch64", "arm64")):
        return 32
    if triple.startswith("arm"):
        return 16  # AArch32 NEON: q0-q15
    if "mcpu" not in target.attrs and is_host(target):
        target = host_target()  # a bare "llvm" runs here: this CPU's features
    return 32 if "avx512f" in codegen.llvm_get_cpu_features(target) else 16


def runtime_threads(threads: int | None = None) -> int:
    """Ask TVM's thread pool for ``threads`` workers (default: this process's cores); returns the count.

    Why: TVM 0.27 sizes its pool from ``TVM_NUM_THREADS``, else from a core count that some virtual machines
    report as 1, which silently runs every ``T.parallel`` loop on one thread. The variable is read when the
    pool starts, so call this before the first compiled function runs; an explicit setting is kept.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(threads or host_cores()))
    return int(os.environ["TVM_NUM_THREADS"])
