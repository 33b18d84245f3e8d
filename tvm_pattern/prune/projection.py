"""Euclidean projections onto the two sparsity sets of extended ADMM (PyTorch).

* Pattern set S: every 3x3 kernel keeps exactly the taps of one library pattern.
  The closest point keeps, per kernel, the pattern holding the most L2 norm.
* Connectivity set S': at most ``keep`` non-zero kernels per layer (with blocks: the nearest whole number of
  groups to ``keep`` kernels, which may exceed it by less than a block).
  The closest point keeps the ``keep`` kernels of largest L2 norm. With ``block`` G > 1 (``kernel_block``) the
  filters come in consecutive blocks of G that keep the same input channels: the closest point keeps the
  (block, channel) groups of largest L2 norm, about ``keep / G`` of them, so a Winograd GEMM's loaded input
  vector feeds G filters (``schedules.winograd.sparse_block``). ``"auto"`` (the default): G = 6 for convs of
  at least 256 input channels, the ones the compiler can run that way, else 1 (``sparsity.blocks``).
* Block connectivity (1x1 convs, linear layers): output channels in consecutive blocks of G rows, every row
  of a block keeping the same ``keep`` input columns, so one input load feeds G accumulators in the kernel.
  The closest point keeps, per block, the columns of largest L2 norm over the block's rows. G = 1 lets each
  row pick its own columns; ``"unstructured"`` keeps the largest entries of the whole weight.
* Depthwise 3x3 convs use the pattern set: ``pattern_mask`` works on (C, 1, 3, 3) weights as on any other.
"""

from __future__ import annotations

import math

import torch

from ..errors import PatternError
from ..sparsity.blocks import AUTO, kernel_block_of


