"""``tvm-pattern tune``: MetaSchedule searches every op of a model (templates and the rest), here or over RPC."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("tune", help="tune the ops of an ONNX model (MetaSchedule + XGBoost)")
    p.add_argument("model", help="ONNX model, e.g. the model.onnx that `prune` wrote")
    p.add_argument("--target", default="x86", help="x86 (default, this host), arm, mali, or a TVM target tag")
    p.add_argument("--trials", type=int, default=64, help="measured schedules per distinct task (default 64)")
    p.add_argument("--ops", choices=("all", "templates", "sparse"), default="all",
                   help="all (default): the pattern-sparse and dense kernels' templates and every other op in "
                        "MetaSchedule's default space; templates: the project's templates only; sparse: the "
                        "pattern-sparse layers only")
    p.add_argument("--work-dir", required=True,
                   help="tuning database (MetaSchedule JSON); rerun to continue, `compile --db` to use it")
    p.add_argument("--tracker", help="HOST:PORT of a TVM RPC tracker: measure on its servers (default: here)")
    p.add_argument("--key", help="device key of the servers at --tracker, e.g. phone")
    p.add_argument("--patterns", help="patterns.json to check the weights against (default: infer from the zeros)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one RPC measurement may take (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tune import tune_file

    tune_file(args.model, args.target, args.work_dir, args.trials, args.tracker, args.key, args.patterns,
              ops=args.ops, timeout=args.timeout, progress=not args.quiet)  # fmt: skip
    return 0
