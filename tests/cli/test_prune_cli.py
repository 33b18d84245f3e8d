"""`tvm-pattern prune` end to end on a small subset, and bad input that must change nothing on disk."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from tvm_pattern import cli
from tvm_pattern.cli.prune import add_prune_options, parse_block, parse_connectivity, parse_kernel_block
from tvm_pattern.errors import TvmPatternError
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
    assert [layer["pruned"] for layer in report["layers"]] == [False, True, True, True, False]
    assert report["layers"][0]["reason"].startswith("first layer")
    assert report["layers"][-1]["type"] == "linear" and report["layers"][-1]["reason"].startswith("classifier's last")


def test_onnx_kernels_fit_the_library_and_connectivity(pruned):
    library = PatternLibrary.load(pruned / "patterns.json")
    assert library.k == 8 and library.n == 4
    report = json.loads((pruned / "report.json").read_text())
    masks = artifacts.load_masks(pruned / "masks.pt")
    weights = conv_weights(pruned / "model.onnx")
    for layer in report["layers"]:
        if layer["type"] == "linear":
            continue
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
    monkeypatch.setitem(models.MODELS, "pointwise", lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)))  # fmt: skip
    out = tmp_path / "out"
    code, err = run(["prune", "--model", "pointwise", "--data", str(small_data), "--out", str(out)], capsys)
    assert code == 2 and "no layer to prune" in err and "no pointwise rate given (--pointwise ALPHA)" in err
    assert not out.exists()


@pytest.mark.parametrize("option", ["--out", "--checkpoint-dir"])
def test_output_folder_that_is_a_file_fails_before_training(tmp_path, small_data, capsys, option):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    args = ["prune", "--data", str(small_data), "--out", str(tmp_path / "out"), *FAST, option, str(taken)]
    code, err = run(args, capsys)
    assert code == 2 and f"{option} {taken}: exists and is not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and taken.read_text() == "mine"


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


# --- The user's own model and data, data-parallel runs, checkpoints (issue 14) --------------------------------

REPO = Path(__file__).resolve().parents[2]
USER = ["--model", "helpers.user_model:model", "--data", "helpers.user_model:data", "--device", "cpu"]
USER_FAST = ["--dense-epochs", "2", "--admm-epochs", "1", "--retrain-epochs", "1", "--quiet", "--seed", "1"]


def user_env(small_data) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), USER_DATA_DIR=str(small_data), OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "tvm_pattern", "prune", *args]  # fmt: skip


def check_fits(out: Path, alpha: float = 3.6) -> dict:
    """Every pruned 3x3 kernel of out/model.onnx fits out/patterns.json; 1/alpha of the kernels kept."""
    library = PatternLibrary.load(out / "patterns.json")
    report = json.loads((out / "report.json").read_text())
    weights = conv_weights(out / "model.onnx")
    pruned = [layer for layer in report["layers"] if layer["pruned"] and layer["type"] == "conv3x3"]
    assert pruned
    for layer in pruned:
        kernels = weights[f"{layer['name']}.weight"].reshape(-1, 3, 3)
        nonzero = kernels != 0
        kept = nonzero.reshape(len(kernels), -1).any(1)
        assert all(library.index_of(m) >= 0 for m in nonzero[kept]), layer["name"]
        assert int(kept.sum()) == layer["kept_kernels"] == round(len(kernels) / alpha)
    return report


@pytest.fixture(scope="module")
def user_single(small_data, tmp_path_factory, monkeypatch_module):
    """The user's model and data in one process (the .py-file form of the model spec)."""
    monkeypatch_module.setenv("USER_DATA_DIR", str(small_data))
    out = tmp_path_factory.mktemp("user1") / "out"
    ck = out.parent / "ck"
    spec = f"{REPO / 'tests' / 'helpers' / 'user_model.py'}:model"
    args = ["prune", "--model", spec, "--data", "helpers.user_model:data", "--device", "cpu", *USER_FAST]
    assert cli.main([*args, "--checkpoint-dir", str(ck), "--out", str(out)]) == 0
    return out, ck, args


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def user_two_ranks(small_data, tmp_path_factory):
    """The same run data-parallel: 2 ranks with gloo on the CPU under torchrun."""
    out = tmp_path_factory.mktemp("user2") / "out"
    run = subprocess.run(torchrun(2, *USER, *USER_FAST, "--out", str(out)), cwd=REPO, env=user_env(small_data),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run.stdout


def test_user_model_and_data_single_process(user_single):
    out, _, _ = user_single
    report = check_fits(out)
    assert report["world_size"] == 1 and report["device"] == "cpu"
    # first, 3x3, 1x1, 3x3, FC, last FC
    assert [layer["pruned"] for layer in report["layers"]] == [False, True, False, True, False, False]
    assert "--pointwise" in report["layers"][2]["reason"] and "--linear" in report["layers"][4]["reason"]


def test_two_ranks_with_gloo_under_torchrun(user_two_ranks):
    out, stdout = user_two_ranks
    report = check_fits(out)
    assert report["world_size"] == 2
    assert "data-parallel on 2 ranks (gloo, cpu)" in stdout
    assert stdout.count("dense accuracy") == 1  # only rank 0 prints and writes
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_one_process_and_two_ranks_agree(user_single, user_two_ranks):
    """Same samples per global step (DistributedSampler interleaves one permutation), same schedules, same
    ADMM rounds; what differs is BatchNorm's batch statistics (64 images per rank vs 128), floating-point
    summation order and the order in which float noise compounds. On 500 test images (0.2 pts each) the two
    land within 6 points of each other at every stage; a broken gradient average or sharding would not."""
    one = json.loads((user_single[0] / "report.json").read_text())
    two = json.loads((user_two_ranks[0] / "report.json").read_text())
    for key in ("dense_accuracy", "pattern_accuracy", "final_accuracy"):
        assert abs(one[key] - two[key]) <= 0.06, (key, one[key], two[key])
        assert two[key] > 0.25, (key, two[key])  # it learnt something (chance: 0.1)
    assert [layer["nonzeros"] for layer in one["layers"]] == [layer["nonzeros"] for layer in two["layers"]]


def test_admm_state_is_identical_on_every_rank_and_matches_one_process(tmp_path):
    """Bitwise-identical Z, U, Y, V, masks and weights on both ranks (checked inside the run), and the
    2-rank result equal to one process's within float noise (a BN- and dropout-free model)."""
    script = REPO / "tests" / "helpers" / "ddp_check.py"
    env = user_env(tmp_path)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(tmp_path / "two.pt")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "identical on 2 ranks" in two.stdout
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (a["world_size"], b["world_size"]) == (1, 2) and a["library"] == b["library"]
    for name, value in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], value, rtol=1e-4, atol=1e-5)
    for name, mask in a["masks"].items():
        assert (b["masks"][name] != mask).float().mean() < 0.02, name  # near-ties may flip a kernel or two


