"""``DenseKernels``: which convs / dense layers become generated kernels, the epilogues they absorb (ONNX's BN-folded
bias, residual add, ReLU, Clip as ReLU6 / clip, Gemm's bias), what is left and why, and the numerics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from tvm_pattern.frontend import import_onnx
from tvm_pattern.passes import OPAQUE, DenseKernels
from tvm_pattern.pipeline.build import cpu_pipeline
from tvm_pattern.targets import host_target

TARGET = host_target()


class Block(nn.Module):
    """Stem 5x5/2, BN, ReLU; a residual 1x1 + 3x3 pair; depthwise, ReLU6 then clip(-1, 1) (composed: clip(0, 1));
    a grouped conv; two FCs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 5, 2, 2, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, 2, 1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc1 = nn.Linear(16 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, 7)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.b(torch.relu(self.a(y))) + y)
        y = torch.clamp(self.dw(y), 0, 6)
        y = self.grouped(torch.clamp(y, -1, 1))
        y = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1)
        return self.fc2(torch.relu(self.fc1(y)))


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    torch.manual_seed(0)
    model = Block().eval()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path_factory.mktemp("dense") / "block.onnx"
    torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17)
    with torch.no_grad():
        return import_onnx(path), x.numpy(), model(x).numpy()


def test_rewrites_and_numerics(block):
    mod, x, want = block
    dense = DenseKernels(target=TARGET)
    with TARGET:
        out = dense(mod)
    got = {r.name.split("'")[1]: r for r in dense.summary}
    assert len(dense.summary) == 7
    rewritten = [r for r in dense.summary if r.rewritten]
    assert [r.op for r in rewritten] == ["conv2d", "conv2d", "conv2d", "depthwise", "dense", "dense"]
    assert [r.epilogue for r in rewritten] == [("bias", "relu"), ("bias", "relu"), ("bias", "residual", "relu"),
                                               ("bias", "clip(0, 1)"), ("bias", "relu"), ("bias",)]  # fmt: skip
    left = [r for r in got.values() if not r.rewritten]
    assert len(left) == 1 and "grouped conv (groups=4)" in str(left[0])
    kernels = [f for _, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "op_pattern" in f.attrs]
    assert len(kernels) == 6 and all(int(f.attrs["op_pattern"]) == OPAQUE for f in kernels)
    ex = tvm.compile(out, target=TARGET, relax_pipeline=cpu_pipeline(TARGET))
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_kinds_off(block):
    """With convs off only the depthwise and dense layers go."""
    mod, _, _ = block
    dense = DenseKernels(target=TARGET, convs=False)
    with TARGET:
        dense(mod)
    assert [r.op for r in dense.rewritten] == ["depthwise", "dense", "dense"]
    assert all("conv2d kernels are off" in r.reason for r in dense.summary if not r.rewritten and r.op == "conv2d"
               and "grouped" not in r.reason)


def test_clip_epilogue(tmp_path):
    """ONNX Clip (Hardtanh) as the importer emits it (call_tir of TOPI maximum / minimum by where(isnan(c)...))."""
    conv = nn.Conv2d(4, 8, 1).eval()
    x = torch.randn(1, 4, 6, 6)
    path = tmp_path / "clip.onnx"
    torch.onnx.export(nn.Sequential(conv, nn.Hardtanh(-1.0, 0.5)), x, str(path), dynamo=False, opset_version=17)
    dense = DenseKernels(target=TARGET)
    with TARGET:
        out = dense(import_onnx(path))
    assert dense.summary[0].epilogue == ("bias", "clip(-1, 0.5)")
    ex = tvm.compile(out, target=TARGET, relax_pipeline=cpu_pipeline(TARGET))
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(y, torch.clamp(conv(x), -1, 0.5).numpy(), rtol=1e-4, atol=1e-5)


def test_large_batch_dense_is_left(tmp_path):
    fc = nn.Linear(6, 3).eval()
    path = tmp_path / "fc.onnx"
    torch.onnx.export(fc, torch.randn(16, 6), str(path), dynamo=False, opset_version=17)
    dense = DenseKernels(target=TARGET)
    with TARGET:
        dense(import_onnx(path))
    assert not dense.summary[0].rewritten and "batch 16 > 8" in dense.summary[0].reason
