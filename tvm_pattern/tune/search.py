"""The search of one task: MetaSchedule's ``EvolutionarySearch`` resumed from the database (nothing measured
twice, the untuned kernel first) and a measure callback that records each run and notices lost devices."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy
from tvm.target import Target

from ..errors import RPCError
from ..schedules.dense_space import DenseTuningTask
from ..schedules.space import TuningTask
from .ops import OpTask, untuned_schedule
from .remote import Remote, seconds

log = logging.getLogger(__name__)

FAILED_SECS = 1e10  # MetaSchedule's run time for a failed measurement (never picked as best)


@dataclass
class TuneRun:
    """The state of one task's tuning, shared by the search strategy and the measure callback."""

    task: TuningTask
    budget: int  # measurements still to take in this run
    seen: dict[int, list[IRModule]] = field(default_factory=dict)  # scheduled modules measured (any run)
    measured: int = 0
    repeats: int = 0  # candidates the search proposed again and that were not measured
    best_secs: float = math.inf
    stop: str | None = None  # why the run must end early
    exhausted: bool = False
    bar: object = None

    def add_seen(self, mod: IRModule) -> bool:
        """Remember ``mod``; False if it was measured before."""
        bucket = self.seen.setdefault(tvm_ffi.structural_hash(mod), [])
        if any(tvm_ffi.structural_equal(mod, other) for other in bucket):
            return False
        bucket.append(mod)
        return True