def workers_of(ck: Path) -> list[int]:
    """Pids of live processes whose command line names ``ck``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if str(ck).encode() in cmdline and (proc / "stat").read_text().split()[2] != "Z":
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def test_killed_run_resumes_from_its_checkpoint(small_data, tmp_path):
    """SIGKILL to the whole torchrun process group a moment after the first checkpoint appears (mid-phase:
    periodic checkpoints every second), then the same command: it says it resumes and ends valid."""
    ck, out = tmp_path / "ck", tmp_path / "out"
    command = torchrun(2, *USER, *USER_FAST, "--dense-epochs", "4", "--checkpoint-every", "1",
                       "--checkpoint-dir", str(ck), "--out", str(out))  # fmt: skip
    log = tmp_path / "first.log"
    with log.open("w") as f:
        job = subprocess.Popen(command, cwd=REPO, env=user_env(small_data), stdout=f, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not (ck / "checkpoint.pt").exists():
                assert job.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(60)
    assert job.returncode == -signal.SIGKILL
    # torchrun starts its workers in sessions of their own; they must not outlive it (orphans would go on
    # writing checkpoints and outputs while the rerun resumes).
    deadline = time.monotonic() + 10
    while survivors := workers_of(ck):
        assert time.monotonic() < deadline, f"workers outlived torchrun: {survivors}"
        time.sleep(0.1)
    assert not out.exists()
    again = subprocess.run(command, cwd=REPO, env=user_env(small_data), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = [line for line in again.stdout.splitlines() if line.startswith("resuming from")]
    assert len(resumed) == 1 and str(ck / "checkpoint.pt") in resumed[0], again.stdout[-2000:]
    assert ", step " in resumed[0]  # part-way through a phase, not at a boundary
    assert check_fits(out)["world_size"] == 2
    assert [p.name for p in ck.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_checkpoint_made_with_other_settings_is_refused(user_single, capsys, tmp_path):
    _, ck, args = user_single
    out = tmp_path / "out"
    code = cli.main([*args, "--patterns", "6", "--checkpoint-dir", str(ck), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "was made with other settings" in err and "patterns: checkpoint has 8, this run has 6" in err
    assert not out.exists()


def test_rerun_of_a_finished_run_resumes_at_its_end(user_single, capsys, tmp_path):
    out, ck, args = user_single
    again = tmp_path / "again"
    assert cli.main([*args, "--checkpoint-dir", str(ck), "--out", str(again)]) == 0
    assert f"resuming from {ck / 'checkpoint.pt'} (done)" in capsys.readouterr().out
    one, two = (json.loads((d / "report.json").read_text()) for d in (out, again))
    assert one["final_accuracy"] == two["final_accuracy"] and one["layers"] == two["layers"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no_such_module_xyz:model"], "no module named 'no_such_module_xyz'"),
        (["--model", "helpers.user_model:nothing"], "has no attribute 'nothing'"),
        (["--model", "helpers.user_model:not_callable"], "'not_callable' is a int, not a callable"),
        (["--model", "helpers.user_model:returns_a_string"], "returned a str, expected a torch.nn.Module"),
        (["--model", "/nonexistent/model.py:model"], "no such file /nonexistent/model.py"),
        (["--model", "helpers.user_model"], "unknown model 'helpers.user_model'"),
        (["--data", "helpers.user_model:one_dataset"], "expected a (train, test) pair"),
        (["--data", "helpers.user_model:returns_a_string"], "expected a (train, test) pair"),
        (["--weights", "/nonexistent/weights.pt"], "--weights '/nonexistent/weights.pt': no such file"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--amp"], "--amp is mixed precision on CUDA"),
    ],
)
def test_bad_specs_fail_clearly_and_write_nothing(tmp_path, small_data, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("USER_DATA_DIR", str(small_data))
    out, ck = tmp_path / "out", tmp_path / "ck"
    args = ["prune", *USER, *USER_FAST, "--checkpoint-dir", str(ck), "--out", str(out), *extra]
    code, err = run(args, capsys)
    assert code == 2 and message in err, err
    assert err.count("error:") == 1
    assert list(tmp_path.iterdir()) == []


def test_weights_are_loaded_into_the_user_model(tmp_path, small_data, monkeypatch):
    from helpers import user_model

    monkeypatch.setenv("USER_DATA_DIR", str(small_data))
    torch.manual_seed(7)
    trained = user_model.model()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    from tvm_pattern.prune import job

    args = cli.build_parser().parse_args(["prune", *USER, "--weights", str(tmp_path / "w.pt"), "--out", "x"])
    loaded = job.validate(args).model
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save({"wrong": torch.zeros(1)}, tmp_path / "bad.pt")
    args.weights = str(tmp_path / "bad.pt")
    with pytest.raises(TvmPatternError, match="does not fit the model"):
        job.validate(args)


# --- every layer type (issue 12) ------------------------------------------------------------------------------

TINY = ["--dense-epochs", "0.25", "--admm-epochs", "0.25", "--retrain-epochs", "0.25", "--quiet", "--no-cache"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on two shared cores: threads only fight
    yield
    torch.set_num_threads(before)


def test_prune_every_layer_type_writes_block_sparse_onnx(small_data, tmp_path, one_thread):
    """resnet-small with --pointwise 8 --linear 4 --block 2: the ONNX's 1x1 convs and FC keep 1/alpha of their
    input columns, shared by each pair of output channels, with exact zeros; the last FC stays dense."""
    out = tmp_path / "out"
    code = cli.main(["prune", "--model", "resnet-small", "--data", str(small_data), "--out", str(out), *TINY,
                     "--pointwise", "8", "--linear", "4", "--block", "2", "--kernel-block", "4"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pointwise"] == 8.0 and report["linear"] == 4.0 and report["block"] == 2
    model = onnx.load(str(out / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    masks = artifacts.load_masks(out / "masks.pt")
    rows = {layer["name"]: layer for layer in report["layers"]}
    assert {r["type"] for r in rows.values()} == {"conv3x3", "pointwise", "linear"}
    assert not rows["stem.0"]["pruned"] and not rows["classifier.4"]["pruned"]
    assert rows["classifier.4"]["reason"].startswith("classifier's last layer")
    for name, row in rows.items():
        w = inits[f"{name}.weight"]
        assert row["nonzeros"] == np.count_nonzero(w) and row["density"] == pytest.approx(row["nonzeros"] / w.size)
        if row["type"] == "conv3x3" and row["pruned"]:  # connectivity in blocks of 4 filters (--kernel-block)
            kept = (w != 0).any(axis=(2, 3))
            assert all((kept[b: b + 4] == kept[b]).all() for b in range(0, len(kept), 4)), name
        if row["type"] == "conv3x3" or not row["pruned"]:
            continue
        alpha = 8 if row["type"] == "pointwise" else 4
        nonzero = (w != 0).reshape(w.shape[0], w.shape[1])
        assert np.array_equal(nonzero, masks[name].numpy().reshape(nonzero.shape))
        assert (nonzero.sum(1) == round(w.shape[1] / alpha)).all(), name
        assert all((nonzero[b: b + 2] == nonzero[b]).all() for b in range(0, len(nonzero), 2)), name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pointwise", "0.5"], "alpha must be >= 1"),
        (["--linear", "classifier.9=2"], "rates given for linear layers that do not exist: ['classifier.9']"),
    ],
)
def test_bad_layer_options_fail_clearly_and_write_nothing(tmp_path, small_data, capsys, extra, message):
    out = tmp_path / "out"
    code, err = run(["prune", "--model", "resnet-small", "--data", str(small_data), "--out", str(out), *TINY,
                     *extra], capsys)  # fmt: skip
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []


def test_block_option_parses_sizes_and_unstructured():
    assert parse_block("8") == 8 and parse_block("Unstructured") == "unstructured"
    for bad in ("0", "-2", "2.5", "big"):
        with pytest.raises(argparse.ArgumentTypeError, match="block must be an integer >= 1 or 'unstructured'"):
            parse_block(bad)


def test_kernel_block_option_parses_sizes_and_auto():
    assert parse_kernel_block("6") == 6 and parse_kernel_block("AUTO") == "auto"
    for bad in ("0", "-1", "1.5", "wide"):
        with pytest.raises(argparse.ArgumentTypeError, match="kernel block must be an integer >= 1 or 'auto'"):
            parse_kernel_block(bad)


def test_layer_options_are_checkpoint_settings_only_when_set():
    from tvm_pattern.prune import job

    parser = argparse.ArgumentParser()
    add_prune_options(parser)
    parser.add_argument("--out")
    plain = job.settings(parser.parse_args(["--out", "x"]), 1)
    assert not {"pointwise", "linear", "block", "depthwise_patterns", "skip_last"} & set(plain)  # old checkpoints
    layered = job.settings(parser.parse_args(["--out", "x", "--pointwise", "8", "--block", "unstructured"]), 1)
    assert layered["pointwise"] == 8.0 and layered["block"] == "unstructured"
    # per-kernel checkpoints from before --kernel-block resume with --kernel-block 1, are refused by default
    assert plain["kernel_block"] == "auto"
    assert "kernel_block" not in job.settings(parser.parse_args(["--out", "x", "--kernel-block", "1"]), 1)
