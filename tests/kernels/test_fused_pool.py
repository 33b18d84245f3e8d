"""The pattern kernel with a fused 2x2 max-pool equals torch's max_pool2d(relu(conv2d)) on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.kernels import TARGET, pruned, reference, run
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tvm.target import Target

from tvm_pattern.errors import PatternError
from tvm_pattern.kernels.pattern_conv2d import unscheduled
from tvm_pattern.schedules import x86
from tvm_pattern.sparsity.format import pack

AVX2 = Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})  # 16 vector registers: odd best blocks


def pooled_reference(x, w, bias, stride, padding, relu) -> np.ndarray:
    return F.max_pool2d(torch.from_numpy(reference(x, w, bias, stride, padding, relu)), 2).numpy()


@st.composite
def pool_cases(draw):
    stride = draw(st.sampled_from([1, 1, 2]))
    padding = tuple(draw(st.sampled_from([0, 1, 1, 2])) for _ in range(4))
    # output sizes even: (h + top + bottom - 3) // stride + 1
    oh, ow = (2 * draw(st.integers(1, 7)) for _ in range(2))
    h = (oh - 1) * stride + 3 - padding[0] - padding[2]
    w = (ow - 1) * stride + 3 - padding[1] - padding[3]
    assume(h >= 1 and w >= 1)
    return {
        "batch": draw(st.integers(1, 2)), "cin": draw(st.integers(1, 9)), "cout": draw(st.integers(1, 11)),
        "hw": (h, w), "stride": stride, "padding": padding, "k": draw(st.integers(1, 8)),
        "keep": draw(st.sampled_from([0.3, 1.0])), "bias": draw(st.booleans()), "relu": draw(st.booleans()),
        "config": {"rows": draw(st.sampled_from([2, 4, 6])), "cols": draw(st.sampled_from([4, 8, 12, 16])),
                   "vector": draw(st.sampled_from([4, 8])), "threads": draw(st.integers(1, 3)),
                   "peel": draw(st.booleans()), "chunk": draw(st.sampled_from([0, 0, 2, 3]))},
        "seed": draw(st.integers(0, 2**16)),
    }  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pool_cases())
def test_fused_pool_matches_torch(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    w, lib = pruned(rng, case["cout"], case["cin"], case["k"], 4, case["keep"])
    x = rng.standard_normal((case["batch"], case["cin"], *case["hw"])).astype(np.float32)
    bias = rng.standard_normal(case["cout"]).astype(np.float32) if case["bias"] else None
    ref = pooled_reference(x, w, bias, case["stride"], case["padding"], case["relu"])
    strides = (case["stride"],) * 2
    kernel = x86.generate(pack(w, lib), x.shape, strides, case["padding"], bias is not None, case["relu"], TARGET,
                          case["config"], pool=True)  # fmt: skip
    assert kernel.out_shape == ref.shape
    got = run(kernel.func, kernel.arrays, x, bias, kernel.out_shape)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_default_block_is_made_even() -> None:
    """At 28x28 on AVX2 the best block has 5 rows; a pooled kernel takes the cheapest even one."""
    rng = np.random.default_rng(3)
    w, lib = pruned(rng, 16, 32, 8, 4, 0.3)
    packed, x = pack(w, lib), rng.standard_normal((1, 32, 28, 28)).astype(np.float32)
    assert x86.default_config(packed, x.shape, (1, 16, 28, 28), AVX2).rows % 2 == 1
    kernel = x86.generate(packed, x.shape, relu=True, target=AVX2, pool=True)
    got = run(kernel.func, kernel.arrays, x, None, kernel.out_shape)
    np.testing.assert_allclose(got, pooled_reference(x, w, None, 1, (1, 1, 1, 1), True), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape, config, message", [
    ((1, 4, 9, 10), {"rows": 2, "cols": 8}, "even output size"),
    ((1, 4, 10, 10), {"rows": 3, "cols": 8}, "even output block"),
])  # fmt: skip
def test_pool_refuses_odd_sizes(shape, config, message) -> None:
    w, lib = pruned(np.random.default_rng(0), 4, 4, 4, 4, 1.0)
    with pytest.raises(PatternError, match=message):
        unscheduled(pack(w, lib), shape, config={**config, "threads": 1}, pool=True)


def test_fuses_pool_rule() -> None:
    """Fused when the best block is even or the map is large; not for a small map whose best block is odd."""
    rng = np.random.default_rng(5)
    target = AVX2
    w, lib = pruned(rng, 64, 16, 8, 4, 0.3)
    packed = pack(w, lib)
    assert x86.fuses_pool(packed, (1, 16, 56, 56), (1, 64, 56, 56), target)  # 8x8 blocks: even
    assert not x86.fuses_pool(packed, (1, 16, 14, 14), (1, 64, 14, 14), target)  # 7 rows, 50 KB
    assert x86.fuses_pool(packed, (1, 16, 224, 224), (1, 64, 224, 224), target)  # 5 rows, 12.8 MB
    assert not x86.fuses_pool(packed, (1, 16, 15, 16), (1, 64, 15, 16), target)  # odd height
