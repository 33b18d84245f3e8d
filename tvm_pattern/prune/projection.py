"""Euclidean projections onto the two sparsity sets of extended ADMM (PyTorch).

* Pattern set S: every 3x3 kernel keeps exactly the taps of one library pattern.
  The closest point keeps, per kernel, the pattern holding the most L2 norm.
* Connectivity set S': at most ``keep`` non-zero kernels per layer.
  The closest point keeps the ``keep`` kernels of largest L2 norm.
"""

from __future__ import annotations

import torch

from ..errors import PatternError


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


def connectivity_mask(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask (O, I, 1, 1) keeping the ``keep`` kernels of largest L2 norm (ties: lowest index)."""
    norms = weight.detach().flatten(2).double().square().sum(-1).flatten()
    if not 1 <= keep <= norms.numel():
        raise PatternError(f"cannot keep {keep} of {norms.numel()} kernels")
    # A stable sort makes ties deterministic: equal norms keep the earlier kernel.
    order = torch.sort(-norms, stable=True).indices[:keep]
    mask = torch.zeros(norms.numel(), dtype=torch.bool, device=weight.device)
    mask[order] = True
    return mask.view(*weight.shape[:2], 1, 1)


def project_connectivity(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Closest tensor to ``weight`` with at most ``keep`` non-zero kernels."""
    return weight * connectivity_mask(weight, keep)


def _check(weight: torch.Tensor, patterns: torch.Tensor) -> None:
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise PatternError(f"expected a conv weight of shape (O, I, 3, 3), got {tuple(weight.shape)}")
    if patterns.dim() != 3 or tuple(patterns.shape[1:]) != (3, 3):
        raise PatternError(f"expected patterns of shape (K, 3, 3), got {tuple(patterns.shape)}")
