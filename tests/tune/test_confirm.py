"""Confirmation of tuned records (``tune.confirm``): the keep-or-not rule on synthetic timings, the interleaved
timing order, and a small local tuning job after which the kernel ``compile --db`` picks is the default one or
a confirmed record, with the untuned kernel's numerics. No timing is asserted."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from helpers.cnn_models import export_onnx, library8, prune_weight, torch_out
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from tvm.s_tir.meta_schedule.arg_info import ArgInfo

from tvm_pattern.compiler import compile_command, import_onnx, load
from tvm_pattern.targets import resolve_target
from tvm_pattern.tune import extract_tasks, open_database, tune_file, tuned_kernel
from tvm_pattern.tune.confirm import (
    CONFIRM_FILE,
    MARGIN,
    Confirmation,
    confirm_local,
    decide,
    interleaved,
    record_knobs,
    replayed,
    save,
    stored,
)
from tvm_pattern.tune.database import best_record, records
from tvm_pattern.tune.remote import Arguments
from tvm_pattern.tune.search import FAILED_SECS

TOL = {"atol": 1e-4, "rtol": 1e-4}
TRIALS = 4
SEARCH = {"trials_per_iter": TRIALS, "population": 32, "progress": False}


def rounds(rng: np.random.Generator, n: int, factor: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(default, tuned) paired samples: a drift shared by each round, independent noise per sample."""
    drift = np.exp(rng.normal(0.0, 0.05, n))
    default = drift * rng.lognormal(0.0, noise, n)
    return default, factor * drift * rng.lognormal(0.0, noise, n)


def test_decide_keeps_a_clear_win():
    default = np.array([1.00, 1.02, 0.99, 1.05, 1.01, 1.00, 0.98, 1.03, 1.00])
    assert decide(default, default * 0.85)
    assert decide(default, default * 0.9 * np.array([1, 1.01, 0.99, 1, 1.02, 1, 0.98, 1, 1]))


@pytest.mark.parametrize("case", ["same", "jitter", "below-margin", "minority", "one-outlier", "slower"])
def test_decide_rejects_noisy_equal(case):
    rng = np.random.default_rng(7)
    default = 1.0 + rng.normal(0, 0.01, 11)
    tuned = {
        "same": default.copy(),
        "jitter": default * rng.lognormal(0, 0.03, 11),
        "below-margin": default * (1 - MARGIN / 2),  # faster in every round, by less than the margin
        "minority": default * np.where(np.arange(11) < 4, 0.8, 1.01),  # much faster, but in 4 of 11 rounds
        "one-outlier": np.where(np.arange(11) == 3, default * 0.3, default * 1.001),
        "slower": default * 1.15,
    }[case]
    assert not decide(default, tuned)


def test_decide_error_rates_on_synthetic_rounds():
    """Equal kernels under noise and drift: rarely kept; 15% faster: nearly always kept."""
    rng = np.random.default_rng(0)
    equal = [decide(*rounds(rng, 11, 1.0, 0.03)) for _ in range(400)]
    win = [decide(*rounds(rng, 11, 0.85, 0.03)) for _ in range(400)]
    assert np.mean(equal) < 0.05
    assert np.mean(win) > 0.95


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=15), st.data())
def test_decide_never_keeps_a_kernel_no_faster_than_the_margin(default, data):
    """If no round has the tuned kernel faster by more than the margin, it is never kept."""
    slack = data.draw(st.lists(st.floats(1 - MARGIN, 3.0), min_size=len(default), max_size=len(default)))
    assert not decide(default, np.asarray(default) * np.asarray(slack))


def test_decide_needs_paired_samples():
    with pytest.raises(ValueError, match="paired samples"):
        decide([1.0, 2.0], [1.0])
    assert not decide([1.0, float("nan")], [0.5, 0.5])


def test_interleaved_alternates_the_order():
    calls: list[str] = []
    samples = interleaved([lambda: calls.append("a"), lambda: calls.append("b")], rounds=4, min_s=0.0, warmup=1)
    assert [len(s) for s in samples] == [4, 4] and all(v >= 0 for s in samples for v in s)
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"  # warm-up, then rounds A B, B A, ...


class OneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A pruned one-conv net tuned here: (ONNX path, input, PyTorch's output, work dir, results)."""
    torch.manual_seed(0)
    model = OneConv().eval()
    with torch.no_grad():
        model.conv.weight.copy_(torch.from_numpy(prune_weight(model.conv.weight.numpy(), library8(), keep=0.5)))
    x = torch.randn(1, 8, 16, 16)
    path = export_onnx(model, x, tmp_path_factory.mktemp("one") / "one.onnx")
    work = tmp_path_factory.mktemp("confirm")
    results = tune_file(path, "x86", work, TRIALS, echo=None, **SEARCH)
    return path, x, torch_out(model, x), work, results


@pytest.mark.slow
def test_tuning_selects_the_default_or_a_confirmed_record(tuned, tmp_path):
    """After tuning, the task's kernel is the default one or a record whose confirmation kept it; a rerun
    confirms nothing again; compile --db runs that kernel with PyTorch's numerics."""
    path, x, expected, work, results = tuned
    target = resolve_target("x86")
    (task,) = extract_tasks(import_onnx(path), target)
    database = open_database(work)
    record = best_record(task, database, target)
    confirmation = stored(database, task, record)
    (result,) = results
    assert result.confirmation == confirmation
    picked = tuned_kernel(task, database, target)
    if confirmation is None:  # nothing to confirm: the best record is the default kernel itself
        assert tvm_ffi.structural_equal(picked, task.materialize(task.mod))
    else:
        assert confirmation.default_ms > 0 and confirmation.tuned_ms > 0 and confirmation.rounds >= 3
        assert str(confirmation) in str(result)
        assert (picked is not None) == confirmation.kept
    confirmations = work / CONFIRM_FILE
    before = confirmations.read_text() if confirmations.exists() else ""
    again = tune_file(path, "x86", work, TRIALS, echo=None, **SEARCH)
    assert again[0].measured == 0 and again[0].confirmation == confirmation
    assert (confirmations.read_text() if confirmations.exists() else "") == before
    echoed: list[str] = []
    out = compile_command(path, "x86", tmp_path / "one.so", echo=echoed.append, database=work)
    assert sum(line.endswith(", tuned") for line in echoed) == int(picked is not None)
    np.testing.assert_allclose(load(out)(x.numpy()), expected, **TOL)
    assert np.abs(expected).max() > 1e-2


@pytest.mark.slow
def test_a_rejected_record_gives_the_default_kernel(tuned, tmp_path):
    """Whatever this machine measured: a verdict against the best record makes ``tuned_kernel`` return None
    (the default kernel), one for it its kernel; that kernel's output equals the default kernel's."""
    path, _, _, work, _ = tuned
    target = resolve_target("x86")
    (task,) = extract_tasks(import_onnx(path), target)
    shutil.copytree(work, tmp_path / "work")
    database = open_database(tmp_path / "work")
    record = best_record(task, database, target)
    for kept in (False, True, False):
        save(database, task, Confirmation(task.name, 1.0, 0.5, kept, 9, 11, record_knobs(task, record)))
        assert stored(database, task, record).kept == kept
        assert (tuned_kernel(task, database, target) is not None) == kept
    save(database, task, Confirmation(task.name, 1.0, 0.5, True, 9, 11, record_knobs(task, record)))
    assert_same_output(task, tuned_kernel(task, database, target), task.materialize(task.mod), target)


def assert_same_output(task, func, default, target) -> None:
    """``func`` and ``default`` (kernels of ``task``) give the same output on one random input."""
    dev = tvm.cpu()
    outs = []
    for f in (func, default):
        info = ArgInfo.from_prim_func(f)
        shapes = [[int(d) for d in info[i].shape] for i in (0, -1)]
        x = np.random.default_rng(1).standard_normal(shapes[0]).astype(np.float32)
        args = [tvm.runtime.tensor(x, dev), *[tvm.runtime.tensor(a, dev) for a in task.arrays],
                tvm.runtime.tensor(np.zeros(shapes[1], np.float32), dev)]  # fmt: skip
        tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)["main"](*args)
        outs.append(args[-1].numpy())
    np.testing.assert_allclose(outs[0], outs[1], **TOL)
    assert np.abs(outs[1]).max() > 1e-3


@pytest.mark.slow
def test_confirm_local_measures_a_record_against_the_default(tuned):
    """A record other than the default, confirmed here: paired medians of both kernels and a verdict."""
    path, _, _, work, _ = tuned
    target = resolve_target("x86")
    (task,) = extract_tasks(import_onnx(path), target)
    other = non_default_record(task, open_database(work))
    assert other is not None, "every trial measured the default kernel"
    arguments = Arguments()
    arguments.use(task)
    confirmation = confirm_local(task, other, target, arguments, rounds=3)
    assert confirmation.default_ms > 0 and confirmation.tuned_ms > 0
    assert confirmation.rounds == 3 and 0 <= confirmation.wins <= 3
    assert confirmation.knobs == record_knobs(task, other) and confirmation.where == "local"


def non_default_record(task, database):
    """The first successful record of ``task`` whose kernel is not the default one, or None."""
    default = task.materialize(task.mod)
    return next((r for r in records(database, task) if r.run_secs and float(r.run_secs[0]) < FAILED_SECS
                 and not tvm_ffi.structural_equal(task.materialize(replayed(task, r)), default)), None)  # fmt: skip


@pytest.mark.slow
def test_confirm_remote_measures_through_the_rpc_runner(tuned):
    """The same over RPC (a local server): the job's kind of builder and runner measure both kernels per round."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_pattern.devices.cross import builder_export
    from tvm_pattern.rpc import Server, Tracker
    from tvm_pattern.schedules import dense_space
    from tvm_pattern.tune.builder import PoolBuilder
    from tvm_pattern.tune.confirm import confirm_remote
    from tvm_pattern.tune.remote import create_session

    path, _, _, work, _ = tuned
    target = resolve_target("x86")
    (task,) = extract_tasks(import_onnx(path), target)
    record = non_default_record(task, open_database(work))
    assert record is not None, "every trial measured the default kernel"
    arguments = Arguments()
    arguments.use(task)
    builder = PoolBuilder(1, 120.0, dense_space.build, builder_export(target))
    with Tracker() as tracker, Server(tracker=tracker.address, key="confirm"):
        config = ms.runner.RPCConfig(*tracker.address, "confirm", session_timeout_sec=60)
        runner = ms.runner.RPCRunner(config, ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=50),
                                     f_create_session=create_session, f_alloc_argument=arguments, max_workers=1)
        try:
            confirmation = confirm_remote(task, record, target, builder, runner, rounds=2)
        finally:
            builder.close()
    assert confirmation is not None and confirmation.where == "rpc" and confirmation.rounds == 2
    assert confirmation.default_ms > 0 and confirmation.tuned_ms > 0
    assert confirmation.knobs == record_knobs(task, record)
