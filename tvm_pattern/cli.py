"""The ``tvm-pattern`` command line: prune, compile, tune, bench, demo, phone."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import TvmPatternError
from .library import candidate_patterns

DATASETS = ("fashion-mnist",)


def parse_connectivity(text: str) -> float | dict[str, float | None] | None:
    """``3.6``, ``none``, or per layer ``features.3=3.6,features.7=none``."""

    def one(value: str) -> float | None:
        if value.strip().lower() in ("none", "off"):
            return None
        try:
            return float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"connectivity must be a number >= 1 or 'none', got {value!r}") from None

    if "=" not in text:
        return one(text)
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    return {name.strip(): one(value) for name, value in pairs}


def add_prune_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vgg-small", help="model to train and prune (default: vgg-small)")
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--data", help="dataset folder (default: $TVM_PATTERN_DATA or /usr/share/datasets/fashion-mnist)")
    p.add_argument("--patterns", type=int, default=8, help="pattern library size K (4, 6, 8, 12; default 8)")
    p.add_argument("--taps", type=int, default=4, help="entries each pattern keeps, centre included (default 4)")
    p.add_argument(
        "--connectivity", type=parse_connectivity, default=3.6,
        help="keep 1/alpha of each layer's kernels: alpha (default 3.6), 'none', or name=alpha,...",
    )  # fmt: skip
    p.add_argument("--dense-epochs", type=float, default=5.0, help="epochs to train the dense model (default 5)")
    p.add_argument("--admm-epochs", type=float, default=1.0, help="ADMM epochs per stage (default 1)")
    p.add_argument("--retrain-epochs", type=float, default=3.0, help="masked retraining epochs per stage (default 3)")
    p.add_argument("--prune-first", action="store_true", help="prune the first conv too (dense by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="retrain the dense model even if cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvm-pattern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="train (or load) a dense CNN, then pattern + connectivity prune it")
    add_prune_options(p)
    p.add_argument("--out", required=True, help="output folder: patterns.json, masks.pt, model.onnx, patterns.png, ...")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("compile", help="compile an ONNX model with pattern-sparse convs into a deployable library")
    p.add_argument("model", help="ONNX model, e.g. the model.onnx that `prune` wrote")
    p.add_argument("--target", default="x86", help="x86 (default, this host), arm, mali, or a TVM target tag")
    p.add_argument("--out", required=True, help="library to write (.so)")
    p.add_argument("--patterns", help="patterns.json to check the weights against (default: infer from the zeros)")
    p.add_argument("--strict", action="store_true", help="fail if an eligible 3x3 conv is not pattern-sparse")
    p.add_argument("--db", help="a `tune` work directory: use its best schedule for every layer it tuned")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("tune", help="tune the pattern-sparse layers of an ONNX model (MetaSchedule + XGBoost)")
    p.add_argument("model", help="ONNX model, e.g. the model.onnx that `prune` wrote")
    p.add_argument("--target", default="x86", help="x86 (default, this host), arm, mali, or a TVM target tag")
    p.add_argument("--trials", type=int, default=64, help="measured schedules per distinct layer (default 64)")
    p.add_argument("--work-dir", required=True,
                   help="tuning database (MetaSchedule JSON); rerun to continue, `compile --db` to use it")
    p.add_argument("--tracker", help="HOST:PORT of a TVM RPC tracker: measure on its servers (default: here)")
    p.add_argument("--key", help="device key of the servers at --tracker, e.g. phone")
    p.add_argument("--patterns", help="patterns.json to check the weights against (default: infer from the zeros)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one RPC measurement may take (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tune)

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
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the main job: prune the demo CNN on Fashion-MNIST and show the results")
    add_prune_options(p)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("phone", help="an emulated aarch64 phone (qemu-user) running TVM's RPC server")
    phone = p.add_subparsers(dest="phone_command", required=True)
    q = phone.add_parser("setup", help="download and build the phone's root file system (~110 MB, cached)")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(func=cmd_phone_setup)
    q = phone.add_parser("serve", help="run a TVM RPC server on the phone until Ctrl-C")
    q.add_argument("--port", type=int, help="port to serve on (default: a free one)")
    q.add_argument("--tracker", help="register with the RPC tracker at HOST:PORT")
    q.add_argument("--key", default="phone", help="device key for the tracker (default: phone)")
    q.add_argument("--quiet", action="store_true", help="no set-up progress lines")
    q.set_defaults(func=cmd_phone_serve)
    return parser


def validate_prune_args(args: argparse.Namespace) -> None:
    """Fail on bad input before any training, so nothing is half-done."""
    from . import data, models
    from .projection import check_alpha
    from .sparsifier import conv_eligibility

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


def run_prune(args: argparse.Namespace):
    """The shared body of ``prune`` and ``demo``: returns the report, the PruneResult and the test split."""
    import torch

    from . import artifacts, checkpoints, data
    from .pruning import PruneConfig, prune

    validate_prune_args(args)
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


def cmd_prune(args: argparse.Namespace) -> int:
    run_prune(args)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile_command

    compile_command(args.model, args.target, args.out, args.patterns, args.strict, database=args.db)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .tune import tune_file

    tune_file(args.model, args.target, args.work_dir, args.trials, args.tracker, args.key, args.patterns,
              timeout=args.timeout, progress=not args.quiet)  # fmt: skip
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench, run_tuned_bench

    if args.tuned:
        run_tuned_bench(args.layers.split(","), args.trials, args.work_dir, args.compression, threads=args.threads,
                        repeats=args.repeats, progress=not args.quiet, json_path=args.json)  # fmt: skip
        return 0
    run_bench(args.suite, args.compression, args.json, threads=args.threads, repeats=args.repeats,
              progress=not args.quiet)  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import check_and_time

    started = time.time()
    _, result, test_split = run_prune(args)
    print("\ncompiling the pruned model with TVM (pattern-sparse kernels for x86)")
    check_and_time(Path(args.out), result.model, test_split, progress=not args.quiet)
    print(f"\ndemo finished in {time.time() - started:.0f} s")
    return 0


def cmd_phone_setup(args: argparse.Namespace) -> int:
    from .phone import EmulatedPhone

    print(f"emulated phone ready in {EmulatedPhone().setup(progress=not args.quiet)}")
    return 0


def cmd_phone_serve(args: argparse.Namespace) -> int:
    from .phone import serve

    return serve(args.port, args.tracker, args.key, progress=not args.quiet, echo=lambda line: print(line, flush=True))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TvmPatternError as err:
        print(f"tvm-pattern {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
