"""Whole models and every dense-kernel template compiled for the ``arm`` target (aarch64 + NEON), cross-linked,
run on the emulated phone (qemu-user + TVM RPC) and compared with PyTorch on the same weights.

- reduced ResNet-50 (3x3 convs at 8x), MobileNet-V2 (dense) and VGG-16 with its FC layers (3x3 at 8x) through
  ``compile_file(..., "arm")``: pattern-sparse 3x3 convs, every other conv / depthwise / dense layer a generated
  dense kernel with the arm_cpu NEON knobs (4 lanes, 32 registers), run by the Relax VM over RPC;
- each dense template (conv 1x1, 3x3 s1/s2, the 7x7/s2 stem, depthwise 3x3 s1/s2, linear at batch 1 and 4) with
  its fused epilogues (bias, folded BN, ReLU, ReLU6 / clip, residual add), the defaults and a few explicit knobs
  whose blocks do not divide the shapes, all in one library (one upload).

Emulated times mean nothing; these check that the NEON code is right. The phone is set up on first use
(``EmulatedPhone.setup``, cached in ~/.cache/tvm-pattern/phone).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from tvm_pattern.bench import models
from tvm_pattern.devices import cross
from tvm_pattern.devices.phone import EmulatedPhone
from tvm_pattern.kernels.dense import DenseKnobs
from tvm_pattern.kernels.dense_common import DenseKernel
from tvm_pattern.kernels.dense_conv2d import ConvKnobs
from tvm_pattern.kernels.depthwise_conv2d import DepthwiseKnobs
from tvm_pattern.passes import BlockSparseReport, ConvReport, DenseReport, DepthwiseReport
from tvm_pattern.pipeline import compile_file
from tvm_pattern.pipeline.compile import final_reports
from tvm_pattern.schedules import dense_cpu
from tvm_pattern.targets import arm_target

TARGET = arm_target()
REL_ERR = 1e-4

# reduced models: (builder kwargs, compression, input size); 56 px gives 7x7 and odd maps deeper down
MODELS = {
    "resnet50": ({"scale": 0.25, "num_classes": 10}, 8.0, 56),
    "mobilenetv2": ({"scale": 0.25, "num_classes": 10}, 8.0, 56),  # dense depthwise: the template tests
    "vgg16": ({"scale": 0.125, "num_classes": 10, "pool": 2}, 8.0, 64),
}


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(autouse=True)
def debian_cross_compiler(monkeypatch):
    """Link with Debian's aarch64 g++ even where an Android NDK is configured: the phone runs glibc, not bionic."""
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)


@pytest.fixture(scope="module")
def phone_server():
    """One RPC server on the emulated phone for the module (starting one takes ~20 s under emulation)."""
    phone = EmulatedPhone()
    phone.setup()
    with phone.server() as server:
        yield server


@pytest.fixture(scope="module")
def session(phone_server):
    """The module's one RPC session: TVM's server serves one session at a time, and a second ``connect`` while
    one is open waits (forever) for it to end."""
    remote = phone_server.connect()
    yield remote
    del remote


# ---------------------------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Case:
    """One kernel: ``kernel`` to build for the Arm target, its runtime ``inputs`` and PyTorch's ``want``."""

    kernel: DenseKernel
    inputs: tuple[np.ndarray, ...]
    want: np.ndarray


def _act(t: torch.Tensor, activation) -> torch.Tensor:
    if activation == "relu":
        return t.relu()
    if activation == "relu6":
        return t.clamp(0, 6)
    if isinstance(activation, tuple):
        return t.clamp(activation[1], activation[2])
    return t


def _bn(rng: np.random.Generator, channels: int) -> torch.nn.BatchNorm2d:
    """An inference BN with random statistics and affine parameters (what the pass folds into the kernel)."""
    bn = torch.nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, channels).astype(np.float32)))
        bn.bias.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, channels).astype(np.float32)))
        bn.running_mean.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, channels).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, channels).astype(np.float32)))
    return bn


