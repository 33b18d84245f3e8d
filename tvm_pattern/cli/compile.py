"""``tvm-pattern compile``: an ONNX model with pattern-sparse convs to a deployable library."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile an ONNX model with pattern-sparse convs into a deployable library")
    p.add_argument("model", help="ONNX model, e.g. the model.onnx that `prune` wrote")
    p.add_argument("--target", default="x86", help="x86 (default, this host), arm, mali, or a TVM target tag")
    p.add_argument("--out", required=True, help="library to write (.so)")
    p.add_argument("--patterns", help="patterns.json to check the weights against (default: infer from the zeros)")
    p.add_argument("--strict", action="store_true", help="fail if an eligible 3x3 conv is not pattern-sparse")
    p.add_argument("--db", help="a `tune` work directory: use its best schedule for every layer it tuned")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import compile_command

    compile_command(args.model, args.target, args.out, args.patterns, args.strict, database=args.db)
    return 0
