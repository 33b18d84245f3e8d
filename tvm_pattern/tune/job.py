"""Tuning jobs: every task of a model, one after the other, sharing a target, a database, a cost model and
the builder / runner processes."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..devices.cross import builder_export
from ..errors import RPCError, TvmPatternError
from ..frontend import import_onnx
from ..schedules import dense_space
from ..schedules.dense_space import DenseTuningTask
from ..schedules.space import TuningTask
from ..targets import host_cores, is_host, resolve_target, runtime_threads
from .builder import PoolBuilder
from .confirm import Confirmation, confirm_local, confirm_remote, save, stored
from .database import best_record, open_database, records
from .features import KnobFeatures
from .ops import OpTask
from .remote import Arguments, Remote, connect, create_session, seconds
from .search import (
    FAILED_SECS,
    RecordMeasurements,
    ResumeSearch,
    TuneRun,
    plain_tables,
    task_logger,
    without_tensor_intrinsics,
)
from .tasks import extract_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    """One task after a tuning job: measurements in the database (``trials``), taken now (``measured``) in
    ``seconds``, and the best run time among all of them."""

    name: str
    trials: int
    measured: int
    best_us: float | None
    seconds: float = 0.0
    exhausted: bool = False  # the design space had no unmeasured schedule left
    confirmation: Confirmation | None = None  # the best record against the default kernel (None: not needed)

    def __str__(self) -> str:
        best = f"best {self.best_us:.1f} us" if self.best_us is not None else "no successful run"
        note = ", design space exhausted" if self.exhausted else ""
        note += f"; {self.confirmation}" if self.confirmation is not None else ""
        return f"{self.name}: {self.trials} trials ({self.measured} new in {self.seconds:.0f} s), {best}{note}"


@dataclass
class _Job:
    """What every task of a job shares: target, database, cost model, options, and (made on first use, as
    their worker processes take seconds to start) the builder and the runner."""

    target: Target
    work: Path
    database: ms.database.JSONDatabase
    cost_model: object
    remote: Remote | None
    per_iter: int
    population: int
    genetic_iters: int
    seed: int | None
    progress: bool
    timeout: float
    builders: int
    export: Callable
    arguments: Arguments = field(default_factory=Arguments)
    confirm: bool = True  # confirm each task's best record against the default kernel (``confirm``)
    _measurers: tuple | None = None
    _op_cost_model: object = None

    def cost_model_for(self, task: TuningTask):
        """The knob-feature model for templates; for leftover ops (no knobs) one on MetaSchedule's own
        per-store features, shared by all of them."""
        if not isinstance(task, OpTask):
            return self.cost_model
        if self._op_cost_model is None:
            self._op_cost_model = ms.cost_model.XGBModel(num_warmup_samples=8, adaptive_training=False,
                                                         num_tuning_cores=host_cores())  # fmt: skip
        return self._op_cost_model

    def measurers(self) -> tuple[object, object]:
        """(builder, runner)."""
        if self._measurers is None:
            self._measurers = (self._builder(), self._runner())
        return self._measurers

    def _builder(self):
        return PoolBuilder(max_workers=self.builders, timeout_sec=max(120.0, self.timeout),
                           f_build=dense_space.build, f_export=self.export)  # fmt: skip

    def close(self) -> None:
        """Stop the builder's worker processes."""
        if self._measurers is not None:
            self._measurers[0].close()

    def _runner(self):
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=50)
        if self.remote is None:
            runtime_threads()  # before the runner's worker starts: TVM's pool may otherwise use one thread
            return ms.runner.LocalRunner(timeout_sec=max(60.0, self.timeout), evaluator_config=evaluator,
                                         f_alloc_argument=self.arguments)  # fmt: skip
        config = ms.runner.RPCConfig(self.remote.host, self.remote.port, self.remote.key,
                                     session_timeout_sec=int(self.timeout))  # fmt: skip
        workers = self.remote.expected = max(1, self.remote.servers())
        log.info("measuring on %d server(s) under %s", workers, self.remote)
        return ms.runner.RPCRunner(config, evaluator, f_create_session=create_session,
                                   f_alloc_argument=self.arguments, max_workers=workers)  # fmt: skip


