"""`tvm-pattern bench` on a two-layer stand-in suite: the JSON it promises, and ours equal to PyTorch end to end.

No timing is asserted (speed lives in the benchmark's own output), only structure and numerics.
"""

import json
import math

import numpy as np
import pytest

from tvm_pattern import bench, cli
from tvm_pattern.errors import TvmPatternError

MINI_VGG = [bench.Layer("conv1_1", 3, 64, 224, pool=True), bench.Layer("conv2_1", 64, 32, 112, pool=True)]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bench.SUITES, "vgg16", MINI_VGG)
        code = cli.main(["bench", "--suite", "vgg16", "--compression", "8", "--json", str(path),
                         "--repeats", "2", "--quiet"])  # fmt: skip
    assert code == 0
    return json.loads(path.read_text())


@pytest.mark.slow
def test_json_has_every_measurement(result):
    assert [row["name"] for row in result["layers"]] == ["conv1_1", "conv2_1"]
    for row in result["layers"]:
        assert all(row[key] > 0 for key in ("torch_ms", "tvm_dense_ms", "sparse_ms"))
        assert row["speedup_vs_torch"] == pytest.approx(row["torch_ms"] / row["sparse_ms"])
        assert row["kept_kernels"] == round(row["total_kernels"] / 3.6)
    # VGG's geomean skips the first layer.
    assert result["geomean_speedup_vs_torch"] == pytest.approx(result["layers"][1]["speedup_vs_torch"])
    e2e = result["end_to_end"]
    assert e2e["torch_ms"] > 0 and e2e["sparse_ms"] > 0


@pytest.mark.slow
def test_conv_stack_matches_pytorch(result):
    e2e = result["end_to_end"]
    assert e2e["max_abs_ref"] > 0
    assert e2e["max_abs_err_vs_torch"] <= 1e-4 * max(1.0, e2e["max_abs_ref"])


def test_pruned_suite_fits_the_library():
    weights, library = bench.prune_suite(MINI_VGG, 2.25)
    for w in weights:
        kernels = w.reshape(-1, 3, 3) != 0
        assert all(library.index_of(k) >= 0 for k in kernels)
    assert math.isclose(np.mean([k.sum() for k in kernels]), 4.0)


def test_bad_suite_and_compression_are_named():
    with pytest.raises(TvmPatternError, match="unknown suite"):
        bench.run_bench("alexnet", 8, None)
    with pytest.raises(TvmPatternError, match=r"compression must be 2\.25 or 8"):
        bench.prune_suite(MINI_VGG, 4.0)
