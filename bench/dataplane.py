"""Per-request Python cost of the data path, without sockets.

Both protocols are driven with fake transports: a request is fed to the client leg, the exchange
binds a pooled app connection, the response is fed to the app leg and written back. What is timed
is our code (parsing callbacks, header rules, policies, the record), not the kernel's, so the
figure is stable enough to compare changes on a noisy machine where throughput is not.

Run: ``python -m bench.dataplane``; ``--access-log`` includes the access-log line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import timeit
from typing import Any, cast

import uvloop

from sidecar_proxy.config import Settings
from sidecar_proxy.http.context import ProxyContext, new_pool
from sidecar_proxy.http.h1.app import H1AppConnection
from sidecar_proxy.http.h1.client import H1ClientConnection
from sidecar_proxy.lifecycle.health import HealthState
from sidecar_proxy.observe.accesslog import AccessLog
from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.recorder import Recorder

# What wrk sends, and what nginx answers in the small scenario.
REQUEST = b"GET /users/42 HTTP/1.1\r\nHost: example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 00:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class FakeTransport:
    """Accepts writes and flow-control calls and discards them."""

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def measure(access_log: bool, number: int, repeat: int) -> float:
    """Best-of-``repeat`` microseconds per request/response cycle."""
    loop = uvloop.new_event_loop()
    settings = dataclasses.replace(Settings(), access_log=access_log)
    metrics = Metrics()
    log = AccessLog(os.open(os.devnull, os.O_WRONLY)) if access_log else None
    recorder = Recorder(metrics, PathLabeler(settings.metrics_path_label_limit), log)
    pool = new_pool(loop, settings, metrics)
    ctx = ProxyContext(loop, settings, metrics, recorder, HealthState(), pool=pool)
    app = H1AppConnection(pool)
    app.connection_made(cast(Any, FakeTransport()))
    pool.release(app)
    client = H1ClientConnection(ctx)
    client.connection_made(cast(Any, FakeTransport()))

    def cycle() -> None:
        client.data_received(REQUEST)
        app.data_received(RESPONSE)

    try:
        return min(timeit.repeat(cycle, number=number, repeat=repeat)) / number * 1e6
    finally:
        if log is not None:
            log.close(timeout=1.0)
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    us = measure(args.access_log, args.number, args.repeat)
    label = "with" if args.access_log else "without"
    print(f"data path, {label} access log: {us:.2f} us per request (best of {args.repeat})")


if __name__ == "__main__":
    main()
