"""Moved to ``tvm_pattern.passes``; this name re-exports the pass and keeps its ``database=`` keyword.

``PatternSparseConv2d(..., database=DB)`` here builds the pass with ``tvm_pattern.tune.DatabaseKernels(DB)``
as its kernel provider (the pass itself knows no tuner).
"""

from __future__ import annotations

from .passes import OPAQUE, ConvReport, KernelProvider
from .passes import PatternSparseConv2d as _Pass

__all__ = ["OPAQUE", "ConvReport", "PatternSparseConv2d"]


def PatternSparseConv2d(*args, database=None, provider: KernelProvider | None = None, **kwargs):
    """``passes.PatternSparseConv2d``; ``database``: a MetaSchedule database or a tuning work directory."""
    if database is not None and provider is None:
        from .tune import DatabaseKernels

        provider = DatabaseKernels(database)
    return _Pass(*args, provider=provider, **kwargs)
