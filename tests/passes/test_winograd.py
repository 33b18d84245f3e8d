"""Which 3x3 convs the passes run as Winograd F(4x4, 3x3) (``schedules.winograd``), what they report, numerics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.cnn_models import library8, prune_weight
from helpers.relax_modules import conv_module, count_calls, reference, run
from tvm import relax

from tvm_pattern.passes import DenseKernels, PatternSparseConv2d
from tvm_pattern.schedules import winograd
from tvm_pattern.targets import arm_target, host_target
from tvm_pattern.tune import extract_tasks

RNG = np.random.default_rng(4)
SHAPE = (1, 16, 16, 16)


def weight(keep: float, o: int = 24, i: int = 16) -> np.ndarray:
    return prune_weight(RNG.standard_normal((o, i, 3, 3)).astype(np.float32), library8(), keep=keep)


def test_pattern_only_conv_runs_as_winograd_with_its_epilogue():
    w, bias = weight(1.0), RNG.standard_normal(24).astype(np.float32)
    sparse = PatternSparseConv2d(library8())
    mod = sparse(conv_module(w, SHAPE, bias=bias, relu=True))
    assert count_calls(mod, "winograd_conv2d") == 1 and count_calls(mod, "pattern_conv2d") == 0
    (report,) = sparse.summary
    assert report.sparse and report.winograd and "Winograd" in str(report)
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(run(mod, x), reference(x, w, bias, relu=True), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["connectivity", "arm", "config", "few channels", "small map"])
def test_the_pattern_kernel_keeps_the_other_convs(case):
    w, shape, kwargs = weight(1.0), SHAPE, {}
    if case == "connectivity":  # 8x: density 0.12, below MIN_DENSITY
        w = weight(1 / 3.6)
    elif case == "arm":
        kwargs = {"target": arm_target()}
    elif case == "config":  # knobs of the pattern kernel asked for
        kwargs = {"config": {"rows": 2, "cols": 8, "vector": 8, "threads": 2}}
    elif case == "few channels":
        w, shape = weight(1.0, i=8), (1, 8, 16, 16)
    else:
        shape = (1, 16, 7, 7)
    sparse = PatternSparseConv2d(library8(), **kwargs)
    mod = sparse(conv_module(w, shape))
    assert count_calls(mod, "pattern_conv2d") == 1 and not sparse.summary[0].winograd


def test_unsuited_names_the_reason():
    target = host_target()
    assert winograd.unsuited((8, 16, 3, 3), SHAPE, (1, 1), 0.44, target) is None
    assert "density" in winograd.unsuited((8, 16, 3, 3), SHAPE, (1, 1), 0.12, target)
    assert "stride" in winograd.unsuited((8, 16, 3, 3), SHAPE, (2, 2), 1.0, target)
    assert "arm_cpu" in winograd.unsuited((8, 16, 3, 3), SHAPE, (1, 1), 1.0, arm_target())


def residual_module(w: np.ndarray, shape) -> relax.Function:
    """relu(conv(x, W) + x): the tail of a ResNet basic block."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, x)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_dense_conv_with_residual_runs_as_winograd():
    w = RNG.standard_normal((16, 16, 3, 3)).astype(np.float32) / 12
    dense = DenseKernels()
    mod = dense(residual_module(w, SHAPE))
    assert count_calls(mod, "winograd_conv2d") == 1
    conv = next(r for r in dense.summary if r.op == "conv2d")
    assert conv.winograd and "residual" in conv.epilogue and "Winograd" in str(conv)
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    want = torch.relu(torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), padding=1) + torch.tensor(x))
    np.testing.assert_allclose(run(mod, x), want.numpy(), rtol=1e-4, atol=1e-4)


def test_tuning_skips_winograd_layers():
    mod = conv_module(weight(1.0), SHAPE)
    assert extract_tasks(mod, "x86", library8(), ops="templates") == []
    assert len(extract_tasks(conv_module(weight(1 / 3.6), SHAPE), "x86", library8())) == 1


def block_weight(o: int = 48, i: int = 256, group: int = 6, keep: float = 1 / 3.6) -> np.ndarray:
    """Patterns, then 1/3.6 of the kernels in blocks of ``group`` filters sharing their channels (8x)."""
    w = weight(1.0, o, i)
    chosen = np.random.default_rng(group).random((-(-o // group), i)) < keep
    return w * np.repeat(chosen, group, axis=0)[:o, :, None, None]


@pytest.mark.parametrize("group", [6, 12, 4])
def test_block_pruned_conv_runs_as_sparse_winograd(group):
    w, bias, shape = block_weight(group=group), RNG.standard_normal(48).astype(np.float32), (1, 256, 14, 14)
    assert winograd.sparse_block(w, shape, (1, 1), host_target()) == (4 if group == 4 else 6, None)
    sparse = PatternSparseConv2d(library8())
    mod = sparse(conv_module(w, shape, bias=bias, relu=True))
    assert count_calls(mod, "winograd_conv2d") == 1 and count_calls(mod, "pattern_conv2d") == 0
    assert sparse.summary[0].winograd and sparse.summary[0].kept_kernels == np.count_nonzero(w.any(axis=(2, 3)))
    assert extract_tasks(conv_module(w, shape), "x86", library8(), ops="templates") == []
    x = RNG.standard_normal(shape).astype(np.float32)
    want = reference(x, w, bias, relu=True)  # outputs ~20 here: the error is relative to the largest
    np.testing.assert_allclose(run(mod, x), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", ["per kernel", "few channels", "large map", "arm"])
def test_sparse_winograd_only_where_it_pays(case):
    w, shape, target = block_weight(), (1, 256, 14, 14), host_target()
    if case == "per kernel":  # connectivity pruned kernel by kernel: blocks of 6 filters keep the union
        w = weight(1 / 3.6, 48, 256)
    elif case == "few channels":
        w, shape = block_weight(i=128), (1, 128, 14, 14)
    elif case == "large map":
        shape = (1, 256, 56, 56)
    else:
        target = arm_target()
    mr, why = winograd.sparse_block(w, shape, (1, 1), target)
    assert mr == 0 and why
    expected = {"per kernel": "fill", "few channels": "channels", "large map": "larger", "arm": "arm_cpu"}[case]
    assert expected in why
    if case != "large map":  # (a 56x56 map of 256 channels compiles slowly; the rule above is what decides)
        sparse = PatternSparseConv2d(library8(), target=target)
        mod = sparse(conv_module(w, shape))
        assert count_calls(mod, "pattern_conv2d") == 1 and not sparse.summary[0].winograd
