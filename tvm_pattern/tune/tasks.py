"""Tuning tasks of a model: the distinct pattern-sparse layers, planned by the same pass as a compile."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tvm_ffi
from tvm.ir import IRModule

from ..passes import ConvLayer, DefaultKernels, KernelProvider, PatternSparseConv2d, ProvidedKernel
from ..schedules import tuning_task
from ..schedules.space import TuningTask
from ..targets import resolve_target

log = logging.getLogger(__name__)


def extract_tasks(mod: IRModule, target: object = "x86", library=None, dense_kernel: bool | None = None,
                  ) -> list[TuningTask]:
    """The distinct pattern-sparse layers of a Relax module as tuning tasks, in model order.

    Runs the same ``PatternSparseConv2d`` pass as ``pipeline.build`` (``dense_kernel`` alike) with a
    ``TaskCollector`` as its kernel provider, so the tasks are exactly the kernels a compile generates. Layers
    whose workload IR is identical (same shapes, patterns and kept-kernel count) share one task: the database
    keys records by that IR, so one record serves them all.
    """
    target = resolve_target(target)
    if dense_kernel is None:  # as pipeline.build: on llvm targets unpruned 3x3 convs go to the dense kernels
        dense_kernel = target.kind.name != "llvm"
    collector = TaskCollector()
    sparse = PatternSparseConv2d(library, target=target, dense_kernel=dense_kernel, provider=collector)
    with target:
        sparse(mod)
    tasks = _distinct(collector.tasks)
    log.info("%d generated kernels, %d distinct tuning tasks", len(collector.tasks), len(tasks))
    return tasks


class TaskCollector:
    """A kernel provider that records each layer's ``TuningTask`` and gives the default kernel (``fallback``)."""

    def __init__(self, fallback: KernelProvider | None = None) -> None:
        self.fallback = fallback if fallback is not None else DefaultKernels()
        self.tasks: list[TuningTask] = []

    def kernel(self, layer: ConvLayer) -> ProvidedKernel:
        self.tasks.append(layer_task(layer))
        return self.fallback.kernel(layer)


def layer_task(layer: ConvLayer) -> TuningTask:
    """The tuning task of a layer the pass plans (its bias values are the task's bias argument)."""
    bias = layer.bias if layer.bias is not None else False
    return tuning_task(layer.packed, layer.data_shape, layer.strides, layer.padding, bias, layer.relu, layer.target)


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
