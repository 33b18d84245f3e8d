"""Moved to ``tvm_pattern.prune.sparsifier``; re-exported here so existing imports keep working."""

from .prune.sparsifier import (
    Connectivity,
    PatternSparsifier,
    PrunedConv,
    apply_masks,
    conv_eligibility,
    mask_optimizer,
    squash_mask,
)

__all__ = ["Connectivity", "PatternSparsifier", "PrunedConv", "apply_masks", "conv_eligibility", "mask_optimizer",
           "squash_mask"]  # fmt: skip
