"""``build``: the pattern-sparse pass, the dense-kernel pass (CPUs), then the target's Relax pipeline (for CPUs,
TVM's CPU phases plus one).

Unpruned 3x3 convs go to ``DenseKernels``' dense conv, not to the pattern kernel as one 9-tap pattern
(``PatternSparseConv2d(dense_kernel=True)``): measured per layer, 2 threads, interleaved A/B on the same shapes
(bias + ReLU, medians of 5 rounds of best-of-5, a shared and loaded machine), dense conv / 9-tap time:
3->64@224 0.81, 64@56 0.85, 128@56/2 0.88, 128@28 0.70, 256@28/2 0.58, 256@14 0.69, 512@14/2 0.32, 512@7 0.32
(e.g. 512@7: 3.96 ms vs 12.5 ms; 64@56: 1.85 ms vs 2.16 ms).
"""

from __future__ import annotations

import contextlib
import os

import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from ..passes import (
    BlockSparseDense,
    BlockSparseReport,
    ConvReport,
    DenseKernels,
    DenseReport,
    DepthwiseReport,
    ParallelizeDense,
    PatternDepthwiseConv2d,
    PatternSparseConv2d,
)
from ..sparsity.library import PatternLibrary
from ..targets import resolve_target, target_cores
from ..tune import DatabaseDenseKernels, DatabaseKernels, open_database
from .gpu import mali_pipeline

__all__ = ["build", "cpu_pipeline", "dense_passes"]


def build(
    mod: IRModule,
    target: object = "x86",
    library: PatternLibrary | str | os.PathLike | None = None,
    strict: bool = False,
    reports: list[ConvReport] | None = None,
    dense_kernel: bool | None = None,
    database=None,
    dense_ops: bool | None = None,
    dense_reports: list[DenseReport] | None = None,
    tuned_dense: list[str] | None = None,
    sparse_reports: list[DepthwiseReport | BlockSparseReport] | None = None,
) -> tvm.runtime.Executable:
    """Rewrite the pattern-sparse convs, then the dense ops, then compile with the target's Relax pipeline.

    The standard CPU pipeline leaves every dense op unscheduled: ``dense_ops`` (default: on for llvm targets, x86
    and arm_cpu; Mali keeps its pipeline) runs every conv2d the pattern pass left, depthwise convs and dense layers
    through generated kernels (``DenseKernels``), and ``ParallelizeDense`` spreads the other ops over the cores.
    ``dense_kernel`` (default: on only without ``dense_ops``) runs unpruned 3x3 convs through the pattern kernel
    as one 9-tap pattern instead (slower than the dense conv: see the module docstring).
    Before the dense ops, the other sparse layer types go to their sparse kernels (every target), each detected
    from its weight's zeros: pattern-sparse depthwise convs (``PatternDepthwiseConv2d``) and block-sparse 1x1 convs
    and dense layers (``BlockSparseDense``).
    ``reports``, if given, receives one ``ConvReport`` per conv2d; ``sparse_reports`` one ``DepthwiseReport`` per
    depthwise conv and one ``BlockSparseReport`` per 1x1 conv / dense layer; ``dense_reports`` one ``DenseReport``
    per conv2d / matmul the dense pass saw.
    ``database``: a tuning job's work directory (``tvm-pattern tune``) or a MetaSchedule database; layers
    it has records for get their best tuned kernel (``tuned_dense``, if given, receives the names of the dense
    layers that did), and the other ops it has records for their best MetaSchedule schedule (``cpu_pipeline``).
    """
    target = resolve_target(target)  # a resolved Target comes back as it is
    if dense_ops is None:
        dense_ops = target.kind.name == "llvm"
    if dense_kernel is None:
        dense_kernel = not dense_ops
    provider = dense_provider = None
    if database is not None:  # the tuned kernels: providers backed by the database (the passes know no tuner)
        database = open_database(database) if isinstance(database, (str, os.PathLike)) else database
        provider, dense_provider = DatabaseKernels(database), DatabaseDenseKernels(database)
    sparse = PatternSparseConv2d(library, strict=strict, target=target, dense_kernel=dense_kernel, provider=provider)
    with target:
        mod = sparse(mod)
        depthwise = PatternDepthwiseConv2d(strict=strict, target=target)
        blocks = BlockSparseDense(target=target, strict=strict)
        mod = blocks(depthwise(mod))
        if dense_ops:
            dense = DenseKernels(target=target, provider=dense_provider)
            mod = dense(mod)
    if reports is not None:
        reports.extend(sparse.summary)
    if sparse_reports is not None:
        sparse_reports.extend([*depthwise.summary, *blocks.summary])
    if dense_reports is not None and dense_ops:
        dense_reports.extend(dense.summary)
    if tuned_dense is not None and dense_provider is not None:
        tuned_dense.extend(dense_provider.tuned)
    pipeline = cpu_pipeline(target, database) if target.kind.name == "llvm" else relax.get_default_pipeline(target)
    if target.kind.name == "opencl" and "adreno" not in target.keys:  # dlight's GPU rules, made total (gpu.py)
        pipeline = mali_pipeline(target)
    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def dense_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The phase this project adds after legalization: spread the ops left dense over the target's cores."""
    return [ParallelizeDense(target_cores(target))]


def cpu_pipeline(target: tvm.target.Target, database=None) -> tvm.transform.Pass:
    """TVM's CPU pipeline (``relax.backend.cpu_generic``) with ``ParallelizeDense`` after fusion, as phase lists
    (the stock one schedules nothing).

    ``database`` (a MetaSchedule database): its records of the ops no template covers (``tune.op_tasks``, whose
    workloads are the functions fusion leaves) are applied right after fusion, before ``ParallelizeDense``
    (which only touches loop nests still serial); a work directory is opened as its database."""
    if isinstance(database, (str, os.PathLike)):
        database = open_database(database)

    @tvm.transform.module_pass(opt_level=0, name="PatternCPUPipeline")
    def _pipeline(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        with target, database if database is not None else contextlib.nullcontext():
            applied = [relax.transform.MetaScheduleApplyDatabase()] if database is not None else []  # needs target
            passes = (
                cpu_generic.library_dispatch_passes(target)
                + cpu_generic.legalize_passes(target)
                + applied
                + dense_passes(target)
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
