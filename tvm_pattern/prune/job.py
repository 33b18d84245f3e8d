"""What ``tvm-pattern prune`` (and the demo's first half) runs: check the options, build the model (built-in
or the user's ``MODULE:CALLABLE``) and the data, train or load the dense model, prune it with the recipe on the
chosen device (data-parallel under ``torchrun``), checkpoint as it goes, write the outputs all-or-nothing
(rank 0 only), print the report.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import ModelError, SpecError, TvmPatternError
from ..sparsity.blocks import AUTO
from ..sparsity.library import PatternLibrary, candidate_patterns
from . import artifacts, checkpoints, data, distributed, models, userspec
from .projection import check_alpha, check_block, check_kernel_block
from .recipe import PruneConfig, prune, train_dense
from .resume import Checkpointer
from .sparsifier import PatternSparsifier

# What checkpoints made before each option existed did: an option at this value is left out of their settings, so
# they still resume (kernel_block: per kernel, so the default "auto" is recorded and an old checkpoint is refused
# with a clear message; --kernel-block 1 resumes it)
DEFAULT_LAYER_OPTIONS = {"pointwise": None, "linear": None, "depthwise_patterns": False, "block": 4, "skip_last": True,
                         "kernel_block": 1}


@dataclass
class Inputs:
    """What ``validate`` found: the (untrained or loaded) model and the two datasets."""

    model: nn.Module
    train_set: Dataset
    test_set: Dataset
    user_model: bool
    user_data: bool


def _opt(args: argparse.Namespace, name: str, default=None):
    return getattr(args, name, default)


def _kernel_block(args: argparse.Namespace) -> int | str:
    """``--kernel-block`` (None: the default, ``"auto"``)."""
    value = _opt(args, "kernel_block")
    return AUTO if value is None else value


def validate(args: argparse.Namespace) -> Inputs:
    """Fail on bad input before any training or writing, so nothing is half-done."""
    candidates = len(candidate_patterns(args.taps))
    if not 1 <= args.patterns <= candidates:
        raise TvmPatternError(
            f"--patterns {args.patterns}: only {candidates} candidate patterns of {args.taps} taps exist"
        )
    for rate in (args.connectivity, _opt(args, "pointwise"), _opt(args, "linear")):
        for alpha in rate.values() if isinstance(rate, dict) else [rate]:
            if alpha is not None:
                check_alpha(alpha)
    check_block(_opt(args, "block", 4))
    check_kernel_block(_kernel_block(args))
    if _opt(args, "batch_size", 128) < 1:
        raise TvmPatternError(f"--batch-size {args.batch_size}: must be >= 1")
    if _opt(args, "workers", 0) < 0:
        raise TvmPatternError(f"--workers {args.workers}: must be >= 0")
    if _opt(args, "checkpoint_every", 300.0) <= 0:
        raise TvmPatternError(f"--checkpoint-every {args.checkpoint_every}: must be > 0 seconds")
    for option, folder in (("--out", args.out), ("--checkpoint-dir", _opt(args, "checkpoint_dir"))):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise TvmPatternError(f"{option} {folder}: exists and is not a folder")  # found now, not after training
    distributed.select_device(_opt(args, "device", "auto"), distributed.env_ranks()[2])
    user_model = userspec.is_spec(args.model)
    torch.manual_seed(args.seed)
    if user_model:
        model = userspec.load_model(args.model, _opt(args, "weights"))
    else:
        model = models.build(args.model)
        if _opt(args, "weights"):
            userspec.load_weights(model, args.weights)
    try:
        sparsifier(args).prepare(model)  # every layer it would prune, rates per layer name checked
    except ModelError as err:
        raise TvmPatternError(f"model {args.model!r}: {err}") from err
    user_data = userspec.is_spec(args.data)
    if user_data:
        train_set, test_set = userspec.load_data(args.data)
    else:
        train_set, test_set = data.builtin(data.data_dir(args.data))
    example = test_set[0][0][None]
    try:
        with torch.no_grad():
            logits = model.eval()(example)
    except Exception as err:
        raise SpecError(f"model {args.model!r} cannot run on a test sample of shape {tuple(example.shape)}: "
                        f"{type(err).__name__}: {err}") from err  # fmt: skip
    if not torch.is_tensor(logits) or logits.dim() != 2:
        raise SpecError(f"model {args.model!r} returns {type(logits).__name__} of shape "
                        f"{getattr(logits, 'shape', '?')}; expected (batch, classes) logits")  # fmt: skip
    return Inputs(model, train_set, test_set, user_model, user_data)


def layer_options(args: argparse.Namespace) -> dict:
    """The per-layer-type options (``PruneConfig`` fields) of the command line."""
    return {
        "pointwise": _opt(args, "pointwise"), "linear": _opt(args, "linear"),
        "depthwise_patterns": bool(_opt(args, "depthwise_patterns", False)), "block": _opt(args, "block", 4),
        "skip_last": not _opt(args, "prune_last", False), "kernel_block": _kernel_block(args),
    }  # fmt: skip


def sparsifier(args: argparse.Namespace) -> PatternSparsifier:
    """A sparsifier with every rate of the command line (to check the options against the model)."""
    library = PatternLibrary(candidate_patterns(args.taps)[: args.patterns])
    return PatternSparsifier(library, args.connectivity, skip_first=not args.prune_first, **layer_options(args))


def settings(args: argparse.Namespace, world_size: int) -> dict:
    """What a checkpoint must have been made with to be resumed by this run."""
    weights = _opt(args, "weights")
    return {
        "model": args.model,
        "weights": None if weights is None else str(Path(weights).resolve()),
        "data": args.data if userspec.is_spec(args.data) else str(data.data_dir(args.data).resolve()),
        "patterns": args.patterns,
        "taps": args.taps,
        "connectivity": args.connectivity,
        "dense_epochs": args.dense_epochs,
        "admm_epochs": args.admm_epochs,
        "retrain_epochs": args.retrain_epochs,
        "prune_first": args.prune_first,
        "seed": args.seed,
        "batch_size": _opt(args, "batch_size", 128),
        "world_size": world_size,
        "amp": bool(_opt(args, "amp", False)),
        # only when set, so checkpoints made before these options existed still resume
        **{k: v for k, v in layer_options(args).items() if v != DEFAULT_LAYER_OPTIONS[k]},
    }


def run(args: argparse.Namespace):
    """The shared body of ``prune`` and ``demo``: returns the report, the PruneResult and the test dataset."""
    inputs = validate(args)
    runtime = distributed.setup(_opt(args, "device", "auto"), _opt(args, "workers", 0), _opt(args, "amp", False))
    log = print if runtime.is_main else (lambda *_: None)
    try:
        return _run(args, inputs, runtime, log)
    finally:
        distributed.teardown()


def _run(args, inputs: Inputs, runtime: distributed.Runtime, log):
    started = time.time()
    progress = not args.quiet
    batch_size = _opt(args, "batch_size", 128)
    config = PruneConfig(
        patterns=args.patterns, taps=args.taps, connectivity=args.connectivity,
        admm_epochs=args.admm_epochs, retrain_epochs=args.retrain_epochs,
        skip_first=not args.prune_first, seed=args.seed, batch_size=batch_size, **layer_options(args),
    )  # fmt: skip
    if runtime.distributed:
        log(f"data-parallel on {runtime.world_size} ranks ({distributed.backend_for(runtime.device)}, "
            f"{runtime.device.type}), global batch {batch_size}")  # fmt: skip
    checkpoint, state = None, None
    if _opt(args, "checkpoint_dir"):
        checkpoint = Checkpointer(args.checkpoint_dir, settings(args, runtime.world_size), runtime,
                                  every_s=_opt(args, "checkpoint_every", 300.0), log=log)  # fmt: skip
        state = checkpoint.load()
    model = inputs.model.to(runtime.device)
    if state is None or state["phase"] == "dense":

        def train_fn(m: nn.Module) -> None:
            train_dense(m, inputs.train_set, args.dense_epochs, config, progress,
                        runtime=runtime, checkpoint=checkpoint, resume=state)  # fmt: skip

        if inputs.user_model or _opt(args, "weights"):
            train_fn(model)
            log(f"dense model trained for {args.dense_epochs} epochs" if args.dense_epochs > 0
                else "dense model as given (--dense-epochs 0)")  # fmt: skip
        else:
            model = checkpoints.dense_model(
                args.model, inputs.train_set, args.dense_epochs, seed=args.seed,
                use_cache=not args.no_cache and state is None, progress=progress, log=log,
                runtime=runtime, batch_size=batch_size, train_fn=train_fn,
            )  # fmt: skip
        state = None
    result = prune(model, inputs.train_set, inputs.test_set, config, progress=progress, log=log,
                   runtime=runtime, checkpoint=checkpoint, resume=state)  # fmt: skip
    report = {
        "model": args.model,
        "dataset": args.data if inputs.user_data else args.dataset,
        "dense_accuracy": result.dense_accuracy,
        "pattern_accuracy": result.pattern_accuracy,
        "final_accuracy": result.final_accuracy,
        "patterns": result.library.k,
        "taps": result.library.n,
        "connectivity": args.connectivity,
        **layer_options(args),
        "world_size": runtime.world_size,
        "device": runtime.device.type,
        "batch_size": batch_size,
        "amp": runtime.amp,
        "layers": result.layers,
        "seconds": round(time.time() - started, 1),
    }
    result.model = result.model.cpu()
    result.masks = {k: v.cpu() for k, v in result.masks.items()}
    out = Path(args.out)
    if runtime.is_main:
        example = torch.as_tensor(inputs.test_set[0][0])[None].float()
        out = artifacts.save_prune_outputs(args.out, result.model, example, result.library, result.masks, report)
        print_report(report, out)
    distributed.barrier()
    return report, result, inputs.test_set


def print_report(report: dict, out: Path) -> None:
    dense = report["dense_accuracy"]
    print("\n  stage                      accuracy   vs dense")
    for label, key in (("dense", "dense_accuracy"), ("patterns", "pattern_accuracy"),
                       ("patterns + connectivity", "final_accuracy")):  # fmt: skip
        value = report[key]
        delta = "" if key == "dense_accuracy" else f"{100 * (value - dense):+.2f} pts"
        print(f"  {label:<25} {100 * value:7.2f}%   {delta}")
    print("\n  layer                type        density   kept / total kernels   pruned")
    for layer in report["layers"]:
        note = "yes" if layer["pruned"] else f"no ({layer.get('reason', '')})"
        kernels = f"{layer['kept_kernels']:>6} / {layer['total_kernels']:<6}" if "kept_kernels" in layer else " " * 15
        print(f"  {layer['name']:<20} {layer.get('type', ''):<10} {layer.get('density', 1.0):8.3f}   {kernels}"
              f"        {note}")  # fmt: skip
    world = report.get("world_size", 1)
    print(f"\n  {world} rank{'s' if world > 1 else ''} on {report.get('device', 'cpu')}; "
          f"{report['seconds']:.0f} s")  # fmt: skip
    print(f"  outputs in {out}/ (patterns.json, masks.pt, model.onnx, patterns.png, report.json)")


__all__ = ["Inputs", "print_report", "run", "settings", "validate"]
