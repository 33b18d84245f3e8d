"""`tvm-pattern prune` end to end on a small subset, and bad input that must change nothing on disk."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from tvm_pattern import cli
from tvm_pattern.cli.prune import parse_connectivity
from tvm_pattern.prune import artifacts, models
from tvm_pattern.sparsity.library import CENTRE, PatternLibrary

FAST = ["--dense-epochs", "1", "--admm-epochs", "0.5", "--retrain-epochs", "0.5", "--quiet", "--seed", "3"]


@pytest.fixture(scope="module")
def pruned(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "out"
    code = cli.main(["prune", "--data", str(small_data), "--out", str(out), "--no-cache", *FAST])
    assert code == 0
    return out


def conv_weights(path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {node.input[1]: inits[node.input[1]] for node in model.graph.node if node.op_type == "Conv"}


def test_prune_writes_all_outputs(pruned):
    assert sorted(p.name for p in pruned.iterdir()) == sorted(
        ["patterns.json", "masks.pt", "model.onnx", "patterns.png", "report.json"]
    )
    assert (pruned / "patterns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((pruned / "report.json").read_text())
    for key in ("dense_accuracy", "pattern_accuracy", "final_accuracy"):
        assert 0.1 < report[key] <= 1.0  # better than chance on 10 classes
    assert [layer["pruned"] for layer in report["layers"]] == [False, True, True, True]
    assert report["layers"][0]["reason"].startswith("first layer")


def test_onnx_kernels_fit_the_library_and_connectivity(pruned):
    library = PatternLibrary.load(pruned / "patterns.json")
    assert library.k == 8 and library.n == 4
    report = json.loads((pruned / "report.json").read_text())
    masks = artifacts.load_masks(pruned / "masks.pt")
    weights = conv_weights(pruned / "model.onnx")
    for layer in report["layers"]:
        w = weights[f"{layer['name']}.weight"]
        kernels = w.reshape(-1, 3, 3)
        nonzero = (kernels != 0).reshape(len(kernels), -1)
        counts = nonzero.sum(1)
        if not layer["pruned"]:
            assert (counts == 9).all()
            continue
        assert set(np.unique(counts)) <= {0, 4}
        kept = nonzero[counts > 0]
        assert kept[:, CENTRE].all()
        assert all(library.index_of(k.reshape(3, 3)) >= 0 for k in kept)
        assert int((counts > 0).sum()) == layer["kept_kernels"] == round(layer["total_kernels"] / 3.6)
        assert np.array_equal(masks[layer["name"]].numpy(), w != 0)


def test_exported_onnx_computes_what_pytorch_computes(tmp_path):
    """Export keeps the zeros in place and the graph's meaning (checked with ONNX's reference runtime)."""
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(0)
    model = models.build("vgg-small").eval()
    with torch.no_grad():
        model.features[4].weight[:, :, 0, :] = 0
    x = torch.randn(2, 1, 28, 28)
    artifacts.export_onnx(model, x[:1], tmp_path / "m.onnx")
    (logits,) = ReferenceEvaluator(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(logits, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert (conv_weights(tmp_path / "m.onnx")["features.4.weight"][:, :, 0, :] == 0).all()


def run(args, capsys):
    code = cli.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--patterns", "57"], "only 56 candidate patterns of 4 taps"),
        (["--patterns", "0"], "--patterns 0"),
        (["--connectivity", "0.5"], "alpha must be >= 1"),
        (["--data", "/nonexistent/fashion"], "apt-get install dataset-fashion-mnist"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, small_data, capsys, extra, message):
    out = tmp_path / "out"
    code, err = run(["prune", "--data", str(small_data), "--out", str(out), *FAST, *extra], capsys)
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []


def test_model_without_3x3_convs_fails_clearly(tmp_path, small_data, capsys, monkeypatch):
    monkeypatch.setitem(models.MODELS, "pointwise", lambda: nn.Sequential(nn.Conv2d(1, 4, 1), nn.Flatten()))
    out = tmp_path / "out"
    code, err = run(["prune", "--model", "pointwise", "--data", str(small_data), "--out", str(out)], capsys)
    assert code == 2 and "no prunable 3x3 convolution" in err
    assert not out.exists()


def test_failed_write_leaves_existing_outputs_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")

    def boom(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        artifacts.write_all(out, {"report.json": lambda p: p.write_text("new"), "model.onnx": boom})
    assert (out / "report.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_connectivity_option_parses_per_layer_rates():
    assert parse_connectivity("3.6") == 3.6
    assert parse_connectivity("none") is None
    assert parse_connectivity("features.4=2,features.7=none") == {"features.4": 2.0, "features.7": None}


def test_demo_model_has_four_3x3_convs():
    convs = [m for m in models.build("vgg-small").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 4 and all(c.kernel_size == (3, 3) for c in convs)
    assert models.build("vgg-small")(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_demo_compiles_the_pruned_model_and_matches_pytorch(small_data, tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--data", str(small_data), "--out", str(out), "--no-cache", *FAST]) == 0
    result = json.loads((out / "demo.json").read_text())
    assert result["same_prediction"] == 1.0
    assert result["tvm_accuracy"] == result["torch_accuracy"]
    assert result["max_abs_logit_diff"] < 1e-3
    assert (out / "model.so").is_file()
    assert all(result[key] > 0 for key in ("torch_ms", "tvm_dense_ms", "sparse_ms"))
