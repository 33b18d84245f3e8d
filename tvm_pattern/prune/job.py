"""What ``tvm-pattern prune`` (and the demo's first half) runs: check the options, train or load the dense
model, prune it with the recipe, write the outputs all-or-nothing, print the report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..errors import TvmPatternError
from ..sparsity.library import candidate_patterns
from . import artifacts, checkpoints, data, models
from .projection import check_alpha
from .recipe import PruneConfig, prune
from .sparsifier import conv_eligibility


def validate(args: argparse.Namespace) -> None:
    """Fail on bad input before any training, so nothing is half-done."""
    candidates = len(candidate_patterns(args.taps))
    if not 1 <= args.patterns <= candidates:
        raise TvmPatternError(
            f"--patterns {args.patterns}: only {candidates} candidate patterns of {args.taps} taps exist"
        )
    alphas = args.connectivity.values() if isinstance(args.connectivity, dict) else [args.connectivity]
    for alpha in alphas:
        if alpha is not None:
            check_alpha(alpha)
    eligible = conv_eligibility(models.build(args.model), skip_first=not args.prune_first)
    if all(why is not None for why in eligible.values()):
        raise TvmPatternError(f"model {args.model!r} has no prunable 3x3 convolution: {eligible}")
    data.data_dir(args.data)


def run(args: argparse.Namespace):
    """The shared body of ``prune`` and ``demo``: returns the report, the PruneResult and the test split."""
    validate(args)
    started = time.time()
    train_split, test_split = data.load("train", args.data), data.load("test", args.data)
    dense = checkpoints.dense_model(
        args.model, train_split, args.dense_epochs, seed=args.seed,
        use_cache=not args.no_cache, progress=not args.quiet,
    )  # fmt: skip
    config = PruneConfig(
        patterns=args.patterns, taps=args.taps, connectivity=args.connectivity,
        admm_epochs=args.admm_epochs, retrain_epochs=args.retrain_epochs,
        skip_first=not args.prune_first, seed=args.seed,
    )  # fmt: skip
    result = prune(dense, train_split, test_split, config, progress=not args.quiet)
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "dense_accuracy": result.dense_accuracy,
        "pattern_accuracy": result.pattern_accuracy,
        "final_accuracy": result.final_accuracy,
        "patterns": result.library.k,
        "taps": result.library.n,
        "connectivity": args.connectivity,
        "layers": result.layers,
        "seconds": round(time.time() - started, 1),
    }
    example = torch.from_numpy(test_split.images[:1])
    out = artifacts.save_prune_outputs(args.out, result.model, example, result.library, result.masks, report)
    print_report(report, out)
    return report, result, test_split


def print_report(report: dict, out: Path) -> None:
    dense = report["dense_accuracy"]
    print("\n  stage                      accuracy   vs dense")
    for label, key in (("dense", "dense_accuracy"), ("patterns", "pattern_accuracy"),
                       ("patterns + connectivity", "final_accuracy")):  # fmt: skip
        value = report[key]
        delta = "" if key == "dense_accuracy" else f"{100 * (value - dense):+.2f} pts"
        print(f"  {label:<25} {100 * value:7.2f}%   {delta}")
    print("\n  conv                  kept / total kernels   pruned")
    for layer in report["layers"]:
        note = "yes" if layer["pruned"] else f"no ({layer.get('reason', '')})"
        print(f"  {layer['name']:<20} {layer['kept_kernels']:>6} / {layer['total_kernels']:<6}        {note}")
    print(f"\n  outputs in {out}/ (patterns.json, masks.pt, model.onnx, patterns.png, report.json)")