@derived_object
class ResumeSearch(PySearchStrategy):
    """MetaSchedule's ``EvolutionarySearch`` minus what the database already holds, within a budget.

    Candidates whose scheduled module was measured before (this run or an earlier one) are dropped; when a
    whole batch is dropped the inner search is asked again (it never proposes a module twice in one run).
    """

    def __init__(self, inner: ms.search_strategy.SearchStrategy, run: TuneRun, max_empty: int = 5) -> None:
        super().__init__()
        self.inner = inner
        self.run = run
        self.max_empty = max_empty
        self.pending: list = []
        self.untuned = None  # the design space itself: the template's default knobs, measured first

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.run.budget = min(self.run.budget, int(max_trials))
        if isinstance(self.run.task, OpTask):  # MetaSchedule's space: the untuned build's own schedule first
            sch = untuned_schedule(self.run.task.mod, self.run.task.cores)
            self.untuned = ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"]))
        elif design_spaces:  # a template: the design space's own trace holds the default knobs
            sch = design_spaces[0]
            self.untuned = ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"]))
        slack = sum(len(b) for b in self.run.seen.values()) + 2 * int(num_trials_per_iter)
        self.inner.pre_tuning(self.run.budget + slack, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        for _ in range(self.max_empty):
            if self.run.stop or self.run.budget <= 0:
                return None
            batch = self.inner.generate_measure_candidates()
            if batch is None:
                self.run.exhausted = True
                return None
            seed, self.untuned = self.untuned, None  # so the result is never slower than the untuned kernel
            fresh = [c for c in batch if self.run.add_seen(c.sch.mod)]
            self.run.repeats += len(batch) - len(fresh)
            if seed is not None and self.run.add_seen(seed.sch.mod):
                fresh.insert(0, seed)
            fresh = fresh[: self.run.budget]
            if fresh:
                self.pending = list(batch)
                return [self._measured_args(c) for c in fresh]
            self.inner.notify_runner_results(batch, [ms.runner.RunnerResult(None, "measured before")] * len(batch))
        self.run.exhausted = True
        return None

    def _measured_args(self, candidate: ms.MeasureCandidate) -> ms.MeasureCandidate:
        """``candidate`` with the arguments of the kernel it materializes, for tasks whose array sizes follow
        the knobs (dense templates: ``measure_args``)."""
        if not isinstance(self.run.task, DenseTuningTask):
            return candidate
        return ms.MeasureCandidate(candidate.sch, self.run.task.measure_args(candidate.sch.mod))

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.run.budget -= len(measure_candidates)
        batch, self.pending = self.pending, []
        padding = [ms.runner.RunnerResult(None, "measured before")] * (len(batch) - len(results))
        self.inner.notify_runner_results(batch, [*results, *padding][: len(batch)])

    def clone(self):
        return ResumeSearch(self.inner.clone(), self.run, self.max_empty)


@derived_object
class RecordMeasurements(PyMeasureCallback):
    """Commit each measurement to the database as it arrives (MetaSchedule's ``AddToDatabase``, except that
    runs lost with their device are not recorded and stop the job), and show progress."""

    def __init__(self, run: TuneRun, database, target: Target, remote: Remote | None) -> None:
        super().__init__()
        self.run = run
        self.database = database
        self.workload = database.commit_workload(run.task.mod)
        self.target = target
        self.remote = remote

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        lost = self._lost(runner_results)
        for i, (candidate, result) in enumerate(zip(measure_candidates, runner_results, strict=True)):
            if i in lost:
                continue
            secs = seconds(result.run_secs) if result.run_secs and not result.error_msg else [FAILED_SECS]
            run_secs = [tvm.tirx.FloatImm("float32", s) for s in secs]
            self.database.commit_tuning_record(ms.database.TuningRecord(
                candidate.sch.trace, self.workload, run_secs, self.target, candidate.args_info))  # fmt: skip
            self.run.measured += 1
            if secs[0] < FAILED_SECS:
                self.run.best_secs = min(self.run.best_secs, float(np.median(secs)))
            elif result.error_msg:
                log.info("%s: measurement failed: %s", self.run.task.name, str(result.error_msg).splitlines()[0])
            if self.run.bar is not None:
                self.run.bar.update(1)
                if self.run.best_secs < math.inf:
                    self.run.bar.set_postfix_str(f"best {self.run.best_secs * 1e6:.1f} us")

    def _lost(self, runner_results) -> set[int]:
        """Indices of RPC runs that failed because a server went away (not recorded: a rerun measures them).

        RPC failures while every server is still registered are the kernel's (recorded as failed runs). If no
        server is left, ``run.stop`` says so and the job ends.
        """
        if self.remote is None:
            return set()
        failed = {i for i, r in enumerate(runner_results) if r.error_msg and str(r.error_msg).startswith("RPC")}
        if not failed:
            return set()
        left = self._servers_left()
        if left >= self.remote.expected:
            return set()
        why = str(runner_results[min(failed)].error_msg).strip().splitlines()[-1]
        if left == 0:
            self.run.stop = f"no RPC server is left under {self.remote} ({why})"
        else:
            log.warning("%d of %d RPC servers under %s went away (%s); measuring on the others",
                        self.remote.expected - left, self.remote.expected, self.remote, why)  # fmt: skip
            self.remote.expected = left
        return failed

    def _servers_left(self, tries: int = 3) -> int:
        """Servers under the key, asked a few times: the tracker drops a dead server once its socket closes."""
        left = 0
        for attempt in range(tries):
            try:
                left = self.remote.servers()
            except RPCError:
                return 0
            if left < self.remote.expected:
                return left
            if attempt < tries - 1:
                time.sleep(1.0)
        return left


@contextlib.contextmanager
def without_tensor_intrinsics() -> Iterator[None]:
    """Skip ``TuneContext``'s ``import tvm.s_tir.tensor_intrin`` (minutes, unused by these kernels).

    A placeholder module stands in during construction only, then is removed, so a later real import works.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    placeholder = types.ModuleType(name)
    sys.modules[name] = placeholder
    try:
        yield
    finally:
        if sys.modules.get(name) is placeholder:
            del sys.modules[name]


@contextlib.contextmanager
def plain_tables() -> Iterator[None]:
    """MetaSchedule's progress tables as text, also inside Jupyter.

    In a notebook MetaSchedule renders them with pandas, which neither TVM's wheel nor this project needs.
    """
    name = "s_tir.meta_schedule.using_ipython"
    original = tvm_ffi.get_global_func(name)
    tvm_ffi.register_global_func(name, lambda: False, override=True)
    try:
        yield
    finally:
        tvm_ffi.register_global_func(name, original, override=True)


def task_logger(work: Path, name: str) -> logging.Logger:
    """MetaSchedule's per-task log (IR, traces, every trial) into ``work/logs/NAME.log``, not the console."""
    logger = logging.getLogger(f"{__name__}.task.{name}")
    if not logger.handlers:
        (work / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(work / "logs" / f"{name}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
