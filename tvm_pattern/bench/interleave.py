"""Interleaved timing for ``bench --model``: every runtime in its own process, the runtimes taking turns.

Why: on a shared machine the speed drifts over seconds (another tenant, the host's clock), so timing one runtime's
15 runs and then the next one's lets a slow moment fall on one runtime only and decide a ratio. Here each runtime
is set up once in its own interpreter (``peer_worker.serve``: warm-up, then ``@@ready``), and the parent asks them
in turn, round after round, for a few timed runs each (``run N`` -> ``@@times [...]``), rotating the order every
round and pausing between turns so the last runtime's spinning threads go quiet. Every runtime then sees the same
mix of fast and slow moments; the median over all its runs is reported, and each round's median is kept too.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from pathlib import Path

from .peer_worker import TIMES

__all__ = ["Worker", "WorkerError", "batches", "run_rounds"]


class WorkerError(RuntimeError):
    """A runtime's process died, timed out or answered nonsense; the message ends with its log's last lines."""


class Worker:
    """One runtime's process: started with a pipe for commands, its stdout read by a thread into a queue (other
    lines, such as a library's banner, go to its log with its stderr)."""

    def __init__(self, command: list[str], env: dict, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next stdout line starting with ``prefix``; ``WorkerError`` if the process ends or
        ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerError(f"timed out after {timeout:.0f} s") from None
            if line is None:
                raise WorkerError(self._died())
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            self._log.write(line)
            self._log.flush()

    def send(self, command: str) -> None:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(self._died()) from None

    def time(self, runs: int, timeout: float) -> list[float]:
        """``runs`` timed runs, in ms."""
        self.send(f"run {runs}")
        times = json.loads(self.expect(TIMES, timeout))
        if not isinstance(times, list) or len(times) != runs:
            raise WorkerError(f"asked for {runs} runs, got {times!r}")
        return [float(t) for t in times]

    def finish(self, timeout: float) -> None:
        """Tell it to write its results and wait for it to exit; ``WorkerError`` if it fails."""
        self.send("done")
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WorkerError(f"did not exit within {timeout:.0f} s of 'done'") from None
        if code != 0:
            raise WorkerError(self._died())

    def close(self) -> None:
        """Kill it if it still runs; close the log."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._log.close()

    def _died(self) -> str:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self._log.flush()
        tail = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        return f"exit {code}: " + " | ".join(tail)[-400:]


def batches(repeats: int, rounds: int) -> list[int]:
    """``repeats`` runs split into at most ``rounds`` batches as even as can be (the larger ones first)."""
    rounds = max(1, min(rounds, repeats))
    return [repeats // rounds + (i < repeats % rounds) for i in range(rounds)]


def run_rounds(workers: dict[str, Worker], repeats: int, rounds: int, pause_s: float, timeout: float,
               echo=print) -> tuple[dict[str, list[list[float]]], dict[str, str]]:  # fmt: skip
    """Time every ready worker ``repeats`` times in alternating rounds: (per runtime, its times per round;
    per runtime that failed meanwhile, why). The order rotates each round, so no runtime always goes first."""
    names = list(workers)
    timed: dict[str, list[list[float]]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    plan = batches(repeats, rounds)
    for i, runs in enumerate(plan):
        turn = names[i % len(names):] + names[:i % len(names)] if names else []
        for name in turn:
            if name in failed:
                continue
            try:
                timed[name].append(workers[name].time(runs, timeout))
            except WorkerError as err:
                failed[name] = str(err)
                echo(f"{name}: failed in round {i + 1}: {err}")
            time.sleep(pause_s)
    return timed, failed
