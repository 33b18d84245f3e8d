"""``tvm-pattern bench``: a suite's 3x3 convs, PyTorch dense vs TVM dense vs pattern-sparse; or tuned vs untuned."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark a suite's 3x3 convs: PyTorch dense vs TVM dense vs pattern-sparse")
    p.add_argument("--suite", default="vgg16", choices=("vgg16", "resnet18", "resnet50"))
    p.add_argument("--compression", type=float, default=8.0, choices=(2.25, 8.0),
                   help="2.25: patterns only; 8: patterns + 3.6x connectivity (default)")  # fmt: skip
    p.add_argument("--json", help="write the measurements to this JSON file")
    p.add_argument("--threads", type=int, default=2, help="threads for every side (default 2)")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per layer; medians are reported")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tuned", action="store_true", help="tuned vs untuned kernel for --layers of VGG-16 instead")
    p.add_argument("--layers", default="conv2_2,conv3_2,conv4_2", help="VGG-16 layers for --tuned")
    p.add_argument("--trials", type=int, default=64, help="tuning trials per layer for --tuned (default 64)")
    p.add_argument("--work-dir", help="tuning database for --tuned (default: a new temporary folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench, run_tuned_bench

    if args.tuned:
        run_tuned_bench(args.layers.split(","), args.trials, args.work_dir, args.compression, threads=args.threads,
                        repeats=args.repeats, progress=not args.quiet, json_path=args.json)  # fmt: skip
        return 0
    run_bench(args.suite, args.compression, args.json, threads=args.threads, repeats=args.repeats,
              progress=not args.quiet)  # fmt: skip
    return 0
