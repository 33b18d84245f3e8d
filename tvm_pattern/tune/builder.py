"""``PoolBuilder``: MetaSchedule's local builder with worker processes kept for the whole job.

Why: ``ms.builder.LocalBuilder`` starts a new process pool for every batch (against a memory leak of long-lived
workers), and each worker imports TVM and this package first: 5-10 s per batch, paid once per task and batch,
more than building the batch's kernels. Here the pool lives across batches and tasks and is restarted every
``restart_every`` builds, which bounds what a leak can grow to.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

__all__ = ["PoolBuilder"]


def build_one(job: tuple) -> str:
    """In a worker: build one module and export it; the artifact's path."""
    f_build, f_export, mod, target = job
    return f_export(f_build(mod, target, None))


@derived_object
class PoolBuilder(PyBuilder):
    """Build candidates in ``max_workers`` long-lived processes with ``f_build`` / ``f_export``."""

    def __init__(self, max_workers: int, timeout_sec: float, f_build: Callable, f_export: Callable,
                 restart_every: int = 256) -> None:
        super().__init__()
        self.max_workers = max_workers
        self.timeout_sec = timeout_sec
        self.f_build = f_build
        self.f_export = f_export
        self.restart_every = restart_every
        self.pool: PopenPoolExecutor | None = None
        self.built = 0

    def build(self, build_inputs) -> list[BuilderResult]:
        if self.pool is None or self.built >= self.restart_every:
            self.close()
            self.pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec)
            self.built = 0
        self.built += len(build_inputs)
        jobs = [(self.f_build, self.f_export, b.mod, b.target) for b in build_inputs]
        results = []
        for outcome in self.pool.map_with_error_catching(build_one, jobs):
            if outcome.status == StatusKind.COMPLETE:
                results.append(BuilderResult(outcome.value, None))
            elif outcome.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"PoolBuilder: timeout, killed after {self.timeout_sec} s"))
            else:
                results.append(BuilderResult(None, f"PoolBuilder: an exception occurred\n{outcome.value}"))
        return results

    def close(self) -> None:
        """Stop the worker processes (a later build starts new ones)."""
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
