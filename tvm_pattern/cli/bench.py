"""``tvm-pattern bench``: a suite's 3x3 convs, PyTorch dense vs TVM dense vs pattern-sparse; tuned vs untuned;
or (``--model``) one whole model on every runtime side by side."""

from __future__ import annotations

import argparse


def _compression(text: str) -> str | float:
    if text.lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (2.25, 8.0):
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose none, 2.25 or 8)")
    return value


def _layer_types(text: str) -> list[str]:
    from ..prune.oneshot import TYPES

    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TYPES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown layer type(s) {unknown or [text]}; choose from {', '.join(TYPES)}")
    return chosen


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark a suite's 3x3 convs: PyTorch dense vs TVM dense vs pattern-sparse; "
                       "or --model: a whole model on every runtime")  # fmt: skip
    p.add_argument("--suite", default="vgg16", choices=("vgg16", "resnet18", "resnet50"))
    p.add_argument("--model", help="whole-model mode: resnet50, mobilenetv2, vgg16, vgg16-convs (its conv stack) or "
                   "FILE.onnx, on ours, PyTorch, ONNX Runtime, OpenVINO and DeepSparse (`make peers` installs the "
                   "peers)")  # fmt: skip
    p.add_argument("--compression", type=_compression, default=None,
                   help="2.25: patterns only; 8: patterns + 3.6x connectivity, in blocks of 6 filters for convs "
                        "of >= 256 input channels (the --suite default); none: dense "
                        "(the --model default). --model: one-shot, every layer type (8: 1x1 / FC 8x in blocks "
                        "of 4, depthwise patterns; 2.25: 1x1 / FC 2.25x; first conv and last FC dense)")  # fmt: skip
    p.add_argument("--json", help="write the measurements to this JSON file (--model: and a .png of the op shares)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every side (default: the cores this process may use)")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per layer/model; medians are reported")
    p.add_argument("--warmup", type=int, default=3, help="--model: untimed runs before the timed ones (default 3)")
    p.add_argument("--runtimes", help="--model: a comma list to run only some of onnxruntime,ours,pytorch,"
                   "openvino,openvino-default,deepsparse")  # fmt: skip
    p.add_argument("--size", type=int, default=224, help="--model (built-in): input height = width (default 224)")
    p.add_argument("--scale", type=float, default=1.0, help="--model (built-in): channel widths x this (quick checks)")
    p.add_argument("--db", help="--model: compile ours with this tuning work directory (`tvm-pattern tune` of "
                   "the same model)")  # fmt: skip
    p.add_argument("--save-pruned", metavar="OUT.onnx",
                   help="--model with --compression: write the one-shot pruned ONNX there (the file every runtime "
                        "times; an ONNX --model is pruned to the same recipe)")  # fmt: skip
    p.add_argument("--prune-only", type=_layer_types, metavar="TYPES",
                   help="--model: prune only these layer types (comma list of conv3x3, pointwise, linear, "
                        "depthwise; default all; conv3x3 is the issue-11 recipe)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tuned", action="store_true", help="tuned vs untuned kernel for --layers of VGG-16 instead")
    p.add_argument("--layers", default="conv2_2,conv3_2,conv4_2", help="VGG-16 layers for --tuned")
    p.add_argument("--trials", type=int, default=64, help="tuning trials per layer for --tuned (default 64)")
    p.add_argument("--work-dir", help="tuning database for --tuned (default: a new temporary folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import TvmPatternError

    if args.model is not None:
        from ..bench import run_model_bench

        compression = None if args.compression in (None, "none") else args.compression
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] if args.runtimes else None
        result = run_model_bench(args.model, compression, args.json, threads=args.threads, repeats=args.repeats,
                                 warmup=args.warmup, size=args.size, scale=args.scale, runtimes=runtimes,
                                 database=args.db, save_pruned=args.save_pruned,
                                 prune_only=args.prune_only)  # fmt: skip
        ours = next((r for r in result["runtimes"] if r["runtime"] == "ours"), None)
        if ours is not None and ours["status"] == "failed":
            return 1
        return 1 if result["ours_within_tolerance"] is False else 0

    from ..bench import run_bench, run_tuned_bench

    if args.db is not None:
        raise TvmPatternError("--db applies to --model only (--tuned tunes its own layers into --work-dir)")
    if args.save_pruned is not None or args.prune_only is not None:
        raise TvmPatternError("--save-pruned and --prune-only apply to --model only")

    if args.compression == "none":
        raise TvmPatternError("--compression none applies to --model only; --suite and --tuned take 2.25 or 8")
    compression = 8.0 if args.compression is None else args.compression
    threads = args.threads  # None: bench.layers uses targets.host_cores()
    if args.tuned:
        run_tuned_bench(args.layers.split(","), args.trials, args.work_dir, compression, threads=threads,
                        repeats=args.repeats, progress=not args.quiet, json_path=args.json)  # fmt: skip
        return 0
    run_bench(args.suite, compression, args.json, threads=threads, repeats=args.repeats, progress=not args.quiet)
    return 0
