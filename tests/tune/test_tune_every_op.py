"""`tune` tunes every op of a model: the dense layers' templates (conv2d 3x3 and 1x1, depthwise, linear) and an op
no template covers (a max-pool, in MetaSchedule's default space) go into one database that ``build`` applies.

Small on purpose (a 32x32 net, 2 trials per task): what is checked is that every op gets a task and records, that
the build uses them, and the numerics of the tuned build, never speed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from helpers.cnn_models import export_onnx, torch_out
from torch import nn

from tvm_pattern import cli
from tvm_pattern.compiler import CompiledModel, build, cpu_pipeline, import_onnx, load
from tvm_pattern.errors import TvmPatternError
from tvm_pattern.passes import DenseKernels, ParallelizeDense
from tvm_pattern.schedules.dense_space import DenseTuningTask
from tvm_pattern.targets import resolve_target
from tvm_pattern.tune import DatabaseDenseKernels, OpTask, extract_tasks, open_database, tune
from tvm_pattern.tune.database import records
from tvm_pattern.tune.ops import untuned_schedule
from tvm_pattern.tune.search import FAILED_SECS

TOL = {"atol": 1e-4, "rtol": 1e-4}
TRIALS = 2
SEARCH = {"trials_per_iter": TRIALS, "population": 16, "progress": False, "confirm": False}  # see test_confirm.py


class Mixed(nn.Module):
    """A dense 3x3 conv, a 1x1 conv, a depthwise conv (ReLU6), a max-pool and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.point = nn.Conv2d(8, 16, 1)
        self.depth = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        y = torch.relu(self.point(y))
        y = self.pool(torch.clamp(self.depth(y), 0.0, 6.0))
        return self.fc(torch.flatten(y, 1))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """(ONNX path, input, PyTorch's output) of the Mixed net."""
    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.randn(1, 3, 32, 32)
    path = export_onnx(model, x, tmp_path_factory.mktemp("mixed") / "mixed.onnx")
    return path, x, torch_out(model, x)


@pytest.fixture(scope="module")
def tasks(net):
    return extract_tasks(import_onnx(net[0]), "x86", ops="all")


@pytest.fixture(scope="module")
def tuned(tasks, tmp_path_factory):
    """The net's every task tuned with ``TRIALS`` trials: (work dir, results)."""
    work = tmp_path_factory.mktemp("every-op")
    return work, tune(tasks, "x86", work, TRIALS, **SEARCH)


def test_every_op_has_a_task(net, tasks):
    """Four dense-template tasks (conv2d twice, depthwise, dense) and the max-pool in MetaSchedule's space;
    "templates" drops the max-pool, "sparse" finds nothing in this unpruned net."""
    dense = [t for t in tasks if isinstance(t, DenseTuningTask)]
    assert sorted(t.name.split("_")[1] for t in dense) == ["conv2d", "conv2d", "dense", "depthwise"]
    ops = [t for t in tasks if isinstance(t, OpTask)]
    assert [t.name for t in ops] == ["op_max_pool2d"] and ops[0].weight == 1
    untuned = untuned_schedule(ops[0].mod, 2).mod["main"]  # measured first: the untuned build's loop nest
    assert tvm_ffi.structural_equal(untuned, ParallelizeDense(2)(ops[0].mod)["main"])
    assert not tvm_ffi.structural_equal(untuned, ops[0].mod["main"])
    mod = import_onnx(net[0])
    assert len(extract_tasks(mod, "x86", ops="templates")) == len(dense)
    assert extract_tasks(mod, "x86", ops="sparse") == []
    with pytest.raises(TvmPatternError, match="ops must be one of"):
        extract_tasks(mod, "x86", ops="every")


@pytest.mark.slow
def test_database_has_records_of_every_task(tasks, tuned):
    work, results = tuned
    assert [r.trials for r in results] == [TRIALS] * len(tasks)
    database = open_database(work)
    for task in tasks:
        ok = [r for r in records(database, task) if r.run_secs and float(r.run_secs[0]) < FAILED_SECS]
        assert ok, f"{task.name}: no successful measurement"


@pytest.mark.slow
def test_build_applies_the_records_and_matches_pytorch(net, tasks, tuned):
    """Every dense layer gets its tuned kernel, the max-pool its MetaSchedule schedule; outputs equal PyTorch's."""
    work, _ = tuned
    target = resolve_target("x86")
    database = open_database(work)
    provider = DatabaseDenseKernels(database)
    with target:
        mod = DenseKernels(target=target, provider=provider)(import_onnx(net[0]))
    assert len(provider.tuned) == 4
    lowered = cpu_pipeline(target, database)(mod)
    pools = [f for gv, f in lowered.functions_items() if "max_pool2d" in gv.name_hint]
    assert pools and all(f.attrs.get("tirx.is_scheduled", False) for f in pools)
    untuned = cpu_pipeline(target)(mod)
    assert not any(f.attrs.get("tirx.is_scheduled", False) for gv, f in untuned.functions_items()
                   if "max_pool2d" in gv.name_hint)  # fmt: skip
    model = CompiledModel(build(import_onnx(net[0]), target, database=work))
    np.testing.assert_allclose(model(net[1].numpy()), net[2], **TOL)


@pytest.mark.slow
def test_cli_tune_resumes_and_compile_uses_the_database(net, tuned, tmp_path, capsys):
    """`tune` on the tuned work dir measures nothing new (every task has its trials); `compile --db` runs it."""
    work, _ = tuned
    assert cli.main(["tune", str(net[0]), "--trials", str(TRIALS), "--work-dir", str(work), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 distinct pattern-sparse layer(s), 4 dense layer(s) and 1 other op(s) to tune (5 tasks)" in out
    assert all("(0 new" in line for line in out.splitlines()[1:] if line.strip())
    lib = tmp_path / "mixed.so"
    assert cli.main(["compile", str(net[0]), "--out", str(lib), "--db", str(work)]) == 0
    assert "4 dense layer(s) with tuned kernels" in capsys.readouterr().out
    np.testing.assert_allclose(load(lib)(net[1].numpy()), net[2], **TOL)
    assert isinstance(tvm.runtime.load_module(str(lib)), tvm.runtime.Module)
