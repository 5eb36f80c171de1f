"""A real gRPC app (grpc.aio) for the gRPC tests, with its protos generated at test time.

The proto is compiled with grpcio-tools' protoc into a temporary directory, so no generated code
is checked in. The app runs on a plain asyncio loop in its own thread (grpc.aio has its own
polling and wants the stock loop), and records what it saw for the tests to assert on.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
from grpc_tools import protoc

PROTO = """
syntax = "proto3";
package sidecar.test;

message Msg {
  int32 n = 1;            // how many messages to send back, or a count
  bytes data = 2;         // payload, echoed
  string mode = 3;        // what the app should do: see EchoService
  int32 delay_ms = 4;     // a pause, per message where it streams
  int64 remaining_us = 5; // the app's view of the call's time left
}

service Echo {
  rpc Unary(Msg) returns (Msg);
  rpc ServerStream(Msg) returns (stream Msg);
  rpc ClientStream(stream Msg) returns (Msg);
  rpc Bidi(stream Msg) returns (stream Msg);
}
"""

# 4 MiB messages need more than grpcio's 4 MiB default limit once the proto framing is counted
BIG = 16 << 20
OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]


def generate(out: Path) -> tuple[Any, Any]:
    """Compile the proto into ``out``; the messages module and the services module."""
    (out / "echo.proto").write_text(PROTO)
    code = protoc.main(
        ["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}", "echo.proto"]
    )
    assert code == 0, "protoc failed"
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")
    finally:
        sys.path.remove(str(out))


class GrpcApp:
    """The Echo service on 127.0.0.1, and what it saw."""

    def __init__(self, pb2: Any, pb2_grpc: Any) -> None:
        self.pb2 = pb2
        self.pb2_grpc = pb2_grpc
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = 0
        self.server: Any = None
        self.calls: dict[str, int] = {}  # per mode: calls seen
        self.cancelled = threading.Event()  # a call in mode "hang" was cancelled
        self.sent = 0  # ServerStream messages handed to grpc so far

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.run(self._start())

    async def _start(self) -> None:
        self.server = grpc.aio.server(options=OPTIONS)
        self.pb2_grpc.add_EchoServicer_to_server(_Servicer(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    def stop(self) -> None:
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Servicer:
    """Modes: "" echo; "flaky" UNAVAILABLE on the first call, then OK; "sleep" waits delay_ms;
    "hang" waits until cancelled; "fail" answers INTERNAL."""

    def __init__(self, app: GrpcApp) -> None:
        self.app = app
        self.Msg = app.pb2.Msg

    def _seen(self, mode: str) -> int:
        calls = self.app.calls
        calls[mode] = calls.get(mode, 0) + 1
        return calls[mode]

    async def Unary(self, req: Any, context: Any) -> Any:
        n = self._seen(req.mode)
        remaining = context.time_remaining()
        if req.mode == "flaky" and n == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        elif req.mode == "fail":
            await context.abort(grpc.StatusCode.INTERNAL, "broken")
        elif req.mode == "sleep":
            await asyncio.sleep(req.delay_ms / 1000)
        elif req.mode == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.app.cancelled.set()
                raise
        remaining_us = -1 if remaining is None else int(remaining * 1e6)
        return self.Msg(n=n, data=req.data, remaining_us=remaining_us)

    async def ServerStream(self, req: Any, context: Any) -> Any:
        self._seen(req.mode)
        for i in range(req.n):
            if req.delay_ms:
                await asyncio.sleep(req.delay_ms / 1000)
            await context.write(self.Msg(n=i, data=req.data))
            self.app.sent = i + 1

    async def ClientStream(self, requests: Any, context: Any) -> Any:
        count = size = 0
        async for req in requests:
            count += 1
            size += len(req.data)
        return self.Msg(n=count, data=b"%d" % size)

    async def Bidi(self, requests: Any, context: Any) -> Any:
        async for req in requests:
            await context.write(self.Msg(n=req.n, data=req.data))
