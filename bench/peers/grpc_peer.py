"""The gRPC app and the grpcio clients of ``bench.grpc``, each run as its own pinned process.

The app is the gRPC tests' ``grpc.aio`` Echo service (tests/support/grpcapp.py) with the same
proto, generated at start into the directory given; run with ``PYTHONPATH=tests`` so that
``support.grpcapp`` imports. Subcommands:

* ``serve DIR``: start the app on a free port, print the port, serve until signalled;
* ``body DIR FILE``: write the unary request h2load sends, one length-prefixed message;
* ``check DIR PORT``: one unary call through PORT; exit 1 unless the reply echoes the request;
* ``stream DIR PORT N``: one server-streaming call of N small messages, checked in order; print
  ``{"messages": N, "seconds": S}``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import threading
import time
from pathlib import Path

import grpc
from support.grpcapp import OPTIONS, GrpcApp, generate

PAYLOAD = b"hello"  # a small message: 7 bytes of protobuf, 12 on the wire with the gRPC prefix


def serve(protos: Path) -> None:
    app = GrpcApp(*generate(protos))
    app.start()
    print(app.port, flush=True)
    threading.Event().wait()  # until SIGTERM from the supervisor


def body(protos: Path, out: Path) -> None:
    pb2, _ = generate(protos)
    message = pb2.Msg(data=PAYLOAD).SerializeToString()
    # gRPC's message framing: a compressed flag (0) and a 32-bit big-endian length
    out.write_bytes(struct.pack(">BI", 0, len(message)) + message)


def check(protos: Path, port: int) -> int:
    pb2, pb2_grpc = generate(protos)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        reply = pb2_grpc.EchoStub(channel).Unary(pb2.Msg(data=PAYLOAD), timeout=5)
    if reply.data != PAYLOAD or reply.n < 1:
        print(f"unexpected reply: {reply!r}", file=sys.stderr)
        return 1
    return 0


def stream(protos: Path, port: int, count: int) -> int:
    pb2, pb2_grpc = generate(protos)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        stub = pb2_grpc.EchoStub(channel)
        stub.Unary(pb2.Msg(), timeout=5)  # the connection is up before the clock starts
        started = time.perf_counter()
        expected = 0
        for reply in stub.ServerStream(pb2.Msg(n=count, data=PAYLOAD), timeout=60):
            if reply.n != expected or reply.data != PAYLOAD:
                print(f"message {expected}: got {reply!r}", file=sys.stderr)
                return 1
            expected += 1
        seconds = time.perf_counter() - started
    if expected != count:
        print(f"{expected} messages of {count}", file=sys.stderr)
        return 1
    print(json.dumps({"messages": count, "seconds": seconds}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "body", "check", "stream"):
        command = sub.add_parser(name)
        command.add_argument("protos", type=Path, help="directory to generate the proto into")
        if name == "body":
            command.add_argument("out", type=Path)
        if name in ("check", "stream"):
            command.add_argument("port", type=int)
        if name == "stream":
            command.add_argument("count", type=int)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.protos)
        return 0
    if args.command == "body":
        body(args.protos, args.out)
        return 0
    if args.command == "check":
        return check(args.protos, args.port)
    return stream(args.protos, args.port, args.count)


if __name__ == "__main__":
    raise SystemExit(main())
