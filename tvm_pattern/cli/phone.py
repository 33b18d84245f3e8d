"""``tvm-pattern phone setup | serve``: the emulated aarch64 phone (qemu-user) running TVM's RPC server."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("phone", help="an emulated aarch64 phone (qemu-user) running TVM's RPC server")
    phone = p.add_subparsers(dest="phone_command", required=True)
    q = phone.add_parser("setup", help="download and build the phone's root file system (~110 MB, cached)")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(func=run_setup)
    q = phone.add_parser("serve", help="run a TVM RPC server on the phone until Ctrl-C")
    q.add_argument("--port", type=int, help="port to serve on (default: a free one)")
    q.add_argument("--tracker", help="register with the RPC tracker at HOST:PORT")
    q.add_argument("--key", default="phone", help="device key for the tracker (default: phone)")
    q.add_argument("--quiet", action="store_true", help="no set-up progress lines")
    q.set_defaults(func=run_serve)


def run_setup(args: argparse.Namespace) -> int:
    from ..phone import EmulatedPhone

    print(f"emulated phone ready in {EmulatedPhone().setup(progress=not args.quiet)}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from ..phone import serve

    return serve(args.port, args.tracker, args.key, progress=not args.quiet, echo=lambda line: print(line, flush=True))
