"""The pattern-sparse pass absorbs a 2x2 / stride-2 max-pool after conv (+ bias + ReLU) where the kernel pays for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.cnn_models import library8, prune_weight
from helpers.relax_modules import conv_module, count_calls, reference, run

from tvm_pattern.passes import PatternSparseConv2d
from tvm_pattern.targets import arm_target

RNG = np.random.default_rng(7)
POOL = {"pool_size": 2, "strides": 2}


def weight(o: int, i: int, keep: float = 1 / 3.6) -> np.ndarray:
    return prune_weight(RNG.standard_normal((o, i, 3, 3)).astype(np.float32), library8(), keep=keep)


def test_pool_is_stored_by_the_kernel():
    """A 2 MB output map: fused on any x86 block (``schedules.x86.fuses_pool``); numerics against PyTorch."""
    w, bias, shape = weight(4, 4), RNG.standard_normal(4).astype(np.float32), (1, 4, 256, 512)
    sparse = PatternSparseConv2d(library8())
    mod = sparse(conv_module(w, shape, bias=bias, relu=True, pool=POOL))
    assert count_calls(mod, "relax.nn.max_pool2d") == 0 and count_calls(mod, "pattern_conv2d") == 1
    (report,) = sparse.summary
    assert report.epilogue == ("bias", "relu", "max_pool") and "+max_pool" in str(report)
    x = RNG.standard_normal(shape).astype(np.float32)
    expected = F.max_pool2d(torch.from_numpy(reference(x, w, bias, relu=True)), 2).numpy()
    got = run(mod, x)
    assert got.shape == (1, 4, 128, 256)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["3x3 pool", "padded pool", "ceil mode", "odd map", "extra use", "winograd", "arm"])
def test_other_pools_stay(case):
    w, shape, pool, kwargs, module = weight(4, 4), (1, 4, 256, 512), dict(POOL), {}, {}
    if case == "3x3 pool":
        pool = {"pool_size": 3, "strides": 2}
    elif case == "padded pool":
        pool["padding"] = 1
    elif case == "ceil mode":
        pool["ceil_mode"] = True
    elif case == "odd map":
        shape = (1, 4, 255, 512)
    elif case == "extra use":  # the full map is needed elsewhere
        module = {"extra_use": True}
    elif case == "winograd":  # pattern-only, 16 channels: Winograd, which stores no pool
        w, shape = weight(16, 16, keep=1.0), (1, 16, 32, 32)
    else:
        kwargs = {"target": arm_target()}
    sparse = PatternSparseConv2d(library8(), **kwargs)
    mod = sparse(conv_module(w, shape, relu=True, pool=pool, **module))
    assert count_calls(mod, "relax.nn.max_pool2d") == 1
    (report,) = sparse.summary
    assert report.rewritten and "max_pool" not in report.epilogue
    if case not in ("arm", "winograd"):
        x = RNG.standard_normal(shape).astype(np.float32)
        y = torch.from_numpy(reference(x, w, None, relu=True, extra_use=module.get("extra_use", False)))
        torch_pool = {"kernel_size": pool["pool_size"], "stride": pool["strides"], "padding": pool.get("padding", 0),
                      "ceil_mode": pool.get("ceil_mode", False)}  # fmt: skip
        np.testing.assert_allclose(run(mod, x), F.max_pool2d(y, **torch_pool).numpy(), rtol=1e-4, atol=1e-4)
