"""Relax passes, one per module named after it, and what they share.

- ``pattern_sparse_conv2d``: ``PatternSparseConv2d``, pattern-sparse 3x3 convs (+ epilogue) to ``call_tir`` of
  kernels from a ``provider.KernelProvider`` (default ``DefaultKernels``: the templates' default kernels);
- ``parallelize_dense``: ``ParallelizeDense``, the cheap part of a schedule for the ops left dense;
- ``epilogue``: DPL patterns and matching of the per-channel ops a kernel absorbs.
"""

from .epilogue import OPAQUE
from .parallelize_dense import ParallelizeDense
from .pattern_sparse_conv2d import ConvReport, PatternSparseConv2d
from .provider import ConvLayer, DefaultKernels, KernelProvider, ProvidedKernel

__all__ = ["OPAQUE", "ConvLayer", "ConvReport", "DefaultKernels", "KernelProvider", "ParallelizeDense",
           "PatternSparseConv2d", "ProvidedKernel"]  # fmt: skip
