"""``PatternDepthwiseConv2d``: pattern-sparse depthwise convs (read off their zeros) become the pattern kernel with
their BN / bias / ReLU6 / clip / residual epilogue; unpruned or unfit ones stay (with the reason, or an error in
strict mode); whole-model numerics vs PyTorch after ``DenseKernels`` and the CPU pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from torch import nn
from tvm import relax

from tvm_pattern.errors import PatternError, TvmPatternError
from tvm_pattern.frontend import import_onnx
from tvm_pattern.passes import OPAQUE, DenseKernels, PatternDepthwiseConv2d
from tvm_pattern.pipeline.build import cpu_pipeline
from tvm_pattern.targets import host_target

TARGET = host_target()


def prune_(conv: nn.Conv2d, taps: int = 4, empty: int = 1, seed: int = 0) -> None:
    """Keep one of 8 random ``taps``-tap patterns per channel (centre included), ``empty`` channels all zero."""
    rng = np.random.default_rng(seed)
    c = conv.weight.shape[0]
    lib = np.zeros((8, 9), bool)
    for p in range(8):
        lib[p, [4, *rng.choice([0, 1, 2, 3, 5, 6, 7, 8], taps - 1, replace=False)]] = True
    mask = lib[rng.integers(0, 8, c)]
    mask[:empty] = False
    with torch.no_grad():
        conv.weight.mul_(torch.tensor(mask.reshape(c, 1, 3, 3), dtype=torch.float32))


class MobileBlock(nn.Module):
    """Stem, then MobileNet-V2-like pieces: dw s1 + BN + ReLU6, 1x1, dw s2 + BN + ReLU6, dw + BN + residual,
    dw + clip(-1, 1), an unpruned dw, a dw with a 6-tap channel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.dw1, self.bn1 = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.dw2, self.bn2 = nn.Conv2d(24, 24, 3, 2, 1, groups=24, bias=False), nn.BatchNorm2d(24)
        self.dw3, self.bn3 = nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), nn.BatchNorm2d(24)
        self.dw4 = nn.Conv2d(24, 24, 3, 1, 1, groups=24)
        self.dense = nn.Conv2d(24, 24, 3, 1, 1, groups=24)
        self.wide = nn.Conv2d(24, 24, 3, 2, 1, groups=24)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.clamp(self.bn1(self.dw1(y)), 0, 6)
        y = torch.clamp(self.bn2(self.dw2(self.pw(y))), 0, 6)
        y = y + self.bn3(self.dw3(y))
        y = torch.clamp(self.dw4(y), -1, 1)
        return self.wide(self.dense(y))


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    torch.manual_seed(0)
    model = MobileBlock().eval()
    for i, conv in enumerate([model.dw1, model.dw2, model.dw3, model.dw4, model.wide]):
        prune_(conv, seed=i)
    with torch.no_grad():
        model.wide.weight[3, 0] = torch.randn(3, 3) * torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 0]])
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 20, 18)
    path = tmp_path_factory.mktemp("dw") / "block.onnx"
    torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17)
    with torch.no_grad():
        return import_onnx(path), x.numpy(), model(x).numpy()


def test_rewrites_reports_and_numerics(block):
    mod, x, want = block
    dw = PatternDepthwiseConv2d(target=TARGET)
    with TARGET:
        out = dw(mod)
    assert len(dw.summary) == 6  # the depthwise convs only: the stem and the 1x1 are not reported
    rewritten = dw.rewritten
    assert [r.epilogue for r in rewritten] == [("bias", "relu6"), ("bias", "relu6"), ("bias", "residual"),
                                               ("bias", "clip(-1, 1)")]  # fmt: skip
    assert all(r.patterns <= 8 and r.empty_channels == 1 for r in rewritten)
    assert "pattern-sparse depthwise" in str(rewritten[0]) and "1 empty channels" in str(rewritten[0])
    left = [r for r in dw.summary if not r.rewritten]
    assert "every channel keeps all its taps" in left[0].reason
    assert "channel 3 keeps 6 taps > 4" in left[1].reason
    kernels = [f for gv, f in out.functions_items() if "pattern_depthwise" in gv.name_hint]
    assert len(kernels) == 4 and all(int(f.attrs["op_pattern"]) == OPAQUE for f in kernels)
    dense = DenseKernels(target=TARGET)
    with TARGET:
        out = dense(out)
    assert [r.op for r in dense.rewritten] == ["conv2d", "conv2d", "depthwise", "depthwise"]
    ex = tvm.compile(out, target=TARGET, relax_pipeline=cpu_pipeline(TARGET))
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.slow
def test_strict_and_max_taps(block):
    mod, _, _ = block
    with TARGET, pytest.raises(PatternError, match="keeps 6 taps > 4"):
        PatternDepthwiseConv2d(strict=True, target=TARGET)(mod)
    dw = PatternDepthwiseConv2d(target=TARGET, max_taps=6, residual=False)
    with TARGET:
        dw(mod)
    assert len(dw.rewritten) == 5
    assert dw.summary[2].epilogue == ("bias",)  # the residual add is left to TVM
    with pytest.raises(TvmPatternError, match="max_taps"):
        PatternDepthwiseConv2d(max_taps=0)


def test_strict_accepts_unpruned(tmp_path):
    """An unpruned depthwise conv is never a strict-mode error; a non-depthwise grouped conv is not reported."""
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 3, padding=1, groups=2)).eval()
    path = tmp_path / "dense.onnx"
    torch.onnx.export(model, torch.randn(1, 8, 8, 8), str(path), dynamo=False, opset_version=17)
    dw = PatternDepthwiseConv2d(strict=True, target=TARGET)
    with TARGET:
        dw(import_onnx(path))
    assert len(dw.summary) == 1 and not dw.summary[0].rewritten


def test_gpu_targets_leave_pruned_depthwise_convs_to_the_dense_path(block):
    """No Mali kernel yet: a pruned depthwise conv stays (saying why; not a strict-mode error: it still runs)."""
    mod, _, _ = block
    from tvm_pattern.targets import resolve_target

    dw = PatternDepthwiseConv2d(target=resolve_target("mali"))
    out = dw(mod)
    assert not dw.rewritten and len(dw.summary) == 6
    assert sum("no pattern depthwise kernel for opencl" in r.reason for r in dw.summary) == 4  # dw1-dw4
    assert tvm_ffi.structural_equal(out, mod)
