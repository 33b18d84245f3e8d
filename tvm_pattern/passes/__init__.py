"""Relax passes, one per module named after it, and what they share.

- ``pattern_sparse_conv2d``: ``PatternSparseConv2d``, pattern-sparse 3x3 convs (+ epilogue) to ``call_tir`` of
  kernels from a ``provider.KernelProvider`` (default ``DefaultKernels``: the templates' default kernels);
- ``dense_kernels``: ``DenseKernels``, the conv2d / depthwise conv2d / dense layers left (+ epilogue, residual add
  included) to ``call_tir`` of generated dense kernels (provider: ``DefaultDenseKernels``);
- ``block_sparse``: ``BlockSparseDense``, block-sparse 1x1 convs and dense layers (detected from their zeros, +
  epilogue) to ``call_tir`` of block-sparse kernels; runs before ``DenseKernels``;
- ``pattern_depthwise``: ``PatternDepthwiseConv2d``, pattern-sparse depthwise convs (patterns read off the zeros, +
  epilogue) to ``call_tir`` of the pattern depthwise kernel; runs before ``DenseKernels``;
- ``parallelize_dense``: ``ParallelizeDense``, the cheap part of a schedule for the ops left dense;
- ``rewrite``: the planned ``KernelCall`` and ``rewrite_functions``, shared by the kernel-substituting passes;
- ``epilogue``: DPL patterns and matching of the per-channel ops a kernel absorbs.
"""

from .block_sparse import BlockSparseDense, BlockSparseReport
from .dense_kernels import DenseKernels, DenseReport
from .epilogue import OPAQUE
from .parallelize_dense import ParallelizeDense
from .pattern_depthwise import DepthwiseReport, PatternDepthwiseConv2d
from .pattern_sparse_conv2d import ConvReport, PatternSparseConv2d
from .provider import (
    ConvLayer,
    DefaultDenseKernels,
    DefaultKernels,
    DenseKernelProvider,
    DenseLayer,
    KernelProvider,
    ProvidedKernel,
    density,
    runs_winograd,
)

__all__ = ["OPAQUE", "BlockSparseDense", "BlockSparseReport", "ConvLayer", "ConvReport", "DefaultDenseKernels",
           "DefaultKernels", "DenseKernelProvider",
           "DenseKernels", "DenseLayer", "DenseReport", "KernelProvider", "ParallelizeDense", "PatternSparseConv2d",
           "ProvidedKernel"]  # fmt: skip
__all__ += ["DepthwiseReport", "PatternDepthwiseConv2d", "density", "runs_winograd"]
