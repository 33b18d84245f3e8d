"""Which compiler links a TVM library for a target this machine cannot link for, as an ``fcompile``.

The wheel's LLVM emits object code for any CPU; only the final link needs the target's toolchain:
Debian's ``aarch64-linux-gnu-g++`` for a 64-bit Arm Linux (the emulated phone), or the Android NDK's clang
when ``TVM_NDK_CC`` (a compiler path, TVM's convention) or ``ANDROID_NDK_HOME`` is set.
``export_options(target)`` is what ``Executable.export_library`` takes; ``builder_export(target)`` is
MetaSchedule's ``LocalBuilder(f_export=...)`` for cross-compiled tuning.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tvm

from ..errors import TvmPatternError
from ..targets import is_host

__all__ = ["DEBIAN_CROSS", "NDK_API", "Linker", "builder_export", "cpu_arch", "export_options", "linker"]

# CPU architecture -> (Debian cross compiler, the Debian package that provides it)
DEBIAN_CROSS = {"aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")}
NDK_API = 28  # Android 9: old enough for nearly every phone in use, new enough for NEON-era APIs
NDK_CLANG = {"aarch64": "aarch64-linux-android{api}-clang++"}


@dataclass(frozen=True)
class Linker:
    """An ``fcompile`` for ``export_library``: links TVM's objects into a shared library with ``command``.

    A picklable value (MetaSchedule ships it to builder processes), unlike ``tvm.support.cc.cross_compiler``,
    whose closure also appends every call's options to its defaults.
    """

    command: str
    output_format: str = "so"

    def __call__(self, output: str, objects: list[str], options: list[str] | None = None, **kwargs) -> None:
        from tvm.support import cc

        cc.create_shared(output, list(objects), options=[*(options or []), "-lm"], cc=self.command)

    def get_target_triple(self) -> str | None:
        """The compiler's triple (``-dumpmachine``): used for the import blob when no LLVM module names one."""
        out = subprocess.run([self.command, "-dumpmachine"], capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None


def cpu_arch(target: tvm.target.Target) -> str | None:
    """The CPU architecture code for ``target`` runs on (a GPU target's host), or None for this machine."""
    cpu = target.host if target.host is not None else target
    if is_host(cpu):
        return None
    return str(cpu.attrs.get("mtriple", "")).split("-")[0] or cpu.kind.name


def linker(target: tvm.target.Target) -> Linker | None:
    """The ``fcompile`` for ``target``: None for this machine, else the cross linker (NDK first, then Debian).

    Raises ``TvmPatternError`` naming the missing compiler (and its Debian package) when there is none.
    """
    arch = cpu_arch(target)
    if arch is None:
        return None
    ndk = _ndk_compiler(arch)
    if ndk is not None:
        return Linker(ndk)
    if arch not in DEBIAN_CROSS:
        raise TvmPatternError(f"no cross compiler known for {arch} (target {target}); known: {', '.join(DEBIAN_CROSS)}")
    command, package = DEBIAN_CROSS[arch]
    path = shutil.which(command)
    if path is None:
        raise TvmPatternError(
            f"linking for {arch} needs the cross compiler {command}, which is not on PATH: install the Debian "
            f"package {package} (or set ANDROID_NDK_HOME / TVM_NDK_CC for an Android NDK)"
        )
    return Linker(path)


def _ndk_compiler(arch: str) -> str | None:
    """The NDK's compiler if one is configured: ``TVM_NDK_CC``, else ``ANDROID_NDK_HOME``'s clang for ``arch``."""
    if os.environ.get("TVM_NDK_CC"):
        cc = os.environ["TVM_NDK_CC"]
        if shutil.which(cc) is None:
            raise TvmPatternError(f"TVM_NDK_CC={cc} is not an executable compiler")
        return cc
    home = os.environ.get("ANDROID_NDK_HOME")
    if not home or arch not in NDK_CLANG:
        return None
    bins = sorted(Path(home).glob("toolchains/llvm/prebuilt/*/bin"))
    name = NDK_CLANG[arch].format(api=NDK_API)
    found = [b / name for b in bins if (b / name).is_file()]
    if not found:
        raise TvmPatternError(f"ANDROID_NDK_HOME={home} has no toolchains/llvm/prebuilt/*/bin/{name}")
    return str(found[0])


def export_options(target: tvm.target.Target) -> dict:
    """Keyword arguments for ``export_library``: ``{}`` on this machine, else ``{"fcompile": linker}``."""
    fcompile = linker(target)
    return {} if fcompile is None else {"fcompile": fcompile}


def _export_to_temp(module: tvm.runtime.Module, fcompile: Linker | None) -> str:
    path = Path(tempfile.mkdtemp(prefix="tvm-pattern-build-")) / "lib.so"
    module.export_library(str(path), **({} if fcompile is None else {"fcompile": fcompile}))
    return str(path)


def builder_export(target: tvm.target.Target):
    """MetaSchedule's ``f_export`` (module -> library path) linking for ``target``; picklable for builder workers.

    Resolves the compiler now, so a missing one fails before tuning starts.
    """
    return functools.partial(_export_to_temp, fcompile=linker(target))