def _fold(weight: np.ndarray, bias: np.ndarray | None, bn: torch.nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """BN after a conv folded into its weight and bias, as ``epilogue.match_activation_epilogue`` does."""
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    shift = bn.bias.detach().numpy() - bn.running_mean.numpy() * scale
    b = shift if bias is None else bias * scale + shift
    return (weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32), b.astype(np.float32)


def conv_case(
    c: int,
    oc: int,
    hw: int,
    k: int,
    s: int,
    pad: int,
    bias: bool = True,
    bn: bool = False,
    activation=None,
    residual: bool = False,
    depthwise: bool = False,
    knobs=None,
    seed: int = 0,
) -> Case:
    """A conv2d / depthwise kernel (default arm knobs unless ``knobs``) and torch's result on the same weights."""
    rng = np.random.default_rng(seed)
    groups = c if depthwise else 1
    weight = (rng.standard_normal((oc, c // groups, k, k)) / np.sqrt(c // groups * k * k)).astype(np.float32)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) if bias else None
    with torch.no_grad():
        want = torch.nn.functional.conv2d(
            torch.from_numpy(x),
            torch.from_numpy(weight),
            None if b is None else torch.from_numpy(b),
            s,
            pad,
            groups=groups,
        )
        norm = _bn(rng, oc) if bn else None
        if norm is not None:
            want = norm(want)
            weight, b = _fold(weight, b, norm)
        inputs = [x]
        if residual:
            r = rng.standard_normal(want.shape).astype(np.float32)
            want = want + torch.from_numpy(r)
            inputs.append(r)
        want = _act(want, activation).numpy()
    build = dense_cpu.depthwise if depthwise else dense_cpu.conv2d
    kernel = build(weight, x.shape, (s, s), (pad,) * 4, b, activation, residual, target=TARGET, knobs=knobs)
    return Case(kernel, tuple(inputs), want)


def linear_case(i: int, o: int, batch: int, bias: bool = True, activation=None, knobs=None, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)
    x = rng.standard_normal((batch, i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    with torch.no_grad():
        want = torch.nn.functional.linear(
            torch.from_numpy(x), torch.from_numpy(weight), None if b is None else torch.from_numpy(b)
        )
        want = _act(want, activation).numpy()
    kernel = dense_cpu.linear(weight, batch, b, activation, target=TARGET, knobs=knobs)
    return Case(kernel, (x,), want)


TEMPLATES: dict[str, Callable[[], Case]] = {
    # conv2d 1x1: ResNet's expand / project (residual + ReLU), the strided downsample (phase planes), MobileNet's
    # project (BN, no activation) with fewer channels than a register block
    "conv1x1_s1_bn_residual_relu": lambda: conv_case(16, 40, 7, 1, 1, 0, False, True, "relu", True),
    "conv1x1_s1_bias_relu6_28": lambda: conv_case(8, 24, 28, 1, 1, 0, True, False, "relu6"),
    "conv1x1_s1_bn_narrow": lambda: conv_case(24, 6, 14, 1, 1, 0, False, True),
    "conv1x1_s2_bn": lambda: conv_case(24, 20, 14, 1, 2, 0, False, True),
    # conv2d 3x3 (an unpruned 3x3 goes to the dense kernel)
    "conv3x3_s1_bn_relu": lambda: conv_case(16, 24, 14, 3, 1, 1, False, True, "relu"),
    "conv3x3_s1_bias_residual_odd": lambda: conv_case(5, 7, 9, 3, 1, 1, True, False, "relu", True),
    "conv3x3_s2_bn_relu6": lambda: conv_case(16, 24, 15, 3, 2, 1, False, True, "relu6"),
    "conv3x3_s2_bias_clip": lambda: conv_case(8, 12, 16, 3, 2, 1, True, False, ("clip", -0.5, 0.5)),
    # stems: ResNet's 7x7/s2 pad 3 (row mode), MobileNet's 3x3/s2 pad 1
    "stem7x7_s2_bn_relu": lambda: conv_case(3, 16, 32, 7, 2, 3, False, True, "relu"),
    "stem7x7_s2_bias_odd": lambda: conv_case(3, 8, 29, 7, 2, 3, True),
    "stem3x3_s2_bn_relu6": lambda: conv_case(3, 16, 32, 3, 2, 1, False, True, "relu6"),
    # depthwise 3x3
    "dw3x3_s1_bn_relu6": lambda: conv_case(24, 24, 14, 3, 1, 1, False, True, "relu6", depthwise=True),
    "dw3x3_s1_bias_residual_7": lambda: conv_case(16, 16, 7, 3, 1, 1, True, False, None, True, True),
    "dw3x3_s2_bn_relu6": lambda: conv_case(24, 24, 15, 3, 2, 1, False, True, "relu6", depthwise=True),
    "dw3x3_s2_bias_clip": lambda: conv_case(8, 8, 16, 3, 2, 1, True, False, ("clip", -0.5, 0.5), depthwise=True),
    # linear: batch 1 (GEMV, FC layers) and batch 4
    "linear_b1_bias_relu": lambda: linear_case(200, 37, 1, True, "relu"),
    "linear_b1_fc": lambda: linear_case(512, 10, 1),
    "linear_b4_bias": lambda: linear_case(96, 50, 4),
    "linear_b4_relu6_nobias": lambda: linear_case(33, 20, 4, False, "relu6"),
    # explicit knobs whose blocks and tiles do not divide the shapes (what tuning may pick)
    "conv3x3_knobs_5x2_nopanel": lambda: conv_case(
        6, 19, 11, 3, 1, 1, True, False, "relu", True, knobs=ConvKnobs(5, 2, 4, 3, 2, 3)
    ),
    "conv1x1_knobs_7x4_panel": lambda: conv_case(
        12, 23, 9, 1, 1, 0, True, False, "relu6", knobs=ConvKnobs(7, 4, 4, 2, 3, 4, panel=True)
    ),
    "conv3x3_s2_knobs_rows": lambda: conv_case(
        5, 9, 13, 3, 2, 1, True, False, None, knobs=ConvKnobs(3, 2, 4, 1, 2, 2, rows=True)
    ),
    "conv3x3_knobs_8lanes": lambda: conv_case(
        4, 10, 10, 3, 1, 1, True, False, "relu", knobs=ConvKnobs(3, 1, 8, 2, 1, 3, panel=True)
    ),
    "dw3x3_knobs_3x2": lambda: conv_case(
        10, 10, 13, 3, 1, 1, True, False, "relu", depthwise=True, knobs=DepthwiseKnobs(3, 2, 4, 3)
    ),
    "linear_b4_knobs_5": lambda: linear_case(70, 13, 4, True, "relu", knobs=DenseKnobs(5, 4, 3)),
    # the tuning space's largest NEON blocks (16x1, 14x2: 28 accumulators, 6x4) and twice the cores as threads
    "conv3x3_knobs_16x1_8threads": lambda: conv_case(
        8, 37, 12, 3, 1, 1, True, True, "relu", knobs=ConvKnobs(16, 1, 4, 2, 3, 8, panel=True)
    ),
    "conv1x1_knobs_14x2": lambda: conv_case(
        16, 30, 10, 1, 1, 0, False, True, "relu", True, knobs=ConvKnobs(14, 2, 4, 1, 2, 4)
    ),
    "stem7x7_knobs_6x4_rows": lambda: conv_case(
        3, 8, 29, 7, 2, 3, True, False, "relu", knobs=ConvKnobs(6, 4, 4, 1, 1, 8, rows=True)
    ),
    "linear_b1_knobs_1row_8threads": lambda: linear_case(130, 9, 1, True, None, knobs=DenseKnobs(1, 4, 8)),
}


def template_module(cases: dict[str, Case]) -> tvm.IRModule:
    """Every case's kernel in one module, each under its case name."""
    return tvm.IRModule({name: case.kernel.func.with_attr("global_symbol", name) for name, case in cases.items()})


@pytest.fixture(scope="module")
def templates(session, tmp_path_factory):
    """Every template case built for the Arm target into one library, uploaded once: (cases, remote module)."""
    cases = {name: make() for name, make in TEMPLATES.items()}
    executable = tvm.compile(template_module(cases), target=TARGET)
    path = tmp_path_factory.mktemp("phone-templates") / "dense_templates.so"
    executable.export_library(str(path), **cross.export_options(TARGET))
    session.upload(str(path))
    return cases, session.load_module(path.name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_dense_template_on_phone(phone_server, session, templates, name):
    """The kernel, cross-compiled for aarch64 + NEON and run on the phone, equals PyTorch on the same weights."""
    cases, module = templates
    case = cases[name]
    dev = session.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (*case.inputs, *case.kernel.arrays)]
    out = tvm.runtime.tensor(np.full(case.kernel.out_shape, np.nan, np.float32), dev)
    with phone_server.errors():
        module[name](*args, out)
        got = out.numpy()
    assert got.shape == case.want.shape
    assert np.abs(case.want).max() > 1e-2
    assert rel_err(got, case.want) <= REL_ERR, name


def test_dense_templates_use_neon_fma():
    """Each template's aarch64 assembly multiplies-adds on 4-lane fp32 NEON vectors (the NEON knobs took)."""
    cases = {
        name: TEMPLATES[name]()
        for name in ("conv1x1_s1_bn_residual_relu", "stem7x7_s2_bn_relu", "dw3x3_s2_bn_relu6", "linear_b1_fc")
    }
    for name, case in cases.items():
        asm = tvm.compile(tvm.IRModule({"main": case.kernel.func}), target=TARGET).mod.inspect_source("asm")
        assert re.search(r"fmla\s+v\d+\.4s", asm), f"{name}: no NEON fmla on .4s vectors in its assembly"


# ---------------------------------------------------------------------------------------------- whole models


def _model(name: str, tmp_path: Path):
    """The reduced model, pruned one-shot in every layer type, as ONNX; a random input, PyTorch's output on it,
    the pruning report's layers."""
    kwargs, compression, size = MODELS[name]
    model = models.build(name, seed=0, size=size, **kwargs)
    pruned = models.prune_model(model, compression)["layers"]
    onnx_path = models.export_onnx(model, tmp_path / f"{name}.onnx", size=size)
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return model, onnx_path, x, want, pruned


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_whole_model_on_phone(phone_server, session, tmp_path, name):
    """``compile_file(..., "arm")`` -> the library on the phone -> Relax VM over RPC equals PyTorch; every conv and
    linear layer ran a generated kernel: each pruned one the sparse kernel of its type (pattern 3x3, pattern
    depthwise, block-sparse 1x1 / FC), the others the dense pass's with the NEON knobs."""
    model, onnx_path, x, want, pruned = _model(name, tmp_path)
    reports, sparse, dense = [], [], []
    lib = compile_file(onnx_path, "arm", tmp_path / f"{name}_arm.so", reports=reports, dense_reports=dense,
                       sparse_reports=sparse)  # fmt: skip
    final = final_reports([reports, sparse, dense])
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(final) == len(layers)
    assert all(r.rewritten for r in final), [str(r) for r in final if not r.rewritten]
    kinds = {"conv3x3": ConvReport, "depthwise": DepthwiseReport, "pointwise": BlockSparseReport,
             "linear": BlockSparseReport}  # fmt: skip
    expected = Counter(kinds[layer["type"]] for layer in pruned if layer["pruned"])
    taken = Counter(type(r) for r in final if not isinstance(r, DenseReport) and getattr(r, "sparse", True))
    assert taken == expected and taken  # each pruned layer runs the sparse kernel of its type on the phone
    session.upload(str(lib))
    dev = session.cpu()
    with phone_server.errors():
        vm = relax.VirtualMachine(session.load_module(lib.name), dev)
        got = vm["main"](tvm.runtime.tensor(x, dev)).numpy()
    del vm
    assert got.shape == want.shape == (1, 10)
    assert rel_err(got, want) <= REL_ERR
