"""The ``tvm-pattern`` command line: prune, compile, tune, bench, demo, phone.

One module per command, each with ``register(subparsers)`` (its argparse options) and ``run(args)`` (a call
into the library); this module only assembles them and turns ``TvmPatternError`` into exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import TvmPatternError
from . import bench, compile, demo, phone, prune, tune

COMMANDS = (prune, compile, tune, bench, demo, phone)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvm-pattern", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TvmPatternError as err:
        print(f"tvm-pattern {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
