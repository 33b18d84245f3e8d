"""Moved to ``tvm_pattern.sparsity.library``; re-exported here so existing imports keep working."""

from .sparsity.library import CENTRE, KERNEL, PatternLibrary, best_fit, candidate_patterns

__all__ = ["CENTRE", "KERNEL", "PatternLibrary", "best_fit", "candidate_patterns"]
