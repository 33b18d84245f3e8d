"""Tuning jobs: MetaSchedule searches every pattern-sparse layer's template, here or on devices over TVM RPC.

One job tunes the distinct sparse layers of a model (``extract_tasks``) one after the other with MetaSchedule's
own parts: ``EvolutionarySearch`` over the template's design space, an ``XGBModel`` cost model shared by all
layers, a ``LocalBuilder`` (cross-linking for Arm targets), a ``LocalRunner`` or an ``RPCRunner`` with one
worker per server registered under the key, and a ``JSONDatabase`` in the work directory
(``database_workload.json`` / ``database_tuning_record.json``, MetaSchedule's own format, one line appended
per measurement). ``tvm-pattern compile --db DIR`` then replays each layer's best trace (``tuned_kernel``).

What MetaSchedule does not do and this module adds:

- resuming: measurements already in the database count toward ``trials`` and are never measured again
  (``EvolutionarySearch`` only avoids repeats within one run; it seeds its population from the database but
  may pick a measured schedule again), and the cost model is first trained on them;
- devices that vanish: a runner error is checked against the tracker; if no server is left under the key the
  job stops with an ``RPCError`` saying so, the failed runs are not recorded (so a rerun measures them), and
  every finished measurement stays in the database;
- runner arguments: the kernel's index and weight arrays are the layer's real ones (random indices crash).

Features for the cost model: the knob values a candidate sampled plus its layer's shape (``KnobFeatures``).
Why not MetaSchedule's per-store features: the template is generated code whose IR is the same for every
sample; features of the materialized kernel need it generated first (0.5-2 s per candidate here, times the
search population every round), while the knobs determine the kernel exactly and cost nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.feature_extractor import PyFeatureExtractor
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy
from tvm.target import Target

from .errors import RPCError, TvmPatternError
from .schedules import family
from .schedules.space import TuningTask, build, knobs, template
from .targets import is_host, resolve_target

__all__ = [
    "RECORD_FILE",
    "WORKLOAD_FILE",
    "KnobFeatures",
    "TaskResult",
    "extract_tasks",
    "open_database",
    "tune",
    "tune_file",
    "tuned_kernel",
]

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
FAILED_SECS = 1e10  # MetaSchedule's run time for a failed measurement (never picked as best)
FEATURES = 32  # length of a KnobFeatures vector (zero-padded), fixed so one model serves every layer


# ---------------------------------------------------------------------------------------------- tasks


def extract_tasks(mod: IRModule, target: object = "x86", library=None, dense_kernel: bool = True) -> list[TuningTask]:
    """The distinct pattern-sparse layers of a Relax module as tuning tasks, in model order.

    Runs the same ``PatternSparseConv2d`` pass as ``compiler.build`` (``dense_kernel`` alike), so the tasks
    are exactly the kernels a compile generates. Layers whose workload IR is identical (same shapes, patterns
    and kept-kernel count) share one task: the database keys records by that IR, so one record serves them all.
    """
    from .transform import PatternSparseConv2d

    target = resolve_target(target)
    sparse = PatternSparseConv2d(library, target=target, dense_kernel=dense_kernel, collect_tasks=True)
    with target:
        sparse(mod)
    tasks = _distinct(sparse.tasks)
    log.info("%d generated kernels, %d distinct tuning tasks", len(sparse.tasks), len(tasks))
    return tasks


def _distinct(tasks: Sequence[TuningTask]) -> list[TuningTask]:
    """``tasks`` without repeated workloads (structurally equal ``mod``), first occurrence kept."""
    seen: dict[int, list[IRModule]] = {}
    out = []
    for task in tasks:
        bucket = seen.setdefault(tvm_ffi.structural_hash(task.mod), [])
        if any(tvm_ffi.structural_equal(task.mod, other) for other in bucket):
            continue
        bucket.append(task.mod)
        out.append(task)
    return out


# ---------------------------------------------------------------------------------------------- database


def _repair(path: Path) -> None:
    """Drop a last line cut short by a killed writer, so MetaSchedule can load the file.

    JSONDatabase appends one complete line per record; only a kill in the middle of a write leaves a partial
    line, and only at the end. The file is rewritten through a temporary one.
    """
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data:
        return
    lines = data.splitlines(keepends=True)
    last = lines[-1]
    try:
        json.loads(last)
        complete = last.endswith(b"\n")
    except ValueError:
        complete = False
    if complete:
        return
    log.warning("%s: dropping an incomplete last line (a tuning job was killed while writing it)", path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    good = b"".join(lines[:-1])
    try:
        json.loads(last)
        good += last + b"\n"  # complete JSON, only the newline was missing
    except ValueError:
        pass
    tmp.write_bytes(good)
    os.replace(tmp, path)


def open_database(work_dir: str | os.PathLike, create: bool = False) -> ms.database.JSONDatabase:
    """The JSON database of a tuning job's work directory (``create``: start one if there is none)."""
    work = Path(work_dir)
    files = (work / WORKLOAD_FILE, work / RECORD_FILE)
    if not create and not all(f.is_file() for f in files):
        raise TvmPatternError(
            f"{work} holds no tuning database ({WORKLOAD_FILE}, {RECORD_FILE}): run `tvm-pattern tune` first"
        )
    work.mkdir(parents=True, exist_ok=True)
    for f in files:
        _repair(f)
    try:
        return ms.database.JSONDatabase(str(files[0]), str(files[1]), allow_missing=create)
    except Exception as err:  # a file that is not MetaSchedule's JSON
        raise TvmPatternError(f"cannot read the tuning database in {work}: {err}") from err


