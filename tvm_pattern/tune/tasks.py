"""Tuning tasks of a model: the distinct pattern-sparse layers and dense layers, planned by the same passes as a
compile, and (``ops="all"``) the ops no template covers, in MetaSchedule's default space (``ops``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tvm_ffi
from tvm.ir import IRModule

from ..errors import TvmPatternError
from ..passes import (
    BlockSparseDense,
    ConvLayer,
    DefaultDenseKernels,
    DefaultKernels,
    DenseKernelProvider,
    DenseKernels,
    DenseLayer,
    KernelProvider,
    PatternDepthwiseConv2d,
    PatternSparseConv2d,
    ProvidedKernel,
    runs_winograd,
)
from ..schedules import dense_space, tuning_task
from ..schedules.dense_space import DenseTuningTask
from ..schedules.space import TuningTask
from ..targets import resolve_target
from .ops import op_tasks

log = logging.getLogger(__name__)

OPS = ("sparse", "templates", "all")  # what ``extract_tasks`` collects: sparse layers; + dense layers; + the rest


def extract_tasks(mod: IRModule, target: object = "x86", library=None, dense_kernel: bool | None = None,
                  ops: str = "sparse") -> list[TuningTask]:
    """The distinct layers of a Relax module as tuning tasks, in model order.

    ``ops``: "sparse" (the pattern-sparse layers), "templates" (and, on llvm targets, the dense layers of the
    ``DenseKernels`` pass), "all" (and every other op ``build`` leaves to TVM, as ``ops.OpTask``\\ s in
    MetaSchedule's default space).

    Runs the same passes as ``pipeline.build``, in its order (``dense_kernel`` alike; keep the two in step), with
    collecting kernel providers, so the tasks are exactly the kernels a compile generates. The pattern-sparse
    depthwise and block-sparse kernels have no template to tune (they are skipped, like every project kernel).
    Layers whose workload IR is identical share one task: the database keys records by that IR, so one record
    serves them all.
    """
    if ops not in OPS:
        raise TvmPatternError(f"ops must be one of {list(OPS)}, got {ops!r}")
    target = resolve_target(target)
    dense_ops = target.kind.name == "llvm"  # as pipeline.build
    if dense_kernel is None:  # as pipeline.build: on llvm targets unpruned 3x3 convs go to the dense kernels
        dense_kernel = not dense_ops
    collector = TaskCollector()
    sparse = PatternSparseConv2d(library, target=target, dense_kernel=dense_kernel, provider=collector)
    dense = DenseTaskCollector()
    with target:
        mod = sparse(mod)
        if ops != "sparse":  # as pipeline.build: the other sparse kernels take their layers before the dense pass
            mod = BlockSparseDense(target=target)(PatternDepthwiseConv2d(target=target)(mod))
        if dense_ops and ops != "sparse":
            mod = DenseKernels(target=target, provider=dense)(mod)
    found = [*collector.tasks, *dense.tasks]
    tasks = _distinct(found)
    if ops == "all":
        tasks += op_tasks(mod, target) if dense_ops else []
    log.info("%d generated kernels, %d distinct tuning tasks", len(found), len(tasks))
    return tasks


class TaskCollector:
    """A kernel provider that records each layer's ``TuningTask`` and gives the default kernel (``fallback``)."""

    def __init__(self, fallback: KernelProvider | None = None) -> None:
        self.fallback = fallback if fallback is not None else DefaultKernels()
        self.tasks: list[TuningTask] = []

    def kernel(self, layer: ConvLayer) -> ProvidedKernel:
        if not runs_winograd(layer):  # a Winograd layer has no template to tune
            self.tasks.append(layer_task(layer))
        return self.fallback.kernel(layer)


def layer_task(layer: ConvLayer) -> TuningTask:
    """The tuning task of a layer the pass plans (its bias values are the task's bias argument)."""
    bias = layer.bias if layer.bias is not None else False
    return tuning_task(layer.packed, layer.data_shape, layer.strides, layer.padding, bias, layer.relu, layer.target)


def dense_layer_task(layer: DenseLayer) -> DenseTuningTask:
    """The tuning task of a dense layer the pass plans (its shape; the weights are the kernel's arguments)."""
    return dense_space.tuning_task(layer.op, layer.weight.shape, layer.data_shape, layer.strides, layer.padding,
                                   layer.bias is not None, layer.activation, layer.residual,
                                   layer.target)  # fmt: skip


class DenseTaskCollector:
    """A dense kernel provider that records each layer's ``DenseTuningTask`` and gives ``fallback``'s kernel."""

    def __init__(self, fallback: DenseKernelProvider | None = None) -> None:
        self.fallback = fallback if fallback is not None else DefaultDenseKernels()
        self.tasks: list[DenseTuningTask] = []

    def kernel(self, layer: DenseLayer) -> ProvidedKernel:
        if not runs_winograd(layer):
            self.tasks.append(dense_layer_task(layer))
        return self.fallback.kernel(layer)


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
