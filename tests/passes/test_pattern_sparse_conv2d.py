"""PatternSparseConv2d: which convs it rewrites, which it leaves dense and why, strict mode, numerics."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
import tvm
from helpers.cnn_models import (
    SmallCNN,
    import_torch,
    import_torch_params,
    library8,
    prune_model,
    prune_weight,
    torch_out,
)
from helpers.relax_modules import conv_module, count_calls, reference, run
from tvm import relax

from tvm_pattern.errors import PatternError
from tvm_pattern.sparsity.library import PatternLibrary, candidate_patterns
from tvm_pattern.transform import PatternSparseConv2d

RNG = np.random.default_rng(0)


def sparse_weight(o: int = 8, i: int = 4, library: PatternLibrary | None = None) -> np.ndarray:
    return prune_weight(RNG.standard_normal((o, i, 3, 3)).astype(np.float32), library or library8(), keep=0.5)


@pytest.fixture(scope="module")
def small():
    """SmallCNN pruned to library8 (first conv dense), its torch.export module and input."""
    model = prune_model(SmallCNN(), library8())
    x = torch.randn(2, 3, 16, 16)
    return model, import_torch(model, x), x


@pytest.fixture(scope="module")
def small_rewritten(small):
    sparse = PatternSparseConv2d(library8())
    return sparse, sparse(small[1])


def test_rewrites_only_pattern_sparse_convs(small, small_rewritten):
    sparse, mod = small_rewritten
    assert count_calls(small[1], "relax.nn.conv2d") == 6
    assert count_calls(mod, "pattern_conv2d") == 3  # c2 (+bias+relu), c3 (stride 2), c5 (padding 0, +bias)
    assert count_calls(mod, "relax.nn.conv2d") == 3  # dense first conv, 1x1, depthwise
    assert [r.rewritten for r in sparse.summary] == [False, True, True, False, False, True]
    assert len(sparse.rewritten) == 3


def test_dense_reasons_name_the_conv(small_rewritten):
    dense = [r for r in small_rewritten[0].summary if not r.rewritten]
    assert "dense" in dense[0].reason and "9 taps" in dense[0].reason
    assert "1x1, not 3x3" in dense[1].reason
    assert "groups=12" in dense[2].reason
    for report in dense:
        assert report.name.startswith("conv2d '") and " in main" in report.name
        assert report.name in str(report)


def test_epilogue_fused(small_rewritten):
    sparse, mod = small_rewritten
    assert [r.epilogue for r in sparse.rewritten] == [("bias", "relu"), (), ("bias",)]
    assert count_calls(mod, "relax.nn.relu") == 2  # after the dense first conv and after the depthwise conv


def test_numerics_through_default_pipeline(small, small_rewritten):
    model, _, x = small
    np.testing.assert_allclose(run(small_rewritten[1], x.numpy()), torch_out(model, x), atol=1e-4, rtol=1e-4)


def test_params_bound_after_import(small):
    """keep_params_as_input + detach_params + BindParams gives the same constants as the default import."""
    model, _, x = small
    unbound = PatternSparseConv2d(library8())
    unbound(import_torch_params(model, x, bind=False))
    assert not unbound.rewritten and sum("not a constant" in r.reason for r in unbound.summary) == 4  # 3x3, groups 1
    sparse = PatternSparseConv2d(library8())
    mod = sparse(import_torch_params(model, x))
    assert len(sparse.rewritten) == 3
    np.testing.assert_allclose(run(mod, x.numpy()), torch_out(model, x), atol=1e-4, rtol=1e-4)


def test_strict_accepts_a_conforming_model(small):
    sparse = PatternSparseConv2d(library8(), strict=True)
    sparse(small[1])  # a dense first conv, a 1x1 and a depthwise conv are not errors
    assert len(sparse.rewritten) == 3


def test_library_inferred_from_zeros(small):
    sparse = PatternSparseConv2d()
    mod = sparse(small[1])
    assert count_calls(mod, "pattern_conv2d") == 3


def test_library_from_json_path(small, tmp_path):
    path = tmp_path / "patterns.json"
    library8().save(path)
    sparse = PatternSparseConv2d(str(path))
    sparse(small[1])
    assert len(sparse.rewritten) == 3


def test_usable_in_sequential_and_idempotent(small_rewritten):
    first = small_rewritten[1]
    again = PatternSparseConv2d(library8())
    mod = tvm.transform.Sequential([again, relax.transform.DeadCodeElimination()])(first)
    assert count_calls(mod, "pattern_conv2d") == 3 and not again.rewritten
    assert again.info.name == "PatternSparseConv2d"


def test_weight_fitting_no_library_pattern(caplog):
    others = PatternLibrary(candidate_patterns(4)[[1, 2, 3]])  # none of library8's patterns
    mod = conv_module(sparse_weight())
    sparse = PatternSparseConv2d(others)
    with caplog.at_level(logging.WARNING, logger="tvm_pattern.transform"):
        out = sparse(mod)
    assert count_calls(out, "relax.nn.conv2d") == 1
    assert "does not fit the pattern library" in sparse.summary[0].reason
    assert "conv2d 'conv' in main" in caplog.text
    with pytest.raises(PatternError, match=r"conv2d 'conv' in main: .*kernel \(out=\d+, in=\d+\)"):
        PatternSparseConv2d(others, strict=True)(mod)


def test_kernel_outside_every_pattern_without_library():
    weight = sparse_weight()
    weight[0, 0] = np.where(candidate_patterns(5)[0], 1.0, 0.0)  # 5 taps: the inferred library is this one mask
    sparse = PatternSparseConv2d()
    sparse(conv_module(weight))
    assert not sparse.summary[0].rewritten
    assert "inferred from its non-zeros" in sparse.summary[0].reason and "kernel (out=" in sparse.summary[0].reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"weight_as_param": True}, "weight is not a constant"),
        ({"dtype": "float16"}, "only float32"),
        ({"layouts": ("NHWC", "OHWI"), "data_shape": (1, 8, 8, 4)}, "layout NHWC/OHWI/NHWC"),
        ({"dilation": 2}, "dilation (2, 2)"),
    ],
)
def test_unsupported_convs_stay_dense_or_raise(kwargs, reason):
    weight = sparse_weight()
    if "layouts" in kwargs:
        weight = weight.transpose(0, 2, 3, 1)
    mod = conv_module(weight, **kwargs)
    sparse = PatternSparseConv2d(library8())
    out = sparse(mod)
    assert count_calls(out, "relax.nn.conv2d") == 1
    assert reason in sparse.summary[0].reason
    with pytest.raises(PatternError, match="conv2d 'conv' in main: .*" + re.escape(reason)):
        PatternSparseConv2d(library8(), strict=True)(mod)


def test_dense_conv_left_alone_even_in_strict_mode():
    weight = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    sparse = PatternSparseConv2d(library8(), strict=True)
    out = sparse(conv_module(weight))
    assert count_calls(out, "relax.nn.conv2d") == 1 and sparse.summary[0].reason.startswith("dense")


def test_dense_kernel_option_runs_unpruned_convs():
    weight = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    sparse = PatternSparseConv2d(library8(), dense_kernel=True)
    mod = sparse(conv_module(weight, bias=b, relu=True))
    report = sparse.summary[0]
    assert report.rewritten and report.dense_kernel and not report.sparse and report.epilogue == ("bias", "relu")
    assert count_calls(mod, "relax.nn.conv2d") == 0
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(mod, x), reference(x, weight, b, relu=True), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("bias", "relu", "extra_use", "epilogue"),
    [
        (True, True, False, ("bias", "relu")),
        (False, True, False, ("relu",)),
        (True, False, False, ("bias",)),
        (True, True, True, ()),  # the conv result has a second user: fusing would keep a dense copy alive
    ],
)
def test_epilogue_variants(bias, relu, extra_use, epilogue):
    weight = sparse_weight()
    b = RNG.standard_normal(8).astype(np.float32) if bias else None
    mod = conv_module(weight, bias=b, relu=relu, extra_use=extra_use)
    sparse = PatternSparseConv2d(library8())
    out = sparse(mod)
    assert sparse.summary[0].epilogue == epilogue
    assert count_calls(out, "relax.nn.conv2d") == 0
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), reference(x, weight, b, relu, extra_use), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("data_shape", "padding", "strides"),
    [((2, 4, 9, 11), (0, 1, 2, 1), (2, 2)), ((1, 4, 7, 6), (2, 0, 1, 2), (1, 2)), ((1, 4, 5, 5), (0, 0, 0, 0), (2, 1))],
)
def test_padding_and_strides_pass_through(data_shape, padding, strides):
    """relax's (top, left, bottom, right) padding and (h, w) strides reach the kernel unchanged."""
    weight = sparse_weight()
    b = RNG.standard_normal(8).astype(np.float32)
    sparse = PatternSparseConv2d(library8())
    mod = sparse(conv_module(weight, data_shape, padding=padding, strides=strides, bias=b, relu=True))
    assert sparse.summary[0].epilogue == ("bias", "relu")
    x = RNG.standard_normal(data_shape).astype(np.float32)
    top, left, bottom, right = padding
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    y = torch.nn.functional.conv2d(torch.from_numpy(padded), torch.from_numpy(weight), torch.from_numpy(b), strides)
    np.testing.assert_allclose(run(mod, x), torch.relu(y).numpy(), atol=1e-4, rtol=1e-4)


def test_per_element_add_is_not_a_bias():
    """An add of a full (1, O, H, W) constant is not a per-channel bias: it must stay a separate add."""
    weight = sparse_weight()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    plane = RNG.standard_normal((1, 8, 8, 8)).astype(np.float32)
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), padding=1), name_hint="conv")
            out = bb.emit_output(relax.op.add(conv, relax.const(plane)))
        bb.emit_func_output(out)
    sparse = PatternSparseConv2d(library8())
    mod = sparse(bb.get())
    assert sparse.summary[0].epilogue == ()
    xv = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(mod, xv), reference(xv, weight) + plane, atol=1e-4, rtol=1e-4)


def test_bad_library_argument(tmp_path):
    with pytest.raises(PatternError, match="does not exist"):
        PatternSparseConv2d(tmp_path / "missing.json")