def pattern_choice(weight: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Per kernel of ``weight`` (O, I, 3, 3), the id of the pattern keeping the most norm: (O, I) long."""
    _check(weight, patterns)
    energy = weight.detach().flatten(2).double().square()  # (O, I, 9)
    kept = energy @ patterns.to(weight.device).flatten(1).double().T  # (O, I, K)
    return kept.argmax(dim=-1)


def pattern_mask(weight: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Boolean mask (O, I, 3, 3) of the best library pattern of every kernel."""
    return patterns.to(weight.device).bool()[pattern_choice(weight, patterns)]


def project_patterns(weight: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Closest tensor to ``weight`` in which every kernel fits a library pattern."""
    return weight * pattern_mask(weight, patterns)


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a valid connectivity rate (keep 1/alpha of the kernels, so alpha >= 1)."""
    if not alpha >= 1.0:
        raise PatternError(f"connectivity rate alpha must be >= 1 (keep 1/alpha of the kernels), got {alpha}")
    return alpha


def kept_kernels(total: int, alpha: float) -> int:
    """How many kernels a layer of ``total`` keeps at connectivity rate ``alpha`` (keep 1/alpha)."""
    return max(1, round(total / check_alpha(alpha)))


def check_kernel_block(block: int | str) -> int | str:
    """``block`` if it is a valid filter block setting for 3x3 connectivity (an int >= 1, or ``"auto"``)."""
    if block == AUTO:
        return block
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise PatternError(f"kernel_block must be an int >= 1 (filters sharing their kept input channels) or "
                           f"{AUTO!r}, got {block!r}")
    return block


def connectivity_mask(weight: torch.Tensor, keep: int, block: int | str = 1) -> torch.Tensor:
    """Boolean mask (O, I, 1, 1) keeping the ``keep`` kernels of largest L2 norm (ties: lowest index); with
    ``block`` > 1, the (block of ``block`` filters, input channel) groups of largest L2 norm, as many as hold
    the nearest to ``keep`` kernels (at least one group; the last block may be shorter). ``"auto"``: the block
    ``sparsity.blocks.kernel_block_of`` gives this conv's input channels."""
    energy = weight.detach().flatten(2).double().square().sum(-1)  # (O, I)
    out, cols = energy.shape
    if not 1 <= keep <= out * cols:
        raise PatternError(f"cannot keep {keep} of {out * cols} kernels")
    rows = torch.arange(out, device=weight.device) // kernel_block_of(check_kernel_block(block), cols)
    groups = torch.zeros(int(rows[-1]) + 1, cols, dtype=energy.dtype, device=energy.device).index_add_(0, rows, energy)
    # A stable sort makes ties deterministic: equal norms keep the earlier kernel (group).
    order = torch.sort(-groups.flatten(), stable=True).indices
    sizes = torch.bincount(rows, minlength=groups.shape[0]).repeat_interleave(cols)[order]
    held = torch.cumsum(sizes, 0)
    count = max(1, int(torch.argmin((held - keep).abs())) + 1)
    chosen = torch.zeros(groups.numel(), dtype=torch.bool, device=weight.device)
    chosen[order[:count]] = True
    return chosen.view(groups.shape)[rows].view(out, cols, 1, 1)


def project_connectivity(weight: torch.Tensor, keep: int, block: int | str = 1) -> torch.Tensor:
    """Closest tensor to ``weight`` with at most ``keep`` non-zero kernels, or in filter blocks of ``block`` about
    ``keep`` (``connectivity_mask``)."""
    return weight * connectivity_mask(weight, keep, block)


def _check(weight: torch.Tensor, patterns: torch.Tensor) -> None:
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise PatternError(f"expected a conv weight of shape (O, I, 3, 3), got {tuple(weight.shape)}")
    if patterns.dim() != 3 or tuple(patterns.shape[1:]) != (3, 3):
        raise PatternError(f"expected patterns of shape (K, 3, 3), got {tuple(patterns.shape)}")


# ---------------------------------------------------------------------------------------------- 1x1 convs and FC

UNSTRUCTURED = "unstructured"
Block = int | str  # G rows per block, or UNSTRUCTURED


def check_block(block: Block) -> Block:
    """``block`` if it is a valid block size (an int >= 1) or ``"unstructured"``."""
    if block == UNSTRUCTURED or (isinstance(block, int) and not isinstance(block, bool) and block >= 1):
        return block
    raise PatternError(f"block must be an int >= 1 (output channels sharing their inputs) or "
                       f"{UNSTRUCTURED!r}, got {block!r}")  # fmt: skip


def kept_columns(weight_shape: tuple[int, ...], alpha: float, block: Block) -> int:
    """Weights kept per block row (block connectivity: input columns; unstructured: entries of the whole layer)."""
    total = weight_shape[1] if check_block(block) != UNSTRUCTURED else math.prod(weight_shape)
    return max(1, round(total / check_alpha(alpha)))


def block_mask(weight: torch.Tensor, keep: int, block: Block) -> torch.Tensor:
    """Mask (same shape) of the nearest weight with block connectivity: ``keep`` shared columns per ``block`` rows.

    ``weight`` is (O, I) or (O, I, 1, 1). Rows ``[bG, (b+1)G)`` keep the same ``keep`` input columns, those of
    largest L2 norm over the block's rows (ties: lowest column): the kept energy is a sum of column scores, so
    the top columns are the Euclidean projection. ``"unstructured"`` keeps the ``keep`` largest entries.
    """
    _check_matrix(weight)
    w = weight.detach().reshape(weight.shape[0], weight.shape[1]).double()
    if check_block(block) == UNSTRUCTURED:
        return _top(w.square().flatten(), keep).view(weight.shape)
    out, cols = w.shape
    if not 1 <= keep <= cols:
        raise PatternError(f"cannot keep {keep} of {cols} input columns")
    rows = torch.arange(out, device=w.device) // block
    scores = torch.zeros(int(rows[-1]) + 1, cols, dtype=w.dtype, device=w.device).index_add_(0, rows, w.square())
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :keep]
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)
    return chosen[rows].view(weight.shape)


def project_block(weight: torch.Tensor, keep: int, block: Block) -> torch.Tensor:
    """Closest tensor to ``weight`` with block connectivity (see ``block_mask``)."""
    return weight * block_mask(weight, keep, block)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    if not 1 <= keep <= scores.numel():
        raise PatternError(f"cannot keep {keep} of {scores.numel()} weights")
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[torch.sort(-scores, stable=True).indices[:keep]] = True
    return mask


def _check_matrix(weight: torch.Tensor) -> None:
    if not (weight.dim() == 2 or (weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1))):
        raise PatternError(f"expected a linear (O, I) or 1x1 conv (O, I, 1, 1) weight, got {tuple(weight.shape)}")
