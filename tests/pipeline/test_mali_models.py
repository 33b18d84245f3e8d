"""Every op of a CNN on the Mali target: valid OpenCL, run on PoCL, equal to PyTorch on the same weights.

Pattern-sparse 3x3 convs go to the project's Mali template; everything else (dense convs of any size, depthwise
convs, dense layers, pooling, elementwise ops, batch_norm, flatten) to dlight's GPU rules through
``pipeline.gpu``. Kernels run on the first OpenCL device (PoCL on the CPU) with ``OpenCLModel``; every kernel
also passes TVM's GPU code check with the Mali target's limits.

Tolerance: max |ours - torch| / max |torch| <= 1e-4 (fp32). Measured: per-op cases ~1e-7, the reduced models
2e-7 (VGG-16) to ~1e-5. Random-weight MobileNet-V2 at 32x32 is ill-conditioned: PyTorch's own fp32 output is up
to 1.6e-4 from fp64 depending on the seed (2e-3 at scale 0.25), so each model first checks that fp32 PyTorch is
within 1e-4 / 4 of fp64, and the seeds are chosen where it is.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from torch import nn

from tvm_pattern.bench import models
from tvm_pattern.devices.opencl import OpenCLError, opencl_device
from tvm_pattern.frontend import import_onnx
from tvm_pattern.passes import PatternSparseConv2d
from tvm_pattern.pipeline import build, gpu
from tvm_pattern.targets import resolve_target

TARGET = resolve_target("mali")  # what `tvm-pattern compile --target mali` builds for
LIMITS = {
    "max_threads_per_block": int(TARGET.attrs["max_num_threads"]),
    "max_shared_memory_per_block": int(TARGET.attrs["max_shared_memory_per_block"]),
}
RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def opencl_platform() -> None:
    try:
        opencl_device()
    except OpenCLError as err:
        pytest.fail(f"no OpenCL device to run Mali kernels on ({err}); `make test` installs pocl-opencl-icd")


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def onnx_module(model: nn.Module, shape: tuple[int, ...], tmp_path) -> tvm.IRModule:
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model.eval(), (torch.zeros(shape),), str(path), input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)  # fmt: skip
    return import_onnx(path)


@dataclass
class Prepared:
    """A model scheduled for Mali, compiled (host and VM code too), its kernels ready for PoCL."""

    model: nn.Module
    x: np.ndarray
    program: gpu.OpenCLModel
    rules: dict[str, str]  # kernel -> dlight rule, or "template" (the pattern pass's Mali kernel)


def prepare(mod: tvm.IRModule, model: nn.Module, x: np.ndarray, dense_kernel: bool = True, prefix: str = ""):
    """``mod`` after the pattern pass (``dense_kernel``: unpruned 3x3 convs to the template too, as ``build``
    does for Mali) and ``gpu.schedule``, compiled for the phone."""
    with TARGET:
        mod = PatternSparseConv2d(None, target=TARGET, dense_kernel=dense_kernel)(mod)
    scheduler = gpu.ScheduleGPU()
    scheduled = gpu.schedule(mod, TARGET, scheduler)
    tvm.compile(scheduled, target=TARGET, relax_pipeline=gpu.lowering_pipeline(TARGET))
    program = gpu.OpenCLModel(scheduled, TARGET, prefix=prefix)
    rules = {name: scheduler.chosen.get(name, "template") for name in program.programs}
    return Prepared(model, x, program, rules)


def check(prepared: Prepared) -> float:
    """Every kernel passes the GPU code check; the output on PoCL vs torch's (relative error)."""
    for name, prog in prepared.program.programs.items():
        assert prog.verify(LIMITS), f"{name} fails TVM's GPU code check for Mali"
    out = prepared.program(prepared.x)
    with torch.no_grad():
        ref = prepared.model(torch.from_numpy(prepared.x)).numpy()
    assert out.shape == ref.shape
    return relative_error(out, ref)


def seeded(model: nn.Module, name: str) -> nn.Module:
    """``model`` with weights (and BN statistics) drawn from a seed of the case name."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


class Residual(nn.Module):
    """conv + BN, plus the block's input, then ReLU (ResNet's residual add)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)) + x)


class Head(nn.Module):
    """Global average pool, flatten, linear: a classifier head."""

    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# id -> (module maker, input shape)