def tune(
    tasks: Sequence[TuningTask],
    target: object,
    work_dir: str | os.PathLike,
    trials: int,
    tracker: str | tuple[str, int] | None = None,
    key: str | None = None,
    *,
    trials_per_iter: int = 16,
    population: int = 128,
    genetic_iters: int = 2,
    timeout: float = 60.0,
    wait_servers: float = 60.0,
    builders: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    confirm: bool = True,
) -> list[TaskResult]:
    """Tune each task until the database holds ``trials`` measurements of it; returns one result per task.

    Measures here (``tracker`` None: ``LocalRunner``, host targets only) or on every server registered under
    ``key`` at ``tracker`` (``"HOST:PORT"``), one runner worker per server. ``timeout``: seconds an RPC
    session may last (the server ends longer ones). ``wait_servers``: how long to wait for a first server.
    Raises ``RPCError`` if the tracker or the servers cannot be reached, or all servers disappear mid-job
    (what was measured stays in the database; rerunning the same job continues it).

    ``confirm``: after each task's search, time its best record against the default kernel, interleaved, and
    keep the default unless the record wins beyond noise (``confirm``; ``TaskResult.confirmation``). False
    adopts the best record unconfirmed (tests of the machinery on kernels too small to time).
    """
    if int(trials) < 0:
        raise TvmPatternError(f"trials must be >= 0, got {trials}")
    if not tasks:
        raise TvmPatternError("nothing to tune: the model has no op a tuning task covers")
    job = _job(resolve_target(target), Path(work_dir), tracker, key, trials_per_iter, population, genetic_iters,
               timeout, wait_servers, builders, seed, progress)  # fmt: skip
    job.confirm = confirm
    started = time.monotonic()
    try:
        results = [_tune_task(job, task, int(trials), f"[{i + 1}/{len(tasks)}] ") for i, task in enumerate(tasks)]
    finally:
        job.close()
    measured = sum(r.measured for r in results)
    log.info("tuning job: %d measurements in %.0f s; database in %s", measured, time.monotonic() - started, job.work)
    return results


def _job(target, work, tracker, key, per_iter, population, genetic_iters, timeout, wait_servers, builders, seed,
         progress) -> _Job:
    remote = None
    if tracker is not None:
        remote = connect(tracker, key, wait_servers)
    elif not is_host(target.host if target.host is not None else target) or target.kind.name != "llvm":
        raise TvmPatternError(f"target {target} does not run on this machine: tune it over RPC (--tracker, --key)")
    database = open_database(work, create=True)
    export = builder_export(target)  # fails now if the cross compiler is missing
    cores = host_cores()
    cost_model = ms.cost_model.XGBModel(extractor=KnobFeatures(), num_warmup_samples=8, adaptive_training=False,
                                        num_tuning_cores=cores)  # fmt: skip
    return _Job(target, work, database, cost_model, remote, per_iter, population, genetic_iters, seed, progress,
                timeout, builders or cores, export)  # fmt: skip


def _progress_bar(job: _Job, name: str, total: int, done: int, step: str = ""):
    if not job.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"tune {step}{name}", unit="trial", file=sys.stderr, leave=True, initial=0,
                postfix=f"{done} in database" if done else None)  # fmt: skip


def _tune_task(job: _Job, task: TuningTask, trials: int, step: str = "") -> TaskResult:
    started = time.monotonic()
    existing = records(job.database, task)
    run = TuneRun(task, budget=max(0, trials - len(existing)))
    valid = [r for r in existing if r.run_secs and seconds(r.run_secs)[0] < FAILED_SECS]
    if valid:
        run.best_secs = min(float(np.median(seconds(r.run_secs))) for r in valid)
    if run.budget == 0:
        log.info("%s: %d trials already in the database, nothing to measure", task.name, len(existing))
        return _result(run, len(existing), 0.0, _confirm(job, task, measure=False))
    with without_tensor_intrinsics():
        inner = ms.search_strategy.EvolutionarySearch(population_size=job.population,
                                                      init_min_unmeasured=min(50, job.population),
                                                      genetic_num_iters=job.genetic_iters)  # fmt: skip
        context = ms.TuneContext(task.mod, target=job.target, space_generator=task.space,
                                 search_strategy=ResumeSearch(inner, run), task_name=task.name,
                                 rand_state=-1 if job.seed is None else job.seed, num_threads=host_cores(),
                                 logger=task_logger(job.work, task.name))  # fmt: skip
    candidates = _measured(existing, run)
    cost_model = job.cost_model_for(task)
    if valid:  # the cost model learns what earlier runs measured
        cost_model.update(context, [candidates[id(r)] for r in valid if id(r) in candidates],
                              [ms.runner.RunnerResult(r.run_secs, None)
                               for r in valid if id(r) in candidates])  # fmt: skip
    builder, runner = job.measurers()
    job.arguments.use(task)
    run.bar = _progress_bar(job, task.name, run.budget, len(existing), step)
    try:
        with plain_tables():
            ms.tune_tasks(
                tasks=[context], task_weights=[1.0], work_dir=str(job.work), max_trials_global=run.budget,
                max_trials_per_task=run.budget, num_trials_per_iter=min(job.per_iter, run.budget),
                builder=builder, runner=runner, database=job.database, cost_model=cost_model,
                measure_callbacks=[RecordMeasurements(run, job.database, job.target, job.remote),
                                   ms.measure_callback.RemoveBuildArtifact(), ms.measure_callback.UpdateCostModel()],
                task_scheduler="round-robin",
            )  # fmt: skip
    finally:
        if run.bar is not None:
            run.bar.close()
    log.info("%s: %d measured, %d proposals skipped as measured before", task.name, run.measured, run.repeats)
    if run.stop:
        raise RPCError(f"tuning stopped at {task.name}: {run.stop}. The database in {job.work} keeps every finished "
                       "measurement; run the same command again to continue")  # fmt: skip
    confirmation = _confirm(job, task, measure=job.confirm and run.measured > 0)
    return _result(run, len(existing) + run.measured, time.monotonic() - started, confirmation)


