"""The pruning recipe: dense model -> pattern library -> ADMM + masked retraining, twice.

Stage 1 prunes to patterns only (``pattern_accuracy``); stage 2 starts from it and adds
connectivity pruning (``final_accuracy``). Each stage runs ADMM, hard-prunes with the
projections' masks, then retrains with the masks held and the optimiser state masked.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..sparsity.library import PatternLibrary
from .data import Split
from .sparsifier import Connectivity, PatternSparsifier, conv_eligibility, mask_optimizer
from .training import evaluate, train


@dataclass(frozen=True)
class PruneConfig:
    """Knobs of the recipe; the defaults are the demo's."""

    patterns: int = 8  # K, the library size
    taps: int = 4  # n, entries a pattern keeps
    connectivity: Connectivity = 3.6  # alpha: keep 1/alpha of each layer's kernels
    admm_epochs: float = 1.0
    admm_updates: int = 6  # ADMM rounds (Z, Y, U, V, rho) per stage
    retrain_epochs: float = 3.0
    lr: float = 1e-3
    retrain_lr: float = 1e-3
    rho: float = 1e-3
    rho_growth: float = 2.0
    batch_size: int = 128
    skip_first: bool = True
    seed: int = 0


@dataclass
class PruneResult:
    """What the recipe produced; ``model`` is the final pruned model with plain weights."""

    model: nn.Module
    library: PatternLibrary
    masks: dict[str, torch.Tensor]
    dense_accuracy: float
    pattern_accuracy: float
    final_accuracy: float
    layers: list[dict] = field(default_factory=list)


def extract_library(model: nn.Module, k: int = 8, n: int = 4, skip_first: bool = True) -> PatternLibrary:
    """The ``k`` most frequent best-fitting patterns over the model's prunable 3x3 kernels."""
    modules = dict(model.named_modules())
    names = [name for name, why in conv_eligibility(model, skip_first).items() if why is None]
    kernels = [modules[name].weight.detach().reshape(-1, 3, 3).numpy() for name in names]
    return PatternLibrary.extract(np.concatenate(kernels) if kernels else np.zeros((0, 3, 3)), k=k, n=n)


def prune_stage(
    model: nn.Module,
    train_split: Split,
    library: PatternLibrary,
    connectivity: Connectivity,
    config: PruneConfig,
    name: str,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """ADMM towards the constraint sets, hard-prune, retrain with masks held; returns the masks."""
    sparsifier = PatternSparsifier(
        library, connectivity, rho=config.rho, rho_growth=config.rho_growth, skip_first=config.skip_first
    ).prepare(model)
    batches_per_epoch = int(np.ceil(len(train_split.labels) / config.batch_size))
    interval = max(1, int(config.admm_epochs * batches_per_epoch / config.admm_updates))
    train(
        model, train_split, config.admm_epochs, lr=config.lr, batch_size=config.batch_size,
        penalty=sparsifier.penalty, every=(interval, sparsifier.step),
        desc=f"{name}: ADMM", seed=config.seed, progress=progress,
    )  # fmt: skip
    masks = sparsifier.apply_masks(model)
    train(
        model, train_split, config.retrain_epochs, lr=config.retrain_lr, batch_size=config.batch_size,
        setup_optimizer=lambda opt: mask_optimizer(opt, model),
        desc=f"{name}: retrain", seed=config.seed + 1, progress=progress,
    )  # fmt: skip
    sparsifier.squash_mask(model)
    return masks


def prune(
    model: nn.Module,
    train_split: Split,
    test_split: Split,
    config: PruneConfig = PruneConfig(),
    progress: bool = True,
    log=print,
) -> PruneResult:
    """Run the whole recipe on a trained dense ``model`` (left untouched; copies are pruned)."""
    torch.manual_seed(config.seed)
    dense_accuracy = evaluate(model, test_split)
    log(f"dense accuracy {dense_accuracy:.4f}")
    library = extract_library(model, config.patterns, config.taps, config.skip_first)
    log(f"pattern library: {library.k} patterns of {library.n} taps, counts {list(library.counts)}")

    pattern_model = copy.deepcopy(model)
    prune_stage(pattern_model, train_split, library, None, config, "patterns", progress)
    pattern_accuracy = evaluate(pattern_model, test_split)
    log(f"pattern-only accuracy {pattern_accuracy:.4f}")

    final_model = copy.deepcopy(pattern_model)
    masks = prune_stage(final_model, train_split, library, config.connectivity, config, "connectivity", progress)
    final_accuracy = evaluate(final_model, test_split)
    log(f"patterns + connectivity accuracy {final_accuracy:.4f}")
    return PruneResult(
        final_model, library, masks, dense_accuracy, pattern_accuracy, final_accuracy,
        layer_report(final_model, masks, config.skip_first),
    )  # fmt: skip


def layer_report(model: nn.Module, masks: Mapping[str, torch.Tensor], skip_first: bool = True) -> list[dict]:
    """One entry per conv: name, kept/total kernels, whether pruned, and why not."""
    modules = dict(model.named_modules())
    report = []
    for name, why in conv_eligibility(model, skip_first).items():
        weight = modules[name].weight.detach()
        total = weight.shape[0] * weight.shape[1]
        kept = int((weight.flatten(2) != 0).any(-1).sum())
        entry = {"name": name, "kept_kernels": kept, "total_kernels": total, "pruned": name in masks}
        entry["shape"] = list(weight.shape)
        if name not in masks:
            entry["reason"] = why or "not pruned"
        report.append(entry)
    return report