OPS = {
    "conv1x1-bias-relu": (lambda: nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU()), (1, 16, 8, 8)),
    "conv1x1-stride2": (lambda: nn.Conv2d(16, 8, 1, stride=2, bias=False), (1, 16, 9, 9)),
    "conv3x3-s1-dlight": (lambda: nn.Conv2d(8, 16, 3, padding=1), (1, 8, 10, 10)),
    "conv3x3-s2-dlight": (lambda: nn.Conv2d(8, 16, 3, stride=2, padding=1), (1, 8, 11, 11)),
    "stem-7x7-s2-pad3-bn-relu-maxpool": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        ),
        (1, 3, 32, 32),
    ),
    "depthwise-s1-bn-relu6": (
        lambda: nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6()),
        (1, 16, 12, 12),
    ),
    "depthwise-s2": (lambda: nn.Conv2d(16, 16, 3, 2, 1, groups=16), (1, 16, 12, 12)),
    "depthwise-on-1x1-relu6": (  # dlight's GEMV asserts on it: ScheduleGPU moves on to the next rule
        lambda: nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU6()),
        (1, 16, 1, 1),
    ),
    "linear-batch1": (lambda: nn.Linear(96, 40), (1, 96)),
    "linear-batch4-relu": (lambda: nn.Sequential(nn.Linear(96, 40), nn.ReLU()), (4, 96)),
    "maxpool-2x2": (lambda: nn.MaxPool2d(2, 2), (1, 8, 10, 10)),
    "avgpool-3x3-s2-pad1": (lambda: nn.AvgPool2d(3, 2, 1), (1, 8, 11, 11)),
    "global-avgpool-flatten-linear": (lambda: Head(32, 10), (1, 32, 7, 7)),
    "residual-add-relu": (lambda: Residual(16), (1, 16, 8, 8)),
    "batchnorm-alone": (lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(8)), (1, 8, 6, 6)),
}


@pytest.fixture(scope="module")
def ops(tmp_path_factory) -> dict[str, Prepared | Exception]:
    """Every case of ``OPS`` prepared (every op dlight's: no 3x3 conv to the template), all kernels built as one
    OpenCL program; a case that fails to prepare keeps its exception for its own test."""
    prepared: dict[str, Prepared | Exception] = {}
    for i, (case, (make, shape)) in enumerate(OPS.items()):
        model = seeded(make(), case)
        x = np.random.default_rng(zlib.crc32(case.encode())).standard_normal(shape).astype(np.float32)
        try:
            mod = onnx_module(model, shape, tmp_path_factory.mktemp(f"op{i}"))
            prepared[case] = prepare(mod, model, x, dense_kernel=False, prefix=f"op{i}_")
        except Exception as err:  # reported by the case's test
            prepared[case] = err
    gpu.link([p.program for p in prepared.values() if isinstance(p, Prepared)])
    return prepared


@pytest.mark.parametrize("case", list(OPS))
def test_op_on_pocl_matches_torch(case, ops) -> None:
    prepared = ops[case]
    if isinstance(prepared, Exception):
        raise prepared
    err = check(prepared)
    assert err <= RTOL, f"{case}: relative error {err:.2e} (rules {prepared.rules})"
    assert "template" not in prepared.rules.values(), prepared.rules  # every op here is dlight's


def test_dense_3x3_goes_to_the_mali_template_and_convs_elsewhere_to_dlight(tmp_path) -> None:
    """With build()'s Mali defaults an unpruned 3x3 conv is the pattern template's 9-tap case, already
    scheduled; the 1x1 conv after it is dlight's (Matmul)."""
    model = seeded(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)), "template")
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype(np.float32)
    prepared = prepare(onnx_module(model, x.shape, tmp_path), model, x)
    assert check(prepared) <= RTOL
    assert sorted(prepared.rules.values()) == ["Matmul", "template"], prepared.rules


def test_build_for_mali_schedules_what_the_stock_pipeline_cannot(tmp_path) -> None:
    """``build(..., "mali")`` (``tvm-pattern compile --target mali``): the depthwise conv with a 1x1 output that
    makes TVM's stock GPU pipeline fail (dlight GEMV's assertion) compiles, and its OpenCL is in the library."""
    model = seeded(nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU6()), "stock")
    mod = onnx_module(model, (1, 16, 1, 1), tmp_path)
    with pytest.raises(AssertionError):  # dlight GEMV: `assert s_loops`
        tvm.compile(mod, target=TARGET, relax_pipeline=tvm.relax.get_default_pipeline(TARGET))
    ex = build(mod, "mali")
    opencl = [m for host in ex.mod.imports for m in host.imports if m.kind == "opencl"]
    assert len(opencl) == 1 and "__kernel" in opencl[0].inspect_source()


