"""Moved: the generator to ``tvm_pattern.kernels.pattern_conv2d``, the per-target composition (``sparse_conv2d``,
``tuning_task``, ``layer_config``) to ``tvm_pattern.schedules``; this name re-exports both."""

from .kernels.pattern_conv2d import (
    VARIANTS_ATTR,
    KernelSpec,
    SparseConvKernel,
    conv_out_shape,
    thread_split,
    thread_splits,
    unscheduled,
)
from .schedules import layer_config, sparse_conv2d, tuning_task

__all__ = ["VARIANTS_ATTR", "KernelSpec", "SparseConvKernel", "conv_out_shape", "layer_config", "sparse_conv2d",
           "thread_split", "thread_splits", "tuning_task", "unscheduled"]  # fmt: skip
