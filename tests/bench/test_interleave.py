"""Interleaved timing of ``bench --model``: the worker protocol, the rounds' order, failures named, nothing left."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tvm_pattern.bench import peer_worker
from tvm_pattern.bench.interleave import Worker, WorkerError, batches, run_rounds


@given(st.integers(1, 200), st.integers(1, 20))
def test_batches_split_the_runs_evenly(repeats, rounds):
    plan = batches(repeats, rounds)
    assert sum(plan) == repeats and len(plan) == min(repeats, rounds)
    assert max(plan) - min(plan) <= 1 and plan == sorted(plan, reverse=True)


def test_serve_warms_up_then_times_what_it_is_asked():
    calls, replies = [], []

    def run():
        calls.append(1)
        return len(calls)

    y, times = peer_worker.serve(run, warmup=3, info={"v": 1}, commands=["run 2\n", "run 4\n", "done\n", "run 9\n"],
                                 reply=replies.append)  # fmt: skip
    assert len(calls) == 3 + (1 + 2) + (1 + 4)  # warm-up, then one untimed run before each batch
    assert len(times) == 6 and all(t >= 0 for t in times) and y == len(calls)
    assert replies[0] == peer_worker.READY + ' {"v": 1}'
    assert [len(json.loads(r[len(peer_worker.TIMES):])) for r in replies[1:]] == [2, 4]
    with pytest.raises(SystemExit, match="bad command"):
        peer_worker.serve(run, warmup=1, commands=["go\n"], reply=replies.append)


FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tvm_pattern.bench.peer_worker import serve
name, mode, order = sys.argv[1], sys.argv[2], sys.argv[3]
print("a banner on stdout", flush=True)
if mode == "die-at-start":
    sys.exit("cannot load the model")
count = [0]
def run():
    count[0] += 1
    if mode == "die-in-round-2" and count[0] > 4:
        raise SystemExit("crashed mid-way")
    time.sleep(0.001)
    return count[0]
def note(line):
    if line.startswith("@@times"):
        with open(order, "a") as f:
            f.write(name + "\\n")
    print(line, flush=True)
serve(run, warmup=1, reply=note)
"""


def _fake(tmp_path, name: str, mode: str = "ok") -> Worker:
    from pathlib import Path

    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent(FAKE.format(root=str(Path(__file__).resolve().parents[2]))))
    return Worker([sys.executable, str(script), name, mode, str(tmp_path / "order.txt")], dict(os.environ),
                  tmp_path / f"{name}.log")


def test_rounds_rotate_and_every_runtime_gets_its_runs(tmp_path):
    workers = {n: _fake(tmp_path, n) for n in "abc"}
    try:
        for w in workers.values():
            assert json.loads(w.expect(peer_worker.READY, 60)) == {}
        timed, failed = run_rounds(workers, repeats=7, rounds=3, pause_s=0.0, timeout=60, echo=lambda *_: None)
        assert failed == {}
        assert {n: [len(b) for b in r] for n, r in timed.items()} == {n: [3, 2, 2] for n in "abc"}
        order = (tmp_path / "order.txt").read_text().split()
        assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
        for w in workers.values():
            w.finish(60)
            assert w.proc.returncode == 0
        assert "a banner on stdout" in (tmp_path / "a.log").read_text()  # other stdout lines go to the log
    finally:
        for w in workers.values():
            w.close()


def test_a_worker_that_dies_is_named_and_the_others_finish(tmp_path):
    bad_start = _fake(tmp_path, "s", "die-at-start")
    with pytest.raises(WorkerError, match=r"exit 1: .*cannot load the model"):
        bad_start.expect(peer_worker.READY, 60)
    bad_start.close()
    workers = {"ok": _fake(tmp_path, "ok"), "bad": _fake(tmp_path, "bad", "die-in-round-2")}
    try:
        for w in workers.values():
            w.expect(peer_worker.READY, 60)
        messages = []
        timed, failed = run_rounds(workers, repeats=6, rounds=3, pause_s=0.0, timeout=60, echo=messages.append)
        assert list(failed) == ["bad"] and "crashed mid-way" in failed["bad"]
        assert [len(b) for b in timed["ok"]] == [2, 2, 2] and [len(b) for b in timed["bad"]] == [2]
        assert any("bad: failed in round 2" in m for m in messages)
        workers["ok"].finish(60)
    finally:
        for w in workers.values():
            w.close()
    assert all(w.proc.poll() is not None for w in workers.values())


def test_a_silent_worker_times_out(tmp_path):
    worker = Worker([sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ), tmp_path / "silent.log")
    try:
        with pytest.raises(WorkerError, match="timed out after 1 s"):
            worker.expect(peer_worker.READY, 1)
    finally:
        worker.close()
    assert worker.proc.poll() is not None
