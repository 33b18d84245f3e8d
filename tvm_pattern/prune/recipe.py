"""The pruning recipe: dense model -> pattern library -> ADMM + masked retraining, twice.

Stage 1 prunes to patterns only (``pattern_accuracy``): 3x3 convs, and depthwise convs if asked; stage 2
starts from it and adds connectivity pruning (``final_accuracy``): kernels of the 3x3 convs, and input columns
of the 1x1 convs and linear layers at their own rates (``pointwise``, ``linear``, in blocks of ``block``).
Each stage runs ADMM, hard-prunes with the projections' masks, then retrains with the masks held and the
optimiser state masked.

Everything runs on ``runtime.device`` and, under ``torchrun``, data-parallel (see ``training``). With a
``Checkpointer`` the recipe saves its state at every phase boundary and periodically inside phases, and
``resume=`` (a loaded checkpoint) continues from where it was.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..sparsity.blocks import AUTO
from ..sparsity.library import PatternLibrary, candidate_patterns
from .distributed import Runtime
from .projection import Block
from .resume import Checkpointer, set_rng_state
from .sparsifier import Connectivity, PatternSparsifier, Rate, apply_masks, layer_types, mask_optimizer
from .training import default_runtime, evaluate, steps_per_epoch, train

PHASES = ("dense", "patterns:admm", "patterns:retrain", "connectivity:admm", "connectivity:retrain", "done")


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
    pointwise: Rate = None  # alpha for the 1x1 convs (None: dense)
    linear: Rate = None  # alpha for the linear layers (None: dense)
    depthwise_patterns: bool = False
    block: Block = 4  # output channels sharing their kept input columns (1x1 / linear), or "unstructured"
    skip_last: bool = True  # the classifier's last layer stays dense
    kernel_block: int | str = AUTO  # 3x3 connectivity: filters per block keeping the same input channels


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


def extract_library(
    model: nn.Module, k: int = 8, n: int = 4, skip_first: bool = True, depthwise: bool = False, skip_last: bool = True
) -> PatternLibrary:
    """The ``k`` most frequent best-fitting patterns over the model's prunable 3x3 kernels (any device).

    ``depthwise``: count the depthwise kernels too (they keep the same library). A model without any prunable
    3x3 kernel (only 1x1 / linear layers pruned) gets the first ``k`` candidates, which nothing uses.
    """
    modules = dict(model.named_modules())
    kinds = ("conv3x3", "depthwise") if depthwise else ("conv3x3",)
    names = [name for name, (kind, why) in layer_types(model, skip_first, skip_last).items()
             if why is None and kind in kinds]  # fmt: skip
    kernels = [modules[name].weight.detach().reshape(-1, 3, 3).float().cpu().numpy() for name in names]
    if not kernels:
        return PatternLibrary(candidate_patterns(n)[:k])
    return PatternLibrary.extract(np.concatenate(kernels), k=k, n=n)


class _Saver:
    """Builds full checkpoint states for one phase; ``due``/``save`` is what ``train`` calls part-way."""

    def __init__(self, checkpoint: Checkpointer | None, phase: str, model: nn.Module, extra: dict) -> None:
        self.checkpoint, self.phase, self.model, self.extra = checkpoint, phase, model, extra
        self.sparsifier: PatternSparsifier | None = None

    def due(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.due()

    def save(self, loop: dict | None = None, phase: str | None = None) -> None:
        if self.checkpoint is None:
            return
        state = {"phase": phase or self.phase, "loop": loop, "model": _cpu_state(self.model), **self.extra}
        if self.sparsifier is not None and loop is not None:
            state["sparsifier"] = self.sparsifier.state_dict()
        self.checkpoint.save(state)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _loop_for(resume: dict | None, phase: str) -> dict | None:
    return resume["loop"] if resume is not None and resume["phase"] == phase else None


def train_dense(
    model: nn.Module, train_set: Dataset, epochs: float, config: PruneConfig = PruneConfig(), progress: bool = True,
    *, runtime: Runtime | None = None, checkpoint: Checkpointer | None = None, resume: dict | None = None,
) -> None:  # fmt: skip
    """Train the dense model (the recipe's phase ``dense``), checkpointed like the pruning phases."""
    loop = _loop_for(resume, "dense")
    if loop is not None:
        model.load_state_dict(resume["model"])
        # The built-in model is seeded and built after the checkpoint is loaded: restore its RNG states again.
        runtime = default_runtime(model, runtime)
        set_rng_state(resume["rng"][runtime.rank], runtime.device)
    saver = _Saver(checkpoint, "dense", model, {})
    if epochs > 0:
        train(
            model, train_set, epochs, lr=config.lr, batch_size=config.batch_size, desc="dense: train",
            seed=config.seed, progress=progress, runtime=runtime, resume=loop, checkpoint=saver,
        )  # fmt: skip


def prune_stage(
    model: nn.Module,
    train_split: Dataset,
    library: PatternLibrary,
    connectivity: Connectivity,
    config: PruneConfig,
    name: str,
    progress: bool = True,
    *,
    runtime: Runtime | None = None,
    saver: _Saver | None = None,
    resume: dict | None = None,
    layer_rates: bool | None = None,
) -> dict[str, torch.Tensor]:
    """ADMM towards the constraint sets, hard-prune, retrain with masks held; returns the masks.

    ``connectivity`` is the 3x3 convs' rate; ``layer_rates`` whether the 1x1 / linear rates of ``config`` apply
    too (default: when ``connectivity`` is given). Depthwise patterns follow ``config`` in every stage.

    With ``saver``, checkpoints part-way and at ``{name}:retrain``; ``resume`` continues a checkpoint of
    phase ``{name}:admm`` or ``{name}:retrain``.
    """
    runtime = default_runtime(model, runtime)
    model.to(runtime.device)
    saver = saver or _Saver(None, "", model, {})
    rates = connectivity is not None if layer_rates is None else layer_rates
    sparsifier = PatternSparsifier(
        library, connectivity, rho=config.rho, rho_growth=config.rho_growth, skip_first=config.skip_first,
        pointwise=config.pointwise if rates else None, linear=config.linear if rates else None,
        depthwise_patterns=config.depthwise_patterns, block=config.block, skip_last=config.skip_last,
        kernel_block=config.kernel_block,
    )  # fmt: skip
    phase = resume["phase"] if resume is not None else f"{name}:admm"
    if phase == f"{name}:admm":
        admm_loop = _loop_for(resume, phase)
        if resume is not None:
            model.load_state_dict(resume["model"])
        sparsifier.prepare(model, allow_empty=True)  # e.g. no 3x3 conv: stage 1 prunes nothing
        if admm_loop is not None:
            sparsifier.load_state_dict(resume["sparsifier"])
        interval = max(1, int(config.admm_epochs * steps_per_epoch(train_split, config.batch_size, runtime)
                              / config.admm_updates))  # fmt: skip
        saver.phase, saver.sparsifier = phase, sparsifier
        train(
            model, train_split, config.admm_epochs, lr=config.lr, batch_size=config.batch_size,
            penalty=sparsifier.penalty, every=(interval, sparsifier.step),
            desc=f"{name}: ADMM", seed=config.seed, progress=progress,
            runtime=runtime, resume=admm_loop, checkpoint=saver,
        )  # fmt: skip
        masks = sparsifier.apply_masks(model)
        saver.extra["masks"] = {k: v.cpu() for k, v in masks.items()}
        saver.sparsifier = None
        saver.phase = f"{name}:retrain"
        saver.save()
        retrain_loop = None
    else:
        masks = {k: v.to(runtime.device) for k, v in resume["masks"].items()}
        apply_masks(model, masks)
        model.load_state_dict(resume["model"])
        saver.extra["masks"] = {k: v.cpu() for k, v in masks.items()}  # later checkpoints of this phase need them
        saver.phase = phase
        retrain_loop = _loop_for(resume, phase)
    train(
        model, train_split, config.retrain_epochs, lr=config.retrain_lr, batch_size=config.batch_size,
        setup_optimizer=lambda opt: mask_optimizer(opt, model),
        desc=f"{name}: retrain", seed=config.seed + 1, progress=progress,
        runtime=runtime, resume=retrain_loop, checkpoint=saver,
    )  # fmt: skip
    sparsifier.squash_mask(model)
    saver.extra.pop("masks", None)
    return masks


def prune(
    model: nn.Module,
    train_split: Dataset,
    test_split: Dataset,
    config: PruneConfig = PruneConfig(),
    progress: bool = True,
    log=print,
    *,
    runtime: Runtime | None = None,
    checkpoint: Checkpointer | None = None,
    resume: dict | None = None,
) -> PruneResult:
    """Run the whole recipe on a trained dense ``model`` (left untouched; copies are pruned).

    ``train_split`` / ``test_split`` are any Datasets of ``(input, label)``. ``runtime`` picks the device
    and the ranks (default: the model's device, one process); ``checkpoint`` saves the state as it goes;
    ``resume`` is a state ``checkpoint.load()`` returned (phase ``patterns:admm`` or later).
    """
    runtime = default_runtime(model, runtime)
    log = log if runtime.is_main else (lambda *_: None)
    phase = resume["phase"] if resume is not None else PHASES[1]
    if phase == "dense":
        raise ValueError("a checkpoint of the dense phase resumes through train_dense, not prune")
    results = dict(resume.get("results", {})) if resume is not None else {}
    if resume is None:
        torch.manual_seed(config.seed)
        model.to(runtime.device)
        results["dense_accuracy"] = evaluate(model, test_split, runtime=runtime)
        library = extract_library(model, config.patterns, config.taps, config.skip_first,
                                  config.depthwise_patterns, config.skip_last)  # fmt: skip
    else:
        library = PatternLibrary.from_json(resume["library"])
    log(f"dense accuracy {results['dense_accuracy']:.4f}")
    log(f"pattern library: {library.k} patterns of {library.n} taps, counts {list(library.counts)}")
    extra = {"library": library.to_json(), "results": results}

    current = copy.deepcopy(model).to(runtime.device)
    if PHASES.index(phase) <= PHASES.index("patterns:retrain"):
        saver = _Saver(checkpoint, "patterns:admm", current, extra)
        if resume is None:
            saver.save()  # the first checkpoint: dense model, library, dense accuracy
        prune_stage(current, train_split, library, None, config, "patterns", progress,
                    runtime=runtime, saver=saver, resume=resume, layer_rates=False)  # fmt: skip
        results["pattern_accuracy"] = evaluate(current, test_split, runtime=runtime)
        resume = None
        _Saver(checkpoint, "connectivity:admm", current, extra).save()
    log(f"pattern-only accuracy {results['pattern_accuracy']:.4f}")

    if phase != "done":
        saver = _Saver(checkpoint, "connectivity:admm", current, extra)
        masks = prune_stage(current, train_split, library, config.connectivity, config, "connectivity", progress,
                            runtime=runtime, saver=saver, resume=resume, layer_rates=True)  # fmt: skip
        results["final_accuracy"] = evaluate(current, test_split, runtime=runtime)
        extra["masks"] = {k: v.cpu() for k, v in masks.items()}
        _Saver(checkpoint, "done", current, extra).save()
    else:
        current.load_state_dict(resume["model"])
        masks = {k: v.to(runtime.device) for k, v in resume["masks"].items()}
    log(f"patterns + connectivity accuracy {results['final_accuracy']:.4f}")
    return PruneResult(
        current, library, masks, results["dense_accuracy"], results["pattern_accuracy"], results["final_accuracy"],
        layer_report(current, masks, config.skip_first, config.skip_last, dense_reasons(current, library, config)),
    )  # fmt: skip


def dense_reasons(model: nn.Module, library: PatternLibrary, config: PruneConfig) -> dict[str, str]:
    """Why each layer the recipe leaves dense stays dense (its type, its position, or an option not given)."""
    sparsifier = PatternSparsifier(
        library, config.connectivity, skip_first=config.skip_first, pointwise=config.pointwise,
        linear=config.linear, depthwise_patterns=config.depthwise_patterns, block=config.block,
        skip_last=config.skip_last, kernel_block=config.kernel_block,
    )  # fmt: skip
    return {name: why for name, (_, why) in sparsifier.plan(model).items() if why is not None}


def layer_report(
    model: nn.Module, masks: Mapping[str, torch.Tensor], skip_first: bool = True, skip_last: bool = True,
    reasons: Mapping[str, str] | None = None,
) -> list[dict]:  # fmt: skip
    """One entry per conv and linear layer: name, type, shape, non-zero weights and density, whether pruned, and
    why not (``reasons``, e.g. a sparsifier's ``skipped``, else the layer type's own reason).

    Convs also get kept/total kernels (a kernel is kept if any of its taps is non-zero).
    """
    modules = dict(model.named_modules())
    reasons = reasons or {}
    report = []
    for name, (kind, why) in layer_types(model, skip_first, skip_last).items():
        weight = modules[name].weight.detach()
        nonzero = int((weight != 0).sum())
        entry = {"name": name, "type": kind, "shape": list(weight.shape), "nonzeros": nonzero,
                 "weights": weight.numel(), "density": nonzero / weight.numel(), "pruned": name in masks}  # fmt: skip
        if weight.dim() == 4:
            entry["kept_kernels"] = int((weight.flatten(2) != 0).any(-1).sum())
            entry["total_kernels"] = weight.shape[0] * weight.shape[1]
        if name not in masks:
            entry["reason"] = reasons.get(name) or why or "not pruned"
        report.append(entry)
    return report
