"""Shared by the dense-op kernel tests: run a generated kernel on numpy inputs, PyTorch's activations, the tolerance."""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np
import torch
import tvm

from tvm_pattern.targets import host_target

TARGET = host_target()


def run(kernel, *inputs: np.ndarray) -> np.ndarray:
    """``kernel.func(*inputs, *kernel.arrays, out)`` compiled for this machine."""
    ex = tvm.compile(tvm.IRModule({"main": kernel.func}), TARGET)
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32))
    ex["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in (*inputs, *kernel.arrays)], out)
    return out.numpy()


def activate(t: torch.Tensor, activation) -> torch.Tensor:
    if activation == "relu":
        return t.relu()
    if activation == "relu6":
        return t.clamp(0, 6)
    if isinstance(activation, tuple):
        return t.clamp(activation[1], activation[2])
    return t


def with_residual(want: torch.Tensor, x: np.ndarray, residual: bool, rng: np.random.Generator):
    """(the expected output, the kernel's inputs): a random residual added to both when ``residual``."""
    if not residual:
        return want, [x]
    r = rng.standard_normal(tuple(want.shape), dtype=np.float32)
    return want + torch.tensor(r), [x, r]


def close(got: np.ndarray, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
