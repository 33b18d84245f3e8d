"""Moved to ``tvm_pattern.prune.recipe``; re-exported here so existing imports keep working."""

from .prune.recipe import PruneConfig, PruneResult, extract_library, layer_report, prune, prune_stage

__all__ = ["PruneConfig", "PruneResult", "extract_library", "layer_report", "prune", "prune_stage"]
