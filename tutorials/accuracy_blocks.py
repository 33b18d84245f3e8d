"""Issue 12 accuracy bar: a bottleneck ResNet (1x1 convs, 1x1 shortcuts, two FC layers) on Fashion-MNIST,
ADMM-pruned at 8x in every prunable layer, block sizes G in {1, 4, 8, 16} and unstructured for 1x1 / FC.

dense -> patterns-only stage (3x3 convs: 8 four-tap patterns; shared by every variant) -> one connectivity
stage per variant (3x3: 3.6x kernels; 1x1 and FC: 8x input columns in blocks of G output channels).
The first conv and the last FC stay dense. CPU, one thread (two shared cores: threads only fight).

    .venv/bin/python tutorials/accuracy_blocks.py --train-images 8000 --dense-epochs 5 --pattern-epochs 0.5 1 \
        --admm-epochs 4 --retrain-epochs 30 --blocks 4 --stage stage.pt --out g4.json   # README: "4 ADMM epochs"

(``--kernel-block 6`` for 3x3 kernels kept in blocks of 6 filters in every conv (the default, auto, keeps
this net's convs, at most 128 channels wide, per kernel);
``--seed 1`` with another ``--stage`` file for the second seed; ``--admm-epochs 1.5 --retrain-epochs R
--blocks 1,4`` for the other rows.) One run of a row takes 3-10 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time

import numpy as np
import torch

from tvm_pattern.cli.prune import parse_kernel_block
from tvm_pattern.prune import data
from tvm_pattern.prune.models import ResNetSmall
from tvm_pattern.prune.recipe import PruneConfig, extract_library, layer_report, prune_stage, train_dense
from tvm_pattern.prune.training import evaluate


def densities(model, masks, skip_first=True):
    """Density per layer type of the pruned layers, and of all conv/FC weights but the last layer."""
    rows = layer_report(model, masks)
    out = {}
    for kind in ("conv3x3", "pointwise", "linear"):
        pruned = [r for r in rows if r["type"] == kind and r["pruned"]]
        if pruned:
            out[kind] = sum(r["nonzeros"] for r in pruned) / sum(r["weights"] for r in pruned)
    body = rows[:-1]
    out["all_but_last"] = sum(r["nonzeros"] for r in body) / sum(r["weights"] for r in body)
    pruned = [r for r in rows if r["pruned"]]
    out["pruned_layers"] = sum(r["nonzeros"] for r in pruned) / sum(r["weights"] for r in pruned)
    return out, rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-images", type=int, default=12000)
    p.add_argument("--dense-epochs", type=float, default=6)
    p.add_argument("--admm-epochs", type=float, default=2)
    p.add_argument("--retrain-epochs", type=float, default=3)
    p.add_argument("--pattern-epochs", type=float, nargs=2, default=(1, 2), metavar=("ADMM", "RETRAIN"),
                   help="the patterns-only stage's ADMM and retrain epochs")
    p.add_argument("--rho", type=float, default=1e-2, help="initial ADMM penalty (x2 per update, 6 updates)")
    p.add_argument("--stage", help="a .pt file: written after the patterns stage; if it exists, loaded instead "
                   "(a second process can run other block sizes from the same patterns-only model)")
    p.add_argument("--blocks", default="1,4,8,16,unstructured")
    p.add_argument("--alpha", type=float, default=8.0, help="1x1 / FC rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="accuracy_blocks.json")
    p.add_argument("--kernel-block", type=parse_kernel_block, default=PruneConfig.kernel_block,
                   help="3x3 connectivity: filters per block sharing their kept channels (1: per kernel; auto: "
                   "6 from 256 input channels, which leaves this net's narrow convs per kernel)")
    args = p.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    train_full, test = data.builtin()
    idx = np.random.default_rng(args.seed).permutation(len(train_full))[: args.train_images]
    train = data.Split(train_full.images[idx], train_full.labels[idx])
    config = PruneConfig(admm_epochs=args.admm_epochs, retrain_epochs=args.retrain_epochs, seed=args.seed,
                         pointwise=args.alpha, linear=args.alpha, rho=args.rho, kernel_block=args.kernel_block)
    if args.stage and os.path.exists(args.stage):
        saved = torch.load(args.stage, weights_only=False)
        patterns, library, results = saved["model"], saved["library"], saved["results"]
        results["settings"] = vars(args)
        print(f"loaded the patterns-only model from {args.stage}", flush=True)
    else:
        torch.manual_seed(args.seed)
        model = ResNetSmall()
        train_dense(model, train, args.dense_epochs, config, progress=False)
        results = {"settings": vars(args), "dense": evaluate(model, test)}
        print(f"dense {results['dense']:.4f}  ({time.time() - started:.0f} s)", flush=True)
        library = extract_library(model, config.patterns, config.taps)
        patterns = copy.deepcopy(model)
        pconfig = dataclasses.replace(config, admm_epochs=args.pattern_epochs[0], retrain_epochs=args.pattern_epochs[1])
        masks = prune_stage(patterns, train, library, None, pconfig, "patterns", progress=False, layer_rates=False)
        results["patterns"] = evaluate(patterns, test)
        results["patterns_density"] = densities(patterns, masks)[0]
        print(f"patterns {results['patterns']:.4f}  ({time.time() - started:.0f} s)", flush=True)
        if args.stage:
            torch.save({"model": patterns, "library": library, "results": results}, args.stage + ".tmp")
            os.replace(args.stage + ".tmp", args.stage)
    results["variants"] = {}
    for text in args.blocks.split(","):
        variant = copy.deepcopy(patterns)
        if text == "3x3-only":  # attribution: 3x3 at 8x, 1x1 / FC dense
            cfg = dataclasses.replace(config, pointwise=None, linear=None)
        else:
            cfg = dataclasses.replace(config, block=text if text == "unstructured" else int(text))
        masks = prune_stage(variant, train, library, cfg.connectivity, cfg, "connectivity", progress=False,
                            layer_rates=True)
        dens, rows = densities(variant, masks)
        results["variants"][text] = {"accuracy": evaluate(variant, test), "density": dens, "layers": rows}
        print(f"G={text}: {results['variants'][text]['accuracy']:.4f} density {dens}  "
              f"({time.time() - started:.0f} s)", flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    results["seconds"] = round(time.time() - started)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
