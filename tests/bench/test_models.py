"""`bench --model`: the built-in whole models (reduced widths and input) compiled by us against PyTorch and
ONNX Runtime, the one-shot pruning, the op-type breakdown, and the bench's JSON with every runtime either
measured or marked missing. No timing is asserted."""

import importlib.util
import json
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from tvm_pattern import cli
from tvm_pattern.bench import models, peers, profile
from tvm_pattern.errors import TvmPatternError
from tvm_pattern.passes import BlockSparseReport, ConvReport, DenseReport, DepthwiseReport
from tvm_pattern.prune.projection import kept_kernels

SIZE = 64
SMALL = {
    "resnet50": {"scale": 0.25, "num_classes": 10},
    "mobilenetv2": {"scale": 0.25, "num_classes": 10},
    "vgg16": {"scale": 0.125, "num_classes": 10, "pool": 2},
}


def rel_err(y, ref) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def small(name: str, seed: int = 0) -> torch.nn.Module:
    return models.build(name, seed=seed, size=SIZE, **SMALL[name])


def ort_output(onnx_path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output (a dev dependency: the tests always compare against it)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(
    ("name", "compression"),
    [pytest.param("resnet50", 8.0, marks=pytest.mark.slow), pytest.param("mobilenetv2", None, marks=pytest.mark.slow),
     pytest.param("mobilenetv2", 8.0, marks=pytest.mark.slow), ("vgg16", 8.0)])  # fmt: skip
def test_compiled_model_matches_pytorch_and_onnxruntime(name, compression, tmp_path):
    """Pruned one-shot in every layer type (or dense), compiled: every conv / linear runs one of our kernels, each
    pruned layer a sparse one of its type, and the outputs equal PyTorch's and ONNX Runtime's."""
    from tvm_pattern import compiler
    from tvm_pattern.pipeline.compile import final_reports

    model = small(name)
    pruned = models.prune_model(model, compression)["layers"]
    onnx_path = models.export_onnx(model, tmp_path / f"{name}.onnx", size=SIZE)
    x = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    reports, sparse, dense = [], [], []
    lib = compiler.compile_file(onnx_path, "x86", tmp_path / f"{name}.so", reports=reports, dense_reports=dense,
                                sparse_reports=sparse)  # fmt: skip
    got = compiler.load(lib)(x)
    assert got.shape == want.shape == (1, 10)
    assert rel_err(got, want) <= 1e-4
    final = final_reports([reports, sparse, dense])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(final) == len(convs) + len(linears)
    assert all(r.rewritten for r in final), [str(r) for r in final if not r.rewritten]
    kinds = {"conv3x3": ConvReport, "depthwise": DepthwiseReport, "pointwise": BlockSparseReport,
             "linear": BlockSparseReport}  # fmt: skip
    expected = Counter(kinds[layer["type"]] for layer in pruned if layer["pruned"])
    taken = Counter(type(r) for r in final if not isinstance(r, DenseReport) and getattr(r, "sparse", True))
    assert taken == expected  # each pruned layer runs the sparse kernel of its type, nothing else does
    assert rel_err(got, ort_output(onnx_path, x)) <= 1e-4


@pytest.mark.parametrize(("name", "compression"), [("resnet50", 8.0), ("vgg16", 2.25), ("vgg16", 8.0)])
def test_one_shot_pruning_keeps_library_patterns(name, compression):
    model, dense = small(name), small(name)
    report = models.prune_model(model, compression, prune_only=("conv3x3",))  # the issue-11 recipe
    library = np.array(report["patterns"], bool)
    assert library.shape == (8, 3, 3) and (library.sum(axis=(1, 2)) == 4).all()
    modules, reference = dict(model.named_modules()), dict(dense.named_modules())
    pruned = [layer for layer in report["layers"] if layer["pruned"]]
    assert pruned and all(layer["name"] != "features.0" and layer["name"] != "conv1" for layer in pruned)
    for layer in report["layers"]:
        w = modules[layer["name"]].weight.detach().numpy()
        if not layer["pruned"]:
            np.testing.assert_array_equal(w, reference[layer["name"]].weight.detach().numpy())
            continue
        assert w.shape[2:] == (3, 3) and modules[layer["name"]].groups == 1
        nonzero = (w != 0).reshape(-1, 3, 3)
        kept = nonzero.any(axis=(1, 2))
        total = len(nonzero)
        assert layer["total_kernels"] == total
        want = kept_kernels(total, 3.6) if compression == 8.0 else total
        assert kept.sum() == layer["kept_kernels"] == want
        # every kept kernel is exactly one library pattern (random weights have no zero taps of their own)
        matches = (nonzero[kept][:, None] == library[None]).all(axis=(2, 3))
        assert (matches.sum(axis=1) == 1).all()


def test_models_have_torchvision_parameter_counts():
    counts = {"resnet50": 25_557_032, "mobilenetv2": 3_504_872}  # torchvision's, full size
    for name, count in counts.items():
        assert sum(p.numel() for p in models.MODELS[name]().parameters()) == count
    with pytest.raises(TvmPatternError, match="nothing to prune"):
        models.prune_model(small("mobilenetv2"), 8.0, prune_only=("conv3x3",))
    a, b = small("vgg16", seed=3), small("vgg16", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_op_types():
    assert profile.op_type("pattern_conv2d3") == "pattern conv (our kernel)"
    assert profile.op_type("fused_conv2d3_add1_relu1") == "conv2d"
    assert profile.op_type("fused_matmul_add16") == "matmul / dense"
    assert profile.op_type("dense_conv2d18") == "conv2d (our dense kernel)"
    assert profile.op_type("dense_depthwise2") == "depthwise conv (our dense kernel)"
    assert profile.op_type("dense_dense") == "dense (our kernel)"
    assert profile.op_type("max_pool2d") == profile.op_type("adaptive_avg_pool2d") == "pooling"
    assert profile.op_type("fused_add_relu") == "add / elementwise"
    assert profile.op_type("fused_maximum_minimum") == "add / elementwise"
    assert profile.op_type("vm.builtin.alloc_tensor") == "VM builtins (memory, shapes)"

    class T:
        def __init__(self, *shape):
            self.shape = shape

    assert profile.op_type("fused_conv2d_add", (T(1, 32, 8, 8), T(32, 1, 3, 3))) == "depthwise conv 3x3"
    assert profile.op_type("fused_conv2d_add", (T(1, 32, 8, 8), T(64, 32, 1, 1))) == "conv2d 1x1"


def test_missing_peers_are_reported_not_failed(tmp_path, monkeypatch, capsys):
    """No peer installed (an empty peers folder, none importable here): missing rows, exit code 0."""
    onnx_path = models.export_onnx(small("vgg16"), tmp_path / "tiny.onnx", size=SIZE)
    monkeypatch.setenv("TVM_PATTERN_PEERS", str(tmp_path / "no-peers"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "onnxruntime", "openvino", "deepsparse") else _find_spec(name, *a))  # fmt: skip
    out = tmp_path / "missing.json"
    code = cli.main(["bench", "--model", str(onnx_path), "--runtimes", "onnxruntime,pytorch,openvino,deepsparse",
                     "--repeats", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    status = {r["runtime"]: (r["status"], r.get("reason")) for r in result["runtimes"]}
    assert status["pytorch"] == ("n/a", "built-in models only")
    for name in ("onnxruntime", "openvino", "deepsparse"):
        assert status[name] == ("missing", peers.MISSING)
    assert result["input_shape"] == [1, 3, SIZE, SIZE] and result["reference"] is None
    assert "make peers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--model", str(onnx_path), "--compression", "3"])
    assert cli.main(["bench", "--model", str(onnx_path), "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert cli.main(["bench", "--model", str(onnx_path), "--threads", "0"]) == 2
    assert "--threads 0: must be at least 1" in capsys.readouterr().err


def test_the_table_shows_the_speedup_in_each_round():
    ref = {"runtime": "onnxruntime", "label": "ONNX Runtime", "status": "measured", "median_ms": 4.0,
           "round_medians_ms": [4.0, 4.0, 6.0], "version": "1"}  # fmt: skip
    ours = {"runtime": "ours", "label": "tvm-pattern", "status": "measured", "median_ms": 2.0,
            "round_medians_ms": [1.0, 2.0, 2.0], "compile_s": 1.0, "sparse_convs": 1, "convs": 1}  # fmt: skip
    assert peers.round_speedups(ref, ours) == [4.0, 2.0, 3.0]
    assert peers.round_speedups(ref, {"round_medians_ms": [1.0]}) == []  # rounds that do not pair up: none
    for row in (ref, ours):
        row["speedup_vs_reference"] = 4.0 / row["median_ms"]
        row["round_speedups"] = peers.round_speedups(ref, row)
    text = peers.table({"reference": "onnxruntime", "compression": 8.0, "model": "m.onnx", "input_shape": [1, 3, 8, 8],
                        "threads": 2, "repeats": 3, "cpu": {"name": "cpu"}, "runtimes": [ref, ours]})  # fmt: skip
    assert "per round" in text.splitlines()[1]
    assert "2.00-4.00x" in text.splitlines()[4] and "1.00-1.00x" in text.splitlines()[3]


_find_spec = importlib.util.find_spec


@pytest.mark.slow  # ~25 s on a quiet 2-core machine: compiles the model, starts six interpreters
def test_bench_cli_writes_every_runtime(tmp_path, monkeypatch):
    """The whole command on a tiny pruned VGG-16: every runtime measured or marked missing / n/a, ours exact."""
    monkeypatch.setattr(peers, "PAUSE_S", 0.0)
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--model", "vgg16", "--scale", "0.125", "--size", "32", "--compression", "8",
                     "--repeats", "2", "--warmup", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"] == "vgg16" and result["compression"] == 8.0 and result["input_shape"] == [1, 3, 32, 32]
    assert result["threads"] == result["cpu"]["cores"] >= 1 and result["repeats"] == 2
    assert {"name", "avx2", "avx512"} <= set(result["cpu"])
    rows = {r["runtime"]: r for r in result["runtimes"]}
    assert list(rows) == list(peers.RUNTIMES)
    for name, row in rows.items():
        assert row["status"] in ("measured", "missing", "n/a"), (name, row.get("reason"))
        if row["status"] == "measured":
            assert len(row["times_ms"]) == 2 and row["median_ms"] > 0 and row["speedup_vs_reference"] > 0
            assert len(row["round_medians_ms"]) == 2  # 2 runs: two alternating rounds of one
            assert len(row["round_speedups"]) == 2 and min(row["round_speedups"]) > 0
            assert row["max_rel_err"] is not None
        elif row["status"] == "missing":
            assert row["reason"] == peers.MISSING
    ours, torch_row = rows["ours"], rows["pytorch"]
    assert ours["status"] == torch_row["status"] == "measured"
    assert ours["compile_s"] > 0 and ours["sparse_convs"] == 12 and ours["convs"] == 13
    assert result["ours_within_tolerance"] is True and ours["max_rel_err"] <= 1e-4
    assert result["reference"] == ("onnxruntime" if rows["onnxruntime"]["status"] == "measured" else "pytorch")
    shares = [r["share"] for r in ours["breakdown"]]
    assert sum(shares) == pytest.approx(1.0) and ours["breakdown"][0]["ms"] >= ours["breakdown"][-1]["ms"]
    assert any(r["op_type"] == "pattern conv (our kernel)" for r in ours["breakdown"])
    assert (tmp_path / "bench.png").stat().st_size > 0
    kept = [layer for layer in result["pruning"]["layers"] if layer["pruned"] and layer["type"] == "conv3x3"]
    assert len(kept) == 12 and all(layer["kept_kernels"] == round(layer["total_kernels"] / 3.6) for layer in kept)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