def _measured(records: list, run: TuneRun) -> dict[int, object]:
    """Replay each record's trace: remember its module as measured; id(record) -> its MeasureCandidate."""
    out = {}
    for record in records:
        try:
            candidate = record.as_measure_candidate()
        except Exception as err:  # a trace this template no longer replays: it cannot be proposed again either
            log.warning("%s: a database record does not replay: %s", run.task.name, err)
            continue
        run.add_seen(candidate.sch.mod)
        out[id(record)] = candidate
    return out


def _result(run: TuneRun, trials: int, seconds: float, confirmation: Confirmation | None = None) -> TaskResult:
    best = run.best_secs * 1e6 if run.best_secs < math.inf else None
    return TaskResult(run.task.name, trials, run.measured, best, seconds, run.exhausted, confirmation)


def _confirm(job: _Job, task: TuningTask, measure: bool) -> Confirmation | None:
    """The confirmation of the task's best record against its default kernel (``confirm``): the stored one, else
    (``measure``: after a search that measured something) a new one. None if there is nothing to confirm (no
    record, the default is best, a leftover op), or none was stored and ``measure`` is False, or it failed."""
    record = best_record(task, job.database, job.target)
    if record is None or isinstance(task, OpTask):
        return None
    confirmation = stored(job.database, task, record)
    if confirmation is not None or not measure:
        return confirmation
    job.arguments.use(task)
    if job.remote is None:
        runtime_threads()  # the pool a compiled model runs in
        confirmation = confirm_local(task, record, job.target, job.arguments)
    else:
        confirmation = confirm_remote(task, record, job.target, *job.measurers())
    if confirmation is not None:
        save(job.database, task, confirmation)
        log.info("%s: %s", task.name, confirmation)
        task_logger(job.work, task.name).info("%s", confirmation)
    return confirmation


def tune_file(
    onnx_path: str | os.PathLike,
    target: object,
    work_dir: str | os.PathLike,
    trials: int,
    tracker: str | tuple[str, int] | None = None,
    key: str | None = None,
    patterns=None,
    echo: Callable[[str], None] | None = print,
    ops: str = "all",
    **options,
) -> list[TaskResult]:
    """``tvm-pattern tune``: tune the ops of an ONNX model, ``trials`` measurements per distinct task; prints one
    line per task. ``ops``: "all" (default: the pattern-sparse and dense layers' templates, and every other op in
    MetaSchedule's default space), "templates" (the project's templates only) or "sparse" (pattern-sparse only).
    """
    target = resolve_target(target)
    tasks = extract_tasks(import_onnx(onnx_path), target, patterns, ops=ops)
    if echo:
        kinds = Counter(_kind(t) for t in tasks)
        echo(f"{kinds['sparse']} distinct pattern-sparse layer(s), {kinds['dense']} dense layer(s) and "
             f"{kinds['op']} other op(s) to tune ({len(tasks)} tasks), {trials} trials each, database in {work_dir}")
    results = tune(tasks, target, work_dir, trials, tracker, key, **options)
    if echo:
        for result in results:
            echo(f"  {result}")
    return results


def _kind(task: TuningTask) -> str:
    if isinstance(task, OpTask):
        return "op"
    return "dense" if isinstance(task, DenseTuningTask) else "sparse"
