"""Per-request Python cost of the data path, without sockets.

Both protocols are driven with fake transports: a request is fed to the client leg, the exchange
binds a pooled app connection, the response is fed to the app leg and written back. What is timed
is our code (parsing callbacks, header rules, policies, the record), not the kernel's, so the
figure is stable enough to compare changes on a noisy machine where throughput is not.

Run: ``python -m bench.dataplane``; ``--access-log`` includes the access-log line, and
``--hooks`` measures what no-op Python hooks add (``bench.run`` reports that too): the same
request with and without them, runs interleaved so that both see the same machine.

``--cycles N`` runs exactly N cycles, untimed, after a warm-up and with the collector frozen, for
counting instructions, which a loaded machine does not disturb: run it under ``valgrind
--tool=callgrind`` for N and for 3N cycles and divide the difference by 2N (see
docs/benchmarks.md, "Tuning the compiled build").
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import timeit
from collections.abc import Callable
from typing import Any, cast

import uvloop

from sidecar_proxy.config import Settings
from sidecar_proxy.hooks import AppResponse, Request
from sidecar_proxy.hooks.load import Hooks
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


def _no_request_change(request: Request) -> None:
    return None


def _no_response_change(request: Request, response: AppResponse) -> None:
    return None


NOOP_ON_REQUEST = Hooks("bench", "bench/dataplane.py", _no_request_change, None)
NOOP_BOTH = Hooks("bench", "bench/dataplane.py", _no_request_change, _no_response_change)


class Pipeline:
    """A client leg and a pooled app leg on fake transports, sharing one proxy context."""

    def __init__(self, access_log: bool, hooks: Hooks | None = None) -> None:
        self.loop = uvloop.new_event_loop()
        settings = dataclasses.replace(Settings(), access_log=access_log)
        metrics = Metrics()
        self.log = AccessLog(os.open(os.devnull, os.O_WRONLY)) if access_log else None
        recorder = Recorder(metrics, PathLabeler(settings.metrics_path_label_limit), self.log)
        pool = new_pool(self.loop, settings, metrics)
        ctx = ProxyContext(
            self.loop, settings, metrics, recorder, HealthState(), pool=pool, hooks=hooks
        )
        self.app = app = H1AppConnection(pool)
        app.connection_made(cast(Any, FakeTransport()))
        pool.release(app)
        self.client = client = H1ClientConnection(ctx)
        client.connection_made(cast(Any, FakeTransport()))

    def cycle(self) -> None:
        """One request in, its response out."""
        self.client.data_received(REQUEST)
        self.app.data_received(RESPONSE)

    def close(self) -> None:
        if self.log is not None:
            self.log.close(timeout=1.0)
        self.loop.close()


def _best(cycle: Callable[[], None], number: int) -> float:
    return min(timeit.repeat(cycle, number=number, repeat=1)) / number * 1e6


def measure(access_log: bool, number: int, repeat: int) -> float:
    """Best-of-``repeat`` microseconds per request/response cycle."""
    pipeline = Pipeline(access_log)
    try:
        return min(_best(pipeline.cycle, number) for _ in range(repeat))
    finally:
        pipeline.close()


def run_cycles(access_log: bool, cycles: int, warmup: int = 300) -> None:
    """``cycles`` untimed cycles after ``warmup`` ones, with the set-up's objects frozen out of
    the collector's way as the server does after start-up."""
    pipeline = Pipeline(access_log)
    try:
        for _ in range(warmup):
            pipeline.cycle()
        gc.collect()
        gc.freeze()
        for _ in range(cycles):
            pipeline.cycle()
    finally:
        pipeline.close()


def hook_cost(number: int = 20_000, repeat: int = 7) -> dict[str, float]:
    """Microseconds per request without hooks, with a no-op sync ``on_request``, and with both
    hooks no-op: best of ``repeat`` runs each, the three interleaved."""
    cases = {
        "no hooks": Pipeline(False),
        "no-op on_request": Pipeline(False, NOOP_ON_REQUEST),
        "no-op on_request + on_response": Pipeline(False, NOOP_BOTH),
    }
    best = dict.fromkeys(cases, float("inf"))
    try:
        for _ in range(repeat):
            for name, pipeline in cases.items():
                best[name] = min(best[name], _best(pipeline.cycle, number))
    finally:
        for pipeline in cases.values():
            pipeline.close()
    return best


def hook_report(results: dict[str, float]) -> str:
    base = results["no hooks"]
    lines = ["Python hooks, data path on fake transports (us per request, best of interleaved):"]
    lines += [
        f"  {name:<31} {us:6.2f} us" + (f"  (+{us - base:.2f})" if name != "no hooks" else "")
        for name, us in results.items()
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--hooks", action="store_true", help="measure no-op Python hooks")
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cycles", type=int, help="run N untimed cycles (for callgrind)")
    args = parser.parse_args()
    if args.cycles is not None:
        run_cycles(args.access_log, args.cycles)
        return
    if args.hooks:
        print(hook_report(hook_cost(args.number, args.repeat)))
        return
    us = measure(args.access_log, args.number, args.repeat)
    label = "with" if args.access_log else "without"
    print(f"data path, {label} access log: {us:.2f} us per request (best of {args.repeat})")


if __name__ == "__main__":
    main()
