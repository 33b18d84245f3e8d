"""Shared by the kernel, schedule and tuning tests: pruned random layers, running a kernel, PyTorch's answer."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import tvm

from tvm_pattern.schedules import sparse_conv2d
from tvm_pattern.sparsity.format import PackedConv
from tvm_pattern.sparsity.library import PatternLibrary, best_fit
from tvm_pattern.targets import host_target

TARGET = host_target()
DENSE = PatternLibrary(np.ones((1, 3, 3), bool))


def pruned(rng: np.random.Generator, o: int, i: int, k: int, n: int, keep: float) -> tuple[np.ndarray, PatternLibrary]:
    w = rng.standard_normal((o, i, 3, 3)).astype(np.float32)
    lib = PatternLibrary.extract(w.reshape(-1, 3, 3), k=min(k, math.comb(8, n - 1)), n=n)
    w = (w.reshape(-1, 3, 3) * lib.patterns[best_fit(w.reshape(-1, 3, 3), lib.patterns)]).reshape(w.shape)
    w[rng.random((o, i)) >= keep] = 0
    return w, lib


def run(func: tvm.tirx.PrimFunc, arrays, x: np.ndarray, bias: np.ndarray | None, out_shape) -> np.ndarray:
    fn = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)["main"]
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32))
    args = [tvm.runtime.tensor(x), *[tvm.runtime.tensor(a) for a in arrays]]
    args += [tvm.runtime.tensor(bias)] if bias is not None else []
    fn(*args, out)
    return out.numpy()


def reference(x, w, bias, stride, padding, relu) -> np.ndarray:
    top, left, bottom, right = padding
    xt = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    y = F.conv2d(xt, torch.from_numpy(w), None if bias is None else torch.from_numpy(bias), stride=stride)
    return (torch.relu(y) if relu else y).numpy()


def check(packed: PackedConv, w, x, stride, padding, bias, relu, config=None) -> None:
    kernel = sparse_conv2d(packed, x.shape, (stride, stride), padding, bias is not None, relu, TARGET, config)
    got = run(kernel.func, kernel.arrays, x, bias, kernel.out_shape)
    np.testing.assert_allclose(got, reference(x, w, bias, stride, padding, relu), atol=1e-4, rtol=1e-4)
