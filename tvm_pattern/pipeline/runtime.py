"""Run a compiled model: ``load`` a library, call it with numpy arrays (the Relax VirtualMachine)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from ..errors import ModelError, TvmPatternError
from ..targets import runtime_threads

__all__ = ["CompiledModel", "load"]


class CompiledModel:
    """A compiled model on a device: ``model(x, ...)`` takes and returns numpy arrays."""

    def __init__(self, executable: tvm.runtime.Executable, device: str = "cpu", entry: str = "main") -> None:
        runtime_threads()  # before the first run: TVM's pool may otherwise use one thread
        self.device = tvm.device(device)
        self.vm = relax.VirtualMachine(executable, self.device)
        self.entry = entry

    def __call__(self, *inputs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        return _to_numpy(self.vm[self.entry](*args))


def _to_numpy(value) -> np.ndarray | tuple:
    if isinstance(value, tvm.runtime.Tensor):
        return value.numpy()
    if isinstance(value, Sequence):
        return tuple(_to_numpy(v) for v in value)
    raise TvmPatternError(f"unexpected model output of type {type(value).__name__}")


def load(path: str | os.PathLike, device: str = "cpu") -> CompiledModel:
    """Load a library written by ``compile_file``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"compiled model {path} does not exist")
    try:
        executable = tvm.runtime.load_module(str(path))
    except Exception as err:
        raise ModelError(f"{path} is not a library TVM can load: {err}") from err
    return CompiledModel(executable, device)
