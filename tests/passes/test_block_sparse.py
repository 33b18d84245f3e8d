"""``BlockSparseDense``: which 1x1 convs / dense layers become block-sparse kernels (detected from the zeros), the
epilogues they absorb, what stays dense and why, strict mode, and the numerics of whole small models vs PyTorch
(ONNX and torch.export imports, with ``DenseKernels`` after it as the pipeline runs them); Mali gets the GPU
variants (their numerics: tests/kernels/test_block_sparse.py on PoCL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from helpers.cnn_models import export_onnx, import_torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from torch import nn
from tvm import relax

from tvm_pattern.errors import PatternError, TvmPatternError
from tvm_pattern.frontend import import_onnx
from tvm_pattern.passes import OPAQUE, BlockSparseDense, DenseKernels
from tvm_pattern.pipeline.build import cpu_pipeline
from tvm_pattern.targets import host_target, mali_target

TARGET = host_target()


def prune_blocks(weight: torch.Tensor, group: int, keep: float, gen: torch.Generator) -> None:
    """Zero ``weight`` (O, I[, 1, 1]) in place but for ~``keep`` of the columns of each block of ``group`` rows."""
    o, i = weight.shape[:2]
    cols = torch.rand((-(-o // group), i), generator=gen) < keep
    mask = cols.repeat_interleave(group, 0)[:o]
    weight.data *= mask.reshape(o, i, *([1] * (weight.dim() - 2)))


class Bottleneck(nn.Module):
    """1x1 (BN, ReLU) -> 1x1 stride 2 (BN, ReLU6) -> 1x1 (BN) + a strided 1x1 shortcut, ReLU; a 3x3 conv left
    dense; pooled into two FCs (ReLU between)."""

    def __init__(self, c: int = 16, width: int = 24) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)
        self.b, self.bn_b = nn.Conv2d(width, width, 1, 2, bias=False), nn.BatchNorm2d(width)
        self.c, self.bn_c = nn.Conv2d(width, 4 * c, 1, bias=False), nn.BatchNorm2d(4 * c)
        self.short = nn.Conv2d(c, 4 * c, 1, 2)
        self.k3 = nn.Conv2d(4 * c, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 40), nn.Linear(40, 10)

    def forward(self, x):
        y = torch.relu(self.bn_a(self.a(x)))
        y = torch.clamp(self.bn_b(self.b(y)), 0, 6)
        y = torch.relu(self.bn_c(self.c(y)) + self.short(x))
        y = torch.flatten(nn.functional.adaptive_avg_pool2d(self.k3(y), 4), 1)
        return self.fc2(torch.relu(self.fc1(y)))


def pruned_model(group: int = 4, keep: float = 0.125, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Bottleneck().eval()
    gen = torch.Generator().manual_seed(seed)
    for bn in (model.bn_a, model.bn_b, model.bn_c):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    for layer in (model.a, model.b, model.c, model.short, model.fc1):
        prune_blocks(layer.weight, group, keep, gen)
    return model


def run(mod, x: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target=TARGET, relax_pipeline=cpu_pipeline(TARGET))
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def compile_both(mod):
    sparse, dense = BlockSparseDense(target=TARGET), DenseKernels(target=TARGET)
    with TARGET:
        out = dense(sparse(mod))
    return out, sparse, dense


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    model = pruned_model()
    x = torch.randn(1, 16, 16, 16)
    path = export_onnx(model, x, tmp_path_factory.mktemp("block_sparse") / "bottleneck.onnx")
    with torch.no_grad():
        return import_onnx(path), x.numpy(), model(x).numpy()


def test_rewrites_and_numerics(onnx_model):
    mod, x, want = onnx_model
    out, sparse, dense = compile_both(mod)
    assert [r.op for r in sparse.rewritten] == ["conv1x1"] * 4 + ["linear"]
    assert all(r.group == 4 and r.density <= 0.3 for r in sparse.rewritten)
    epilogues = sorted(r.epilogue for r in sparse.rewritten)
    assert ("bias", "relu6") in epilogues and ("bias", "relu") in epilogues
    assert any("residual" in e for e in epilogues)
    left = [r for r in sparse.summary if not r.rewritten]
    assert len(left) == 1 and left[0].op == "linear" and "dense: density 1.600 (blocks of 16) > 0.4" in left[0].reason
    assert "block-sparse, blocks of 4 rows" in str(sparse.rewritten[0])
    assert sorted(r.op for r in dense.rewritten) == ["conv2d", "dense"]  # the 3x3 conv and fc2
    kernels = [f for gv, f in out.functions_items() if "block_sparse" in gv.name_hint]
    assert len(kernels) == 5 and all(int(f.attrs["op_pattern"]) == OPAQUE for f in kernels)
    np.testing.assert_allclose(run(out, x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_torch_export_folds_batch_norm():
    model = pruned_model(group=8, keep=0.25, seed=1)
    x = torch.randn(1, 16, 10, 10)
    with torch.no_grad():
        want = model(x).numpy()
    out, sparse, _ = compile_both(import_torch(model, x))
    assert len(sparse.rewritten) == 5 and all(r.group == 8 for r in sparse.rewritten)
    assert sum("batch_norm" in r.epilogue for r in sparse.rewritten) == 3
    np.testing.assert_allclose(run(out, x.numpy()), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # each compiles
@given(group=st.sampled_from([1, 2, 4, 8, 16]), keep=st.sampled_from([0.0, 0.1, 0.2]), stride=st.integers(1, 2),
       act=st.sampled_from(["none", "relu", "relu6"]), batch=st.integers(1, 3), seed=st.integers(0, 9))
def test_random_layers(group, keep, stride, act, batch, seed):
    """A pruned 1x1 conv (any block height, density, stride, activation) into a pruned FC at small batches."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    conv, fc = nn.Conv2d(12, 20, 1, stride), nn.Linear(20 * 4 * 4, 17)
    prune_blocks(conv.weight, group, keep, gen)
    prune_blocks(fc.weight, group, keep, gen)
    acts = {"none": nn.Identity(), "relu": nn.ReLU(), "relu6": nn.ReLU6()}
    model = nn.Sequential(conv, acts[act], nn.AdaptiveAvgPool2d(4), nn.Flatten(), fc, acts[act]).eval()
    x = torch.randn(batch, 12, 9, 9)
    with torch.no_grad():
        want = model(x).numpy()
    out, sparse, _ = compile_both(import_torch(model, x))
    assert [r.op for r in sparse.rewritten] == ["conv1x1", "linear"]
    np.testing.assert_allclose(run(out, x.numpy()), want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_threshold_and_kinds(onnx_model):
    mod = onnx_model[0]
    sparse = BlockSparseDense(target=TARGET, max_density=0.05)
    with TARGET:
        sparse(mod)
    assert not sparse.rewritten and all("dense: density" in r.reason for r in sparse.summary)
    sparse = BlockSparseDense(target=TARGET, linear=False)
    with TARGET:
        sparse(mod)
    assert [r.op for r in sparse.summary] == ["conv1x1"] * 4
    with TARGET:
        BlockSparseDense(target=TARGET, strict=True)(mod)  # a dense FC is never a strict-mode error
    with pytest.raises(TvmPatternError, match="max_density"):
        BlockSparseDense(max_density=2)


def test_mali_gets_the_gpu_variants(onnx_model):
    mod = onnx_model[0]
    sparse = BlockSparseDense(target=mali_target())
    with mali_target():
        out = sparse(mod)
    assert [r.op for r in sparse.rewritten] == ["conv1x1"] * 4 + ["linear"]
    names = [str(f.attrs["global_symbol"]) if "global_symbol" in f.attrs else gv.name_hint
             for gv, f in out.functions_items() if "block_sparse" in gv.name_hint]
    assert len(names) == 5
    sources = [f.script() for gv, f in out.functions_items() if "block_sparse" in gv.name_hint]
    assert all("threadIdx.x" in src for src in sources)


def test_large_batch_is_left(tmp_path):
    fc = nn.Linear(32, 16).eval()
    prune_blocks(fc.weight, 4, 0.1, torch.Generator().manual_seed(0))
    path = export_onnx(fc, torch.randn(16, 32), tmp_path / "fc.onnx")
    sparse = BlockSparseDense(target=TARGET)
    with TARGET:
        sparse(import_onnx(path, batch=16))
    assert not sparse.summary[0].rewritten and "batch 16 > 8" in sparse.summary[0].reason
    with pytest.raises(PatternError, match="batch 16 > 8"), TARGET:
        BlockSparseDense(target=TARGET, strict=True)(import_onnx(path, batch=16))
