"""Confirmation: a tuned record replaces a template's default kernel only if it beats it in an interleaved A/B
measurement (A B, B A, ... rounds, medians) taken as the final model runs (the runtime thread pool, warm-up
calls, samples of ~50 ms).

Why: the search measures each candidate once, one after another, on a machine others share; the best of many
noisy runs is biased towards luck, and adopting it unconfirmed made tuned kernels up to 15% slower than the
default. Each verdict is appended to ``database_confirmed.json`` in the work directory (one JSON line: the
task's workload hash, the record's knobs, both medians, kept or not); ``database.record_for`` reads it, so a
rejected record is never selected: the task gets its default kernel. The records themselves are untouched
(resuming, trial counts and MetaSchedule's files stay as they were).

Where: in this process for host targets; over RPC through the job's builder and runner (one kernel per runner
call, so two servers never measure at once; several servers may measure different rounds). Leftover ops
(``OpTask``) are not confirmed: ``MetaScheduleApplyDatabase`` applies their records straight from the database.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir import IRModule
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..schedules.space import TuningTask, knobs

log = logging.getLogger(__name__)

__all__ = ["CONFIRM_FILE", "MAJORITY", "MARGIN", "NOISE_Z", "ROUNDS", "Confirmation", "confirm_local", "confirm_remote",
           "decide", "interleaved", "record_knobs", "replayed", "save", "stored"]

CONFIRM_FILE = "database_confirmed.json"
MARGIN = 0.02  # the tuned median must be this much below the default's
MAJORITY = 2 / 3  # ... and the tuned kernel faster in at least this share of the rounds
NOISE_Z = 2.5  # ... by this many standard errors of the per-round ratios
ROUNDS = 11
REMOTE_ROUNDS = 5  # each RPC round opens sessions and uploads both kernels: seconds


def decide(default_samples: Sequence[float], tuned_samples: Sequence[float], margin: float = MARGIN,
           majority: float = MAJORITY) -> bool:
    """Keep the tuned kernel? ``*_samples``: paired, one of each per round.

    All of: the tuned median below the default's by more than ``margin``; the median of the per-round ratios
    too (a round's ratio cancels what slowed both of its samples); that gain above ``NOISE_Z`` standard errors
    of the ratios' spread (robust: MAD); the tuned kernel faster in at least ``majority`` of the rounds (all
    of them below 3 rounds).
    """
    default, tuned = np.asarray(default_samples, float), np.asarray(tuned_samples, float)
    if default.shape != tuned.shape or default.ndim != 1 or len(default) == 0:
        raise ValueError(f"paired samples needed, got {len(default_samples)} default and {len(tuned_samples)} tuned")
    if not (np.isfinite(default).all() and np.isfinite(tuned).all() and (default > 0).all() and (tuned > 0).all()):
        return False
    n = len(default)
    needed = n if n < 3 else math.ceil(majority * n - 1e-9)
    logs = np.log(tuned / default)
    gain = -float(np.median(logs))
    spread = 1.4826 * float(np.median(np.abs(logs + gain)))
    edge = 1e-9  # a gain of exactly ``margin`` is not more than it, whatever the rounding of the ratios
    return bool(np.median(tuned) < np.median(default) * (1.0 - margin) * (1.0 - edge)
                and gain > -math.log(1.0 - margin) + edge
                and gain > NOISE_Z * spread / math.sqrt(n) and int((tuned < default).sum()) >= needed)  # fmt: skip


def interleaved(calls: Sequence[Callable[[], object]], rounds: int, min_s: float = 0.05,
                warmup: int = 3) -> list[list[float]]:
    """Samples in ms of each of ``calls``, interleaved: every round times each once, the order rotating by one
    per round (A B, B A, ...). Warm-up calls first; each sample averages enough calls to last ``min_s``."""
    numbers = []
    for call in calls:
        one = math.inf
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            call()
            one = min(one, time.perf_counter() - t0)
        numbers.append(max(1, math.ceil(min_s / max(one, 1e-7))))
    samples: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        for k in range(len(calls)):
            i = (k + r) % len(calls)
            t0 = time.perf_counter()
            for _ in range(numbers[i]):
                calls[i]()
            samples[i].append((time.perf_counter() - t0) / numbers[i] * 1e3)
    return samples


@dataclass(frozen=True)
class Confirmation:
    """A task's best record against its default kernel: medians in ms, rounds the tuned kernel won, verdict."""

    task: str
    default_ms: float
    tuned_ms: float
    kept: bool
    wins: int
    rounds: int
    knobs: dict[str, int] = field(default_factory=dict)  # the record's (how ``stored`` finds it again)
    where: str = "local"

    @property
    def speedup(self) -> float:
        return self.default_ms / self.tuned_ms if self.tuned_ms > 0 else math.nan

    def __str__(self) -> str:
        verdict = "tuned kept" if self.kept else "default kept"
        return (f"confirmed {verdict}: default {self.default_ms:.3f} ms, tuned {self.tuned_ms:.3f} ms "
                f"({self.speedup:.2f}x, faster in {self.wins}/{self.rounds} rounds, {self.where})")


_FIELDS = {f.name for f in fields(Confirmation)}


