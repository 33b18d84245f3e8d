"""``tvm-pattern demo``: the main job: prune the demo CNN on Fashion-MNIST, compile it, check it, time it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .prune import add_prune_options


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: prune the demo CNN on Fashion-MNIST and show the results")
    add_prune_options(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import check_and_time
    from ..prune import data, distributed, job

    started = time.time()
    _, result, test_set = job.run(args)
    if distributed.env_ranks()[0] != 0:  # under torchrun: only rank 0 compiles, checks and writes demo.json
        return 0
    test_split = data.as_split(test_set)  # the compiled model is checked on the whole test set, in memory
    print("\ncompiling the pruned model with TVM (pattern-sparse kernels for x86)")
    check_and_time(Path(args.out), result.model, test_split, progress=not args.quiet)
    print(f"\ndemo finished in {time.time() - started:.0f} s")
    return 0