def test_a_rule_that_schedules_nothing_is_a_clear_error(tmp_path) -> None:
    mod = onnx_module(nn.ReLU(), (1, 4), tmp_path)
    with pytest.raises(Exception, match="no dlight GPU rule schedules"):
        gpu.schedule(mod, TARGET, gpu.ScheduleGPU(rules=[]))


def test_kernels_that_bind_their_own_threads_are_left_alone(tmp_path) -> None:
    """A generated GPU kernel without the ``tirx.is_scheduled`` mark (the block-sparse ones) is not rescheduled:
    dlight's rules would reject its thread-bound body and fail the build."""
    scheduled = gpu.schedule(onnx_module(nn.ReLU(), (1, 4), tmp_path), TARGET)
    gvar = next(g for g, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    kernel = scheduled[gvar].without_attr("tirx.is_scheduled")
    scheduled[gvar] = kernel
    again = gpu.ScheduleGPU()
    with TARGET:
        result = again(scheduled)
    assert not again.chosen and tvm_ffi.structural_equal(result[gvar], kernel)


def relax_ops(mod: tvm.IRModule) -> set[str]:
    calls = [b.value for block in mod["main"].body.blocks for b in block.bindings]
    return {c.op.name for c in calls if isinstance(c, tvm.relax.Call) and isinstance(c.op, tvm.ir.Op)}


def test_weight_ops_and_clip_bounds_fold_with_numpy(tmp_path) -> None:
    """The bias reshape and ReLU6's ``where(isnan(c), inf, c)`` bounds are gone before FoldConstant sees them
    (the per-op ReLU6 cases above check the numbers)."""
    mod = onnx_module(seeded(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU6()), "fold"), (1, 4, 3, 3), tmp_path)
    assert {"relax.isnan", "relax.where", "relax.reshape"} <= relax_ops(mod)
    assert not {"relax.isnan", "relax.where", "relax.reshape"} & relax_ops(gpu.fold_weight_ops(mod))


# ---------------------------------------------------------------------------------------------- whole models

SIZE = 32
MODELS = {  # name, builder kwargs, compression (8x: all 3x3 convs but the first pruned) and the rules expected
    # ResNet-50's bottleneck blocks, 7x7 stem, max-pool and strided 1x1 downsamples, one block per stage
    "resnet50-8x": ("resnet50", {"scale": 0.125, "num_classes": 10, "layers": (1, 1, 1, 1)}, 8.0,
                    {"template", "Matmul", "GEMV", "Reduction", "Fallback"}),
    # seed 4: MobileNet-V2's fp32 output at this size is 2e-5 from fp64 (seed 0: 7e-5, some seeds 1.6e-4)
    "mobilenetv2": ("mobilenetv2", {"scale": 0.125, "num_classes": 10, "seed": 4}, None,
                    {"template", "Matmul", "GeneralReduction", "GEMV", "Reduction", "Fallback"}),
    "vgg16-fc-8x": ("vgg16", {"scale": 0.125, "num_classes": 10, "fc": 256, "pool": 1}, 8.0,
                    {"template", "Reduction", "Fallback"}),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MODELS))
def test_reduced_model_on_pocl_matches_torch(case, tmp_path) -> None:
    name, kwargs, compression, rules = MODELS[case]
    model = models.build(name, size=SIZE, **kwargs)
    models.prune_model(model, compression)
    mod = import_onnx(models.export_onnx(model, tmp_path / f"{name}.onnx", size=SIZE))
    x = torch.randn((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1)).numpy()
    with torch.no_grad():  # a model whose fp32 output is itself far from fp64 cannot be checked at 1e-4
        ref, exact = model(torch.from_numpy(x)), copy.deepcopy(model).double()(torch.from_numpy(x).double())
    assert relative_error(ref.numpy(), exact.numpy()) <= RTOL / 4, "the reduced model is ill-conditioned"
    prepared = prepare(mod, model, x)
    err = check(prepared)
    assert err <= RTOL, f"{case}: relative error {err:.2e}"
    assert set(prepared.rules.values()) == rules, prepared.rules