def replayed(task, record: ms.database.TuningRecord) -> IRModule:
    """``task``'s workload with ``record``'s trace applied: the scheduled template its kernel is made from."""
    sch = s_tir.Schedule(task.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod


def record_knobs(task: TuningTask, record: ms.database.TuningRecord) -> dict[str, int]:
    """The knob values ``record``'s trace selects for ``task``."""
    return knobs(replayed(task, record)["main"])


def _workload(task: TuningTask) -> str:
    return str(tvm_ffi.structural_hash(task.mod))


def _file(where) -> Path | None:
    """The confirmations file of a work directory or of a JSON database (None for other databases)."""
    if isinstance(where, (str, os.PathLike)):
        return Path(where) / CONFIRM_FILE
    path = getattr(where, "path_tuning_record", None)
    return Path(str(path)).parent / CONFIRM_FILE if path else None


def save(where, task: TuningTask, confirmation: Confirmation) -> None:
    """Append ``confirmation`` to the confirmations of ``where`` (a work directory or its JSON database)."""
    path = _file(where)
    if path is None:
        return
    line = json.dumps({"workload": _workload(task), **asdict(confirmation)}, sort_keys=True)
    with path.open("a") as f:
        f.write(line + "\n")


def stored(where, task: TuningTask, record: ms.database.TuningRecord) -> Confirmation | None:
    """The latest confirmation of ``record`` (``task``'s) in ``where``, or None if it was never confirmed."""
    path = _file(where)
    if path is None or not path.is_file():
        return None
    workload, picked, found = _workload(task), None, None
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if entry.pop("workload", None) != workload:
            continue
        picked = record_knobs(task, record) if picked is None else picked
        if {k: int(v) for k, v in entry.get("knobs", {}).items()} == picked:
            found = Confirmation(**{k: v for k, v in entry.items() if k in _FIELDS})
    return found


def _verdict(task: TuningTask, tuned: dict[str, int], default_ms: list[float], tuned_ms: list[float],
             where: str) -> Confirmation:
    kept = decide(default_ms, tuned_ms)
    wins = int(sum(t < d for d, t in zip(default_ms, tuned_ms, strict=True)))
    return Confirmation(task.name, float(np.median(default_ms)), float(np.median(tuned_ms)), kept, wins,
                        len(default_ms), tuned, where)  # fmt: skip


def _kernels(task: TuningTask, record: ms.database.TuningRecord) -> tuple[tvm.tirx.PrimFunc, tvm.tirx.PrimFunc,
                                                                         dict[str, int]]:
    """(default kernel, the record's kernel as ``compile --db`` would get it, the record's knobs)."""
    mod = replayed(task, record)
    return task.materialize(task.mod), task.materialize(mod), knobs(mod["main"])


def _call(func: tvm.tirx.PrimFunc, target: Target, arguments) -> Callable[[], object]:
    fn = tvm.compile(IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]
    info = [a.as_json() for a in ms.arg_info.ArgInfo.from_prim_func(func)]
    args = arguments(tvm.cpu(), info, 1)[0]
    return lambda: fn(*args)


def confirm_local(task: TuningTask, record: ms.database.TuningRecord, target: Target, arguments,
                  rounds: int = ROUNDS) -> Confirmation | None:
    """Measure ``record``'s kernel against the default here; None if it is the default kernel itself.

    ``arguments``: the job's ``remote.Arguments`` (already ``use``-d for ``task``). Runs in this process's
    TVM thread pool (``targets.runtime_threads``), the one a compiled model uses.
    """
    default, tuned, tuned_knobs = _kernels(task, record)
    if tvm_ffi.structural_equal(default, tuned):
        return None
    calls = [_call(default, target, arguments), _call(tuned, target, arguments)]
    default_ms, tuned_ms = interleaved(calls, rounds)
    return _verdict(task, tuned_knobs, default_ms, tuned_ms, "local")


def confirm_remote(task: TuningTask, record: ms.database.TuningRecord, target: Target, builder, runner,
                   rounds: int = REMOTE_ROUNDS) -> Confirmation | None:
    """As ``confirm_local``, measured by the job's builder and (RPC) runner: its warm-up call and its samples
    of >= 50 ms; one kernel per runner call, alternating which goes first. None if the record is the default
    kernel, or if a build or run failed (the record then stays unconfirmed)."""
    default, tuned, tuned_knobs = _kernels(task, record)
    if tvm_ffi.structural_equal(default, tuned):
        return None
    mods = [IRModule({"main": f.with_attr("global_symbol", "main")}) for f in (default, tuned)]
    built = builder.build([ms.builder.BuilderInput(m, target) for m in mods])
    try:
        if any(b.error_msg for b in built):
            log.warning("%s: confirmation build failed: %s", task.name, next(b.error_msg for b in built if b.error_msg))
            return None
        device = "cpu" if target.kind.name == "llvm" else target.kind.name
        inputs = [ms.runner.RunnerInput(b.artifact_path, device, ms.arg_info.ArgInfo.from_prim_func(f))
                  for b, f in zip(built, (default, tuned), strict=True)]  # fmt: skip
        samples: list[list[float]] = [[], []]
        for r in range(rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                result = runner.run([inputs[i]])[0].result()
                if result.error_msg or not result.run_secs:
                    log.warning("%s: confirmation run failed: %s", task.name, result.error_msg)
                    return None
                samples[i].append(float(np.median([float(getattr(s, "value", s)) for s in result.run_secs])) * 1e3)
    finally:
        for b in built:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
    return _verdict(task, tuned_knobs, samples[0], samples[1], "rpc")