def _records(db: ms.database.Database, task: TuningTask) -> list[ms.database.TuningRecord]:
    """Every record of ``task``'s workload, failed measurements included."""
    if not db.has_workload(task.mod):
        return []
    workload = db.commit_workload(task.mod)
    return [r for r in db.get_all_tuning_records() if r.workload.same_as(workload)]


def tuned_kernel(task: TuningTask, database: ms.database.Database, target: Target) -> tvm.tirx.PrimFunc | None:
    """The kernel of the best schedule the database holds for ``task`` (its trace replayed, then materialized),
    or None if it has no successful measurement of it for this kind of target."""
    record = database.query_tuning_record(task.mod, target, task.name)
    if record is None:
        return None
    if record.target is not None and family(record.target) != family(target):
        log.warning("%s: the database's record was tuned for %s, not %s: default kernel",
                    task.name, family(record.target), family(target))  # fmt: skip
        return None
    sch = s_tir.Schedule(task.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return task.materialize(sch.mod)


# ---------------------------------------------------------------------------------------------- cost model


@derived_object
class KnobFeatures(PyFeatureExtractor):
    """A candidate's features for ``XGBModel``: its sampled knobs, its block shape, and its layer's shape.

    One row per candidate, ``FEATURES`` wide. The knobs of a template determine its kernel exactly, so they are
    a complete description; the layer's shape lets one model serve every layer of a job.
    """

    def extract_from(self, context, candidates) -> list[tvm.runtime.Tensor]:
        rows = [_knob_vector(c.sch.mod["main"]) for c in candidates]
        return [tvm.runtime.tensor(row[None, :]) for row in rows]


def _knob_vector(func: tvm.tirx.PrimFunc) -> np.ndarray:
    description = template(func)
    if description is None:
        raise TvmPatternError("KnobFeatures needs a template task (schedules.space.template_mod)")
    picked = knobs(func)
    values = [float(picked[name]) for name in sorted(picked)]
    blocks, default = description.get("blocks"), description.get("default", {})
    if blocks and "block" in picked:
        rows, cols = blocks[picked["block"]]
        lanes = picked.get("lanes", default.get("vector", 1))
        values += [rows, cols, cols / max(lanes, 1), rows * cols / max(lanes, 1)]
    kernel = description.get("kernel", {})
    values += [*description.get("data_shape", []), kernel.get("out_channels", 0), kernel.get("nnz", 0),
               kernel.get("k", 0), *description.get("strides", [])]  # fmt: skip
    vector = np.zeros(FEATURES, np.float32)
    vector[: min(len(values), FEATURES)] = values[:FEATURES]
    return vector


# ---------------------------------------------------------------------------------------------- running


def _seconds(values) -> list[float]:
    """Run times as floats (MetaSchedule holds them as ``FloatImm``)."""
    return [float(getattr(v, "value", v)) for v in values]


class _Arguments:
    """The runners' ``f_alloc_argument``: the current task's real arrays, random data, a zero output.

    Picklable (runners ship it to their worker processes with every measurement); ``use`` switches tasks.
    Works for both runners: ``(device, args_info, repeat)`` and ``(session, device, args_info, repeat)``.
    """

    def __init__(self) -> None:
        self.arrays: tuple[np.ndarray, ...] = ()
        self.name = ""

    def use(self, task: TuningTask) -> None:
        self.arrays, self.name = tuple(task.arrays), task.name

    def __call__(self, *args) -> list[list[tvm.runtime.Tensor]]:
        device, args_info, repeat = args[-3:]
        if len(args_info) != len(self.arrays) + 2:
            raise TvmPatternError(f"{self.name}: the kernel takes {len(args_info)} arguments, the task has "
                                  f"{len(self.arrays)} arrays plus data and output")  # fmt: skip
        rng = np.random.default_rng(0)
        out = []
        for _ in range(repeat):
            args_out = []
            for i, (_, dtype, shape) in enumerate(args_info):
                if i == 0:
                    value = rng.uniform(-1, 1, shape).astype(dtype)
                elif i == len(args_info) - 1:
                    value = np.zeros(shape, dtype)
                else:
                    value = self.arrays[i - 1]
                    if tuple(value.shape) != tuple(shape) or str(value.dtype) != dtype:
                        raise TvmPatternError(f"{self.name}: argument {i} is {dtype}{list(shape)} but the task's "
                                              f"array is {value.dtype}{list(value.shape)}")  # fmt: skip
                args_out.append(tvm.runtime.tensor(np.ascontiguousarray(value), device))
            out.append(args_out)
        return out


_LOST = "no RPC server answered"  # marks a session that could not be opened (device gone)


def _create_session(config: ms.runner.RPCConfig):
    """The RPC runner's ``f_create_session``: fail at once if no server is registered under the key, and
    give up waiting for a free one after a while (the tracker would queue the request forever)."""
    from . import rpc

    address = (config.tracker_host, int(config.tracker_port))
    servers = rpc.tracker_servers(address, timeout=10.0)
    if not any(s.get("key") == f"server:{config.tracker_key}" for s in servers):
        raise RPCError(f"{_LOST}: none is registered under key {config.tracker_key!r}")
    result: dict = {}

    def request() -> None:
        try:
            tracker = tvm.rpc.connect_tracker(*address)
            result["session"] = tracker.request(config.tracker_key, priority=config.session_priority,
                                                session_timeout=config.session_timeout_sec)  # fmt: skip
        except Exception as err:  # reported below
            result["error"] = err

    wait = max(60.0, 3.0 * float(config.session_timeout_sec))
    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    thread.join(wait)
    if "session" in result:
        return result["session"]
    raise RPCError(f"{_LOST} under key {config.tracker_key!r} within {wait:.0f} s: {result.get('error', 'timeout')}")


def _tracker_address(tracker: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(tracker, str):
        host, sep, port = tracker.rpartition(":")
        if not sep or not port.isdigit():
            raise TvmPatternError(f"tracker {tracker!r} is not HOST:PORT")
        return host or "127.0.0.1", int(port)
    return str(tracker[0]), int(tracker[1])


@dataclass
class _Remote:
    """Where measurements run: a tracker and the key of its servers."""

    host: str
    port: int
    key: str
    expected: int = 0  # servers measuring for the job (fewer later: some went away)

    def servers(self) -> int:
        from . import rpc

        found = rpc.tracker_servers((self.host, self.port), timeout=10.0)
        return sum(1 for s in found if s.get("key") == f"server:{self.key}")

    def __str__(self) -> str:
        return f"key {self.key!r} at the tracker {self.host}:{self.port}"


def _connect(tracker, key: str | None, wait: float) -> _Remote:
    """Check the tracker answers and at least one server is registered under ``key`` (waiting ``wait`` s)."""
    from . import rpc

    if not key:
        raise TvmPatternError("tuning over RPC needs the servers' key (--key)")
    host, port = _tracker_address(tracker)
    rpc.wait_for_servers((host, port), key, count=1, timeout=wait)  # RPCError naming the tracker or the key
    return _Remote(host, port, key)


# ---------------------------------------------------------------------------------------------- one task


@dataclass
class _Run:
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
class _Resume(PySearchStrategy):
    """MetaSchedule's ``EvolutionarySearch`` minus what the database already holds, within a budget.

    Candidates whose scheduled module was measured before (this run or an earlier one) are dropped; when a
    whole batch is dropped the inner search is asked again (it never proposes a module twice in one run).
    """

    def __init__(self, inner: ms.search_strategy.SearchStrategy, run: _Run, max_empty: int = 5) -> None:
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
        if design_spaces:
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
                return fresh
            self.inner.notify_runner_results(batch, [ms.runner.RunnerResult(None, "measured before")] * len(batch))
        self.run.exhausted = True
        return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.run.budget -= len(measure_candidates)
        batch, self.pending = self.pending, []
        padding = [ms.runner.RunnerResult(None, "measured before")] * (len(batch) - len(results))
        self.inner.notify_runner_results(batch, [*results, *padding][: len(batch)])

    def clone(self):
        return _Resume(self.inner.clone(), self.run, self.max_empty)


@derived_object
class _Record(PyMeasureCallback):
    """Commit each measurement to the database as it arrives (MetaSchedule's ``AddToDatabase``, except that
    runs lost with their device are not recorded and stop the job), and show progress."""

    def __init__(self, run: _Run, database, target: Target, remote: _Remote | None) -> None:
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
            secs = _seconds(result.run_secs) if result.run_secs and not result.error_msg else [FAILED_SECS]
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
def _without_tensor_intrinsics() -> Iterator[None]:
    """Skip ``TuneContext``'s ``import tvm.s_tir.tensor_intrin`` (1-3 minutes here, unused by these kernels).

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
def _plain_tables() -> Iterator[None]:
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


def _task_logger(work: Path, name: str) -> logging.Logger:
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


# ---------------------------------------------------------------------------------------------- the job


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

    def __str__(self) -> str:
        best = f"best {self.best_us:.1f} us" if self.best_us is not None else "no successful run"
        note = ", design space exhausted" if self.exhausted else ""
        return f"{self.name}: {self.trials} trials ({self.measured} new in {self.seconds:.0f} s), {best}{note}"


@dataclass
class _Job:
    """What every task of a job shares: target, database, cost model, options, and (made on first use, as
    their worker processes take seconds to start) the builder and the runner."""

    target: Target
    work: Path
    database: ms.database.JSONDatabase
    cost_model: object
    remote: _Remote | None
    per_iter: int
    population: int
    genetic_iters: int
    seed: int | None
    progress: bool
    timeout: float
    builders: int
    export: Callable
    arguments: _Arguments = field(default_factory=_Arguments)
    _measurers: tuple | None = None

    def measurers(self) -> tuple[object, object]:
        """(builder, runner)."""
        if self._measurers is None:
            self._measurers = (self._builder(), self._runner())
        return self._measurers

    def _builder(self):
        return ms.builder.LocalBuilder(max_workers=self.builders, timeout_sec=max(120.0, self.timeout),
                                       f_build=build, f_export=self.export)  # fmt: skip

    def _runner(self):
        from .schedules.x86 import runtime_threads

        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=50)
        if self.remote is None:
            runtime_threads()  # before the runner's worker starts: TVM's pool would use one thread here
            return ms.runner.LocalRunner(timeout_sec=max(60.0, self.timeout), evaluator_config=evaluator,
                                         f_alloc_argument=self.arguments)  # fmt: skip
        config = ms.runner.RPCConfig(self.remote.host, self.remote.port, self.remote.key,
                                     session_timeout_sec=int(self.timeout))  # fmt: skip
        workers = self.remote.expected = max(1, self.remote.servers())
        log.info("measuring on %d server(s) under %s", workers, self.remote)
        return ms.runner.RPCRunner(config, evaluator, f_create_session=_create_session,
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
) -> list[TaskResult]:
    """Tune each task until the database holds ``trials`` measurements of it; returns one result per task.

    Measures here (``tracker`` None: ``LocalRunner``, host targets only) or on every server registered under
    ``key`` at ``tracker`` (``"HOST:PORT"``), one runner worker per server. ``timeout``: seconds an RPC
    session may last (the server ends longer ones). ``wait_servers``: how long to wait for a first server.
    Raises ``RPCError`` if the tracker or the servers cannot be reached, or all servers disappear mid-job
    (what was measured stays in the database; rerunning the same job continues it).
    """
    if int(trials) < 0:
        raise TvmPatternError(f"trials must be >= 0, got {trials}")
    if not tasks:
        raise TvmPatternError("nothing to tune: the model has no pattern-sparse 3x3 conv")
    job = _job(resolve_target(target), Path(work_dir), tracker, key, trials_per_iter, population, genetic_iters,
               timeout, wait_servers, builders, seed, progress)  # fmt: skip
    started = time.monotonic()
    results = [_tune_task(job, task, int(trials)) for task in tasks]
    measured = sum(r.measured for r in results)
    log.info("tuning job: %d measurements in %.0f s; database in %s", measured, time.monotonic() - started, job.work)
    return results


def _job(target, work, tracker, key, per_iter, population, genetic_iters, timeout, wait_servers, builders, seed,
         progress) -> _Job:
    from .cross import builder_export

    remote = None
    if tracker is not None:
        remote = _connect(tracker, key, wait_servers)
    elif not is_host(target.host if target.host is not None else target) or target.kind.name != "llvm":
        raise TvmPatternError(f"target {target} does not run on this machine: tune it over RPC (--tracker, --key)")
    database = open_database(work, create=True)
    export = builder_export(target)  # fails now if the cross compiler is missing
    cores = os.cpu_count() or 1
    cost_model = ms.cost_model.XGBModel(extractor=KnobFeatures(), num_warmup_samples=8, adaptive_training=False,
                                        num_tuning_cores=cores)  # fmt: skip
    return _Job(target, work, database, cost_model, remote, per_iter, population, genetic_iters, seed, progress,
                timeout, builders or cores, export)  # fmt: skip


def _progress_bar(job: _Job, name: str, total: int, done: int):
    if not job.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"tune {name}", unit="trial", file=sys.stderr, leave=True, initial=0,
                postfix=f"{done} in database" if done else None)  # fmt: skip


def _tune_task(job: _Job, task: TuningTask, trials: int) -> TaskResult:
    started = time.monotonic()
    existing = _records(job.database, task)
    run = _Run(task, budget=max(0, trials - len(existing)))
    valid = [r for r in existing if r.run_secs and _seconds(r.run_secs)[0] < FAILED_SECS]
    if valid:
        run.best_secs = min(float(np.median(_seconds(r.run_secs))) for r in valid)
    if run.budget == 0:
        log.info("%s: %d trials already in the database, nothing to measure", task.name, len(existing))
        return _result(run, len(existing), 0.0)
    with _without_tensor_intrinsics():
        inner = ms.search_strategy.EvolutionarySearch(population_size=job.population,
                                                      init_min_unmeasured=min(50, job.population),
                                                      genetic_num_iters=job.genetic_iters)  # fmt: skip
        context = ms.TuneContext(task.mod, target=job.target, space_generator=task.space,
                                 search_strategy=_Resume(inner, run), task_name=task.name,
                                 rand_state=-1 if job.seed is None else job.seed, num_threads=os.cpu_count() or 1,
                                 logger=_task_logger(job.work, task.name))  # fmt: skip
    candidates = _measured(existing, run)
    if valid:  # the cost model learns what earlier runs measured
        job.cost_model.update(context, [candidates[id(r)] for r in valid if id(r) in candidates],
                              [ms.runner.RunnerResult(r.run_secs, None)
                               for r in valid if id(r) in candidates])  # fmt: skip
    builder, runner = job.measurers()
    job.arguments.use(task)
    run.bar = _progress_bar(job, task.name, run.budget, len(existing))
    try:
        with _plain_tables():
            ms.tune_tasks(
                tasks=[context], task_weights=[1.0], work_dir=str(job.work), max_trials_global=run.budget,
                max_trials_per_task=run.budget, num_trials_per_iter=min(job.per_iter, run.budget),
                builder=builder, runner=runner, database=job.database, cost_model=job.cost_model,
                measure_callbacks=[_Record(run, job.database, job.target, job.remote),
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
    return _result(run, len(existing) + run.measured, time.monotonic() - started)


def _measured(records: list, run: _Run) -> dict[int, object]:
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


def _result(run: _Run, trials: int, seconds: float) -> TaskResult:
    best = run.best_secs * 1e6 if run.best_secs < math.inf else None
    return TaskResult(run.task.name, trials, run.measured, best, seconds, run.exhausted)


def tune_file(
    onnx_path: str | os.PathLike,
    target: object,
    work_dir: str | os.PathLike,
    trials: int,
    tracker: str | tuple[str, int] | None = None,
    key: str | None = None,
    patterns=None,
    echo: Callable[[str], None] | None = print,
    **options,
) -> list[TaskResult]:
    """``tvm-pattern tune``: tune every pattern-sparse layer of an ONNX model; prints one line per task."""
    from .compiler import import_onnx

    target = resolve_target(target)
    tasks = extract_tasks(import_onnx(onnx_path), target, patterns)
    if echo:
        echo(f"{len(tasks)} distinct pattern-sparse layer(s) to tune, {trials} trials each, database in {work_dir}")
    results = tune(tasks, target, work_dir, trials, tracker, key, **options)
    if echo:
        for result in results:
            echo(f"  {result}")
    return results
