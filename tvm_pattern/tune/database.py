"""The tuning database: MetaSchedule's JSON database in a work directory (repaired after a kill), the best
kernel of a task, and ``DatabaseKernels`` / ``DatabaseDenseKernels``, the passes' kernel providers backed by a
database."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..errors import TvmPatternError
from ..passes import (
    ConvLayer,
    DefaultDenseKernels,
    DefaultKernels,
    DenseKernelProvider,
    DenseLayer,
    KernelProvider,
    ProvidedKernel,
    runs_winograd,
)
from ..schedules import dense_space, family_name
from ..schedules.space import TuningTask, knobs, template
from ..targets import resolve_target
from .confirm import replayed, stored
from .tasks import dense_layer_task, layer_task

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


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


def records(db: ms.database.Database, task: TuningTask) -> list[ms.database.TuningRecord]:
    """Every record of ``task``'s workload, failed measurements included."""
    if not db.has_workload(task.mod):
        return []
    workload = db.commit_workload(task.mod)
    return [r for r in db.get_all_tuning_records() if r.workload.same_as(workload)]


def best_record(task: TuningTask, database: ms.database.Database, target: Target) -> ms.database.TuningRecord | None:
    """The best successful record of ``task`` for this kind of target, confirmed or not, or None."""
    record = database.query_tuning_record(task.mod, target, task.name)
    if record is None:
        return None
    if record.target is not None and family_name(record.target) != family_name(target):
        log.warning("%s: the database's record was tuned for %s, not %s: default kernel",
                    task.name, family_name(record.target), family_name(target))  # fmt: skip
        return None
    return record


def record_for(task: TuningTask, database: ms.database.Database, target: Target) -> ms.database.TuningRecord | None:
    """The record whose kernel replaces ``task``'s default kernel, or None (the default kernel stays).

    The best record, unless its confirmation (``confirm``: interleaved against the default after tuning)
    rejected it. A record never confirmed (a database of an older version, a job killed before confirming)
    is used, with a note in the log.
    """
    record = best_record(task, database, target)
    if record is None:
        return None
    confirmation = stored(database, task, record)
    if confirmation is None:
        log.info("%s: the best record was never confirmed against the default kernel", task.name)
    elif not confirmation.kept:
        log.info("%s: default kernel (%s)", task.name, confirmation)
        return None
    return record


def tuned_kernel(task: TuningTask, database: ms.database.Database, target: Target) -> tvm.tirx.PrimFunc | None:
    """The kernel of the best schedule the database holds for ``task`` (its trace replayed, then materialized),
    or None if it has no successful measurement of it for this kind of target or its confirmation kept the
    default kernel (``record_for``)."""
    record = record_for(task, database, target)
    return None if record is None else task.materialize(replayed(task, record))


class DatabaseKernels:
    """A kernel provider backed by a tuning database: a layer whose task has a successful record gets the kernel
    of its best schedule; the others get ``fallback``'s (default: the templates' default kernels).

    ``database``: a MetaSchedule database, or a tuning job's work directory (opened as its JSON database).
    """

    def __init__(self, database, fallback: KernelProvider | None = None) -> None:
        self.database = open_database(database) if isinstance(database, (str, os.PathLike)) else database
        self.fallback = fallback if fallback is not None else DefaultKernels()

    def kernel(self, layer: ConvLayer) -> ProvidedKernel:
        if runs_winograd(layer):  # no task was tuned for it (``TaskCollector``)
            return self.fallback.kernel(layer)
        task = layer_task(layer)
        target = layer.target if layer.target is not None else resolve_target(None)
        func = tuned_kernel(task, self.database, target)
        if func is None:
            log.info("%s: no tuning record for %s, default kernel", layer.name, task.name)
            return self.fallback.kernel(layer)
        return ProvidedKernel(func, tuple(task.arrays), tuned=True)  # the task's arrays: bias included


class DatabaseDenseKernels:
    """A dense kernel provider backed by a tuning database: a layer whose task has a successful record gets the
    kernel its best knobs select, generated for the layer's weights (``tuned=True``); the others ``fallback``'s.

    ``database``: a MetaSchedule database, or a tuning job's work directory.
    """

    def __init__(self, database, fallback: DenseKernelProvider | None = None) -> None:
        self.database = open_database(database) if isinstance(database, (str, os.PathLike)) else database
        self.fallback = fallback if fallback is not None else DefaultDenseKernels()
        self.tuned: list[str] = []  # the layers that got a tuned kernel

    def kernel(self, layer: DenseLayer) -> ProvidedKernel:
        if runs_winograd(layer):
            return self.fallback.kernel(layer)
        task = dense_layer_task(layer)
        target = layer.target if layer.target is not None else resolve_target(None)
        record = record_for(task, self.database, target)
        if record is None:
            log.info("%s: no tuning record for %s, default kernel", layer.name, task.name)
            return self.fallback.kernel(layer)
        func = replayed(task, record)["main"]
        kernel = dense_space.kernel(template(func), knobs(func), layer.weight, layer.bias)
        if tuple(kernel.out_shape) != tuple(layer.out_shape):
            raise ValueError(f"{layer.name}: tuned kernel output shape {kernel.out_shape} != {layer.out_shape}")
        self.tuned.append(layer.name)
        return ProvidedKernel(kernel.func, tuple(kernel.arrays), tuned=True)

