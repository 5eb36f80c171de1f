"""The circuit breaker against a real failing app, and the state gauge a scrape sees meanwhile.

Threshold 3, no retries: every request is one attempt, so three failing requests are three
consecutive failures. ``sidecar_circuit_breaker_state`` reads 0 closed, 1 open, 2 half-open; the
seed's gauge read 0 the whole time the breaker was open. The open period, the probes and the
breaker's refusals are timed on the fake clock in tests/dataplane/test_attempts.py; these keep
what needs real sockets (a client's reset or close seen by the kernel, a real app's failures).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.calls import build, send
from support.client import connect
from support.misbehave import OK, Behaviour, Script, always, hang, reset, status
from support.scrape import total, value, wait_until
from support.upstream import Upstream

from sidecar_proxy.policy import BreakerState
from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]

THRESHOLD = 3
OPEN_FOR = 0.5
BREAKER: dict[str, Any] = {
    "circuit_breaker_threshold": THRESHOLD,
    "circuit_breaker_timeout": OPEN_FOR,
    "circuit_breaker_half_open_requests": 1,
    "max_retries": 0,
}
STATE = "sidecar_circuit_breaker_state"


def gauge(proxy: ProxyServer) -> float:
    return value(proxy.metrics.registry, STATE)


def has_received(up: Upstream, n: int) -> Callable[[], bool]:
    return lambda: len(up.received) == n


@pytest.fixture
def access_log(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A file for the access log. Request this fixture before ``start_proxy``, so it is torn
    down after the proxy: the log's writer thread must not outlive the fd (a reused fd number
    would send its lines into some other file)."""
    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    yield fd, path
    os.close(fd)


@pytest.mark.parametrize("abort", [True, False], ids=["reset", "close"])
def test_client_hang_up_is_499_and_never_trips_the_breaker(
    access_log: tuple[int, Path],
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    abort: bool,
) -> None:
    fd, log_path = access_log
    app = Script(then=hang)
    up = start_upstream(app)
    proxy = start_proxy(up.port, access_log_fd=fd, request_timeout=5.0, **BREAKER)
    registry = proxy.metrics.registry

    hang_ups = THRESHOLD + 1
    for i in range(hang_ups):
        sock = connect(proxy.port)
        sock.sendall(build("GET", f"/gone/{i}"))
        assert wait_until(has_received(up, i + 1)), "the request never reached the app"
        # The client gives up while the app is still working on it: with a RST, as a killed
        # client does, or with an orderly close, as a client that timed out does.
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    assert wait_until(
        lambda: total(registry, "sidecar_requests_total", status="499") >= hang_ups
    ), "the hang-ups were not recorded as 499"
    assert total(registry, "sidecar_requests_total", status="499") == hang_ups
    assert proxy.ctx is not None and proxy.ctx.breaker.state is BreakerState.CLOSED
    assert gauge(proxy) == 0
    assert value(registry, "sidecar_circuit_breaker_transitions_total", to="open") == 0
    assert total(registry, "sidecar_upstream_errors_total") == 0

    def logged() -> list[dict[str, object]]:
        return [orjson.loads(line) for line in log_path.read_bytes().splitlines()]

    assert wait_until(lambda: len(logged()) >= hang_ups)
    assert [e["status"] for e in logged()] == [499] * hang_ups
    assert all("DC" in str(e["flags"]).split(",") for e in logged())

    # Still closed: a request goes through to the app (now answering) rather than a 503.
    app.then = OK
    out = send(proxy.port, build("GET", "/still-closed"))
    assert out.status == 200


def test_429_is_not_a_breaker_failure(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # The default failure statuses are 5xx: an app rate-limiting a client is healthy.
    up = start_upstream(always(status(429)))
    proxy = start_proxy(up.port, **BREAKER)

    statuses = [send(proxy.port, build("GET", f"/limited/{i}")).status for i in range(5)]

    assert statuses == [429] * 5
    assert len(up.received) == 5
    assert gauge(proxy) == 0


@pytest.mark.parametrize(
    ("behaviour", "expected", "body"),
    [(status(503), 503, b"app says 503"), (reset, 502, None)],
    ids=["503", "reset"],
)
def test_retry_the_breaker_would_refuse_is_not_made(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    behaviour: Behaviour,
    expected: int,
    body: bytes | None,
) -> None:
    # One GET with retries to spare fails THRESHOLD times in a row: its last failure opens the
    # breaker. The retry it would make next cannot go, so the client must get what the app
    # did (its 503, or 502 for the reset), exactly as when retries run out or the budget
    # refuses, and not a rejection that claims the app was never contacted.
    up = start_upstream(always(behaviour))
    proxy = start_proxy(
        up.port,
        **{**BREAKER, "max_retries": THRESHOLD + 2, "circuit_breaker_timeout": 5.0},
        retry_budget_min_per_second=1000,
    )

    out = send(proxy.port, build("GET", "/failing"))

    assert len(up.received) == THRESHOLD
    assert gauge(proxy) == 1
    assert out.status == expected
    if body is not None:
        assert out.response is not None and out.response.body == body
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_requests_rejected_total", reason="circuit_open") == 0
    assert value(registry, "sidecar_upstream_errors_total", type="circuit_open") == 0
