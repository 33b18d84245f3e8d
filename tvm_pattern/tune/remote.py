"""Where measurements run: the runners' real arguments, and RPC trackers / servers that may vanish."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms

from ..devices import rpc
from ..errors import RPCError, TvmPatternError
from ..schedules.dense_space import DenseTuningTask
from ..schedules.space import TuningTask
from .ops import OpTask


def seconds(values) -> list[float]:
    """Run times as floats (MetaSchedule holds them as ``FloatImm``)."""
    return [float(getattr(v, "value", v)) for v in values]


class Arguments:
    """The runners' ``f_alloc_argument``: the current task's real arrays, random data, a zero output.

    Picklable (runners ship it to their worker processes with every measurement); ``use`` switches tasks.
    Works for both runners: ``(device, args_info, repeat)`` and ``(session, device, args_info, repeat)``.
    A task's first ``inputs`` arguments are data (random); a dense task's arrays whose shape follows the
    candidate's block (its packed weights) are random too when they differ from the default kernel's (weight
    values do not change a kernel's time); a leftover op (``random``) gets random data for every argument.
    """

    def __init__(self) -> None:
        self.arrays: tuple[np.ndarray, ...] = ()
        self.name = ""
        self.inputs = 1
        self.loose = False  # float arrays of another shape than the task's: random
        self.random = False

    def use(self, task: TuningTask) -> None:
        self.arrays, self.name = tuple(task.arrays), task.name
        dense = isinstance(task, DenseTuningTask)
        self.inputs = task.inputs if dense else 1
        self.loose, self.random = dense, isinstance(task, OpTask)

    def __call__(self, *args) -> list[list[tvm.runtime.Tensor]]:
        device, args_info, repeat = args[-3:]
        if not self.random and len(args_info) != len(self.arrays) + self.inputs + 1:
            raise TvmPatternError(f"{self.name}: the kernel takes {len(args_info)} arguments, the task has "
                                  f"{len(self.arrays)} arrays plus {self.inputs} input(s) and the output")  # fmt: skip
        rng = np.random.default_rng(0)
        out = []
        for _ in range(repeat):
            args_out = [tvm.runtime.tensor(np.ascontiguousarray(self._value(i, dtype, shape, len(args_info), rng)),
                                           device) for i, (_, dtype, shape) in enumerate(args_info)]  # fmt: skip
            out.append(args_out)
        return out

    def _value(self, i: int, dtype: str, shape, count: int, rng) -> np.ndarray:
        shape = tuple(int(d) for d in shape)
        floating = np.dtype(dtype).kind == "f"
        if self.random:
            return rng.uniform(-1, 1, shape).astype(dtype) if floating else np.zeros(shape, dtype)
        if i < self.inputs:
            return rng.uniform(-1, 1, shape).astype(dtype)
        if i == count - 1:
            return np.zeros(shape, dtype)
        value = self.arrays[i - self.inputs]
        if tuple(value.shape) == shape and str(value.dtype) == dtype:
            return value
        if self.loose and floating and str(value.dtype) == dtype:
            return rng.uniform(-1, 1, shape).astype(dtype)
        raise TvmPatternError(f"{self.name}: argument {i} is {dtype}{list(shape)} but the task's "
                              f"array is {value.dtype}{list(value.shape)}")


_LOST = "no RPC server answered"  # marks a session that could not be opened (device gone)


def create_session(config: ms.runner.RPCConfig):
    """The RPC runner's ``f_create_session``: fail at once if no server is registered under the key, and
    give up waiting for a free one after a while (the tracker would queue the request forever)."""
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
class Remote:
    """Where measurements run: a tracker and the key of its servers."""

    host: str
    port: int
    key: str
    expected: int = 0  # servers measuring for the job (fewer later: some went away)

    def servers(self) -> int:
        found = rpc.tracker_servers((self.host, self.port), timeout=10.0)
        return sum(1 for s in found if s.get("key") == f"server:{self.key}")

    def __str__(self) -> str:
        return f"key {self.key!r} at the tracker {self.host}:{self.port}"


def connect(tracker, key: str | None, wait: float) -> Remote:
    """Check the tracker answers and at least one server is registered under ``key`` (waiting ``wait`` s)."""
    if not key:
        raise TvmPatternError("tuning over RPC needs the servers' key (--key)")
    host, port = _tracker_address(tracker)
    rpc.wait_for_servers((host, port), key, count=1, timeout=wait)  # RPCError naming the tracker or the key
    return Remote(host, port, key)
