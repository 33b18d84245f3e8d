"""``build``: the pattern-sparse pass, then the target's Relax pipeline (for CPUs, TVM's CPU phases plus one)."""

from __future__ import annotations

import os

import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from ..passes import ConvReport, ParallelizeDense, PatternSparseConv2d
from ..sparsity.library import PatternLibrary
from ..targets import resolve_target, target_cores
from ..tune import DatabaseKernels

__all__ = ["build", "cpu_pipeline", "dense_passes"]


def build(
    mod: IRModule,
    target: object = "x86",
    library: PatternLibrary | str | os.PathLike | None = None,
    strict: bool = False,
    reports: list[ConvReport] | None = None,
    dense_kernel: bool = True,
    database=None,
) -> tvm.runtime.Executable:
    """Rewrite the pattern-sparse convs, then compile with the target's standard Relax pipeline.

    The standard CPU pipeline leaves every dense op unscheduled (single-threaded): ``dense_kernel`` runs
    unpruned 3x3 convs through the generated kernel (one 9-tap pattern), and ``ParallelizeDense`` spreads
    the other dense ops over the cores. ``reports``, if given, receives one ``ConvReport`` per conv2d.
    ``database``: a tuning job's work directory (``tvm-pattern tune``) or a MetaSchedule database; layers
    it has records for get their best tuned kernel.
    """
    target = resolve_target(target)  # a resolved Target comes back as it is
    provider = None
    if database is not None:  # the tuned kernels: a provider backed by the database (the pass knows no tuner)
        provider = DatabaseKernels(database)
    sparse = PatternSparseConv2d(library, strict=strict, target=target, dense_kernel=dense_kernel, provider=provider)
    with target:
        mod = sparse(mod)
    if reports is not None:
        reports.extend(sparse.summary)
    pipeline = cpu_pipeline(target) if target.kind.name == "llvm" else relax.get_default_pipeline(target)
    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def dense_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The phase this project adds after legalization: spread the ops left dense over the target's cores."""
    return [ParallelizeDense(target_cores(target))]


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline (``relax.backend.cpu_generic``) with ``ParallelizeDense`` after fusion, as phase lists
    (the stock one schedules nothing)."""
    passes = (
        cpu_generic.library_dispatch_passes(target)
        + cpu_generic.legalize_passes(target)
        + dense_passes(target)
        + cpu_generic.dataflow_lower_passes(target)
        + cpu_generic.finalize_passes(target)
    )

    @tvm.transform.module_pass(opt_level=0, name="PatternCPUPipeline")
    def _pipeline(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
