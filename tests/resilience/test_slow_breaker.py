"""The slow-call rule against a real app that answers, but slowly.

A slow call is one over 0.1 s to the response head; the breaker judges the last four calls and
opens when half of them were slow. The slow app takes 0.3 s and the fast one answers at once, so
uvloop's millisecond clock and a busy machine leave a wide margin either side of 0.1 s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.calls import build, send
from support.misbehave import OK, Script, slow
from support.scrape import value
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]

OPEN_FOR = 0.5
WINDOW = 4
SLOW_CALLS: dict[str, Any] = {
    "circuit_breaker_threshold": 3,
    "circuit_breaker_timeout": OPEN_FOR,
    "circuit_breaker_half_open_requests": 1,
    "circuit_breaker_slow_call_duration": 0.1,
    "circuit_breaker_slow_call_rate": 0.5,
    "circuit_breaker_window": WINDOW,
    "max_retries": 0,
}
SLOW_APP = slow(0.3, OK)
STATE = "sidecar_circuit_breaker_state"
OPENED = "sidecar_circuit_breaker_opened_total"


def breaker_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sidecar_proxy.breaker"]


def test_a_slow_app_opens_the_breaker_for_slow_calls(
    start_upstream: StartUpstream, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar_proxy.breaker")
    up = start_upstream(Script(then=SLOW_APP))
    proxy = start_proxy(up.port, **SLOW_CALLS)
    registry = proxy.metrics.registry

    # Every slow call is answered: the rule judges calls, it does not cut them short. (The app's
    # 0.3 s timer may fire a millisecond early: uvloop rounds timers to milliseconds.)
    for i in range(WINDOW):
        out = send(proxy.port, build("GET", f"/slow/{i}"))
        assert out.status == 200 and out.elapsed >= 0.25
    assert value(registry, STATE) == 1
    assert value(registry, OPENED, reason="slow_calls") == 1
    assert value(registry, OPENED, reason="failures") == 0

    out = send(proxy.port, build("GET", "/refused"))
    assert out.status == 503 and out.elapsed < 0.3  # not held for the app's delay
    assert out.header("Retry-After") is not None
    assert len(up.received) == WINDOW  # the app never saw the refused request

    [record] = breaker_logs(caplog)
    assert record.getMessage() == "circuit breaker open" and record.levelno == logging.WARNING
    assert record.__dict__["reason"] == "slow_calls"


def test_a_fast_app_never_opens_it(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = start_upstream(Script(then=OK))
    proxy = start_proxy(up.port, **SLOW_CALLS)
    for i in range(3 * WINDOW):
        assert send(proxy.port, build("GET", f"/fast/{i}")).status == 200
    assert value(proxy.metrics.registry, STATE) == 0
    assert len(up.received) == 3 * WINDOW


def test_a_slow_probe_reopens_and_a_fast_one_closes(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app = Script(then=SLOW_APP)
    up = start_upstream(app)
    proxy = start_proxy(up.port, **SLOW_CALLS)
    registry = proxy.metrics.registry
    for i in range(WINDOW):
        send(proxy.port, build("GET", f"/slow/{i}"))
    opened = time.monotonic()
    assert value(registry, STATE) == 1

    # The probe still finds the app slow: it gets the app's answer, and the breaker reopens.
    time.sleep(max(0.0, opened + OPEN_FOR + 0.05 - time.monotonic()))
    out = send(proxy.port, build("GET", "/probe"))
    assert out.status == 200
    reopened = time.monotonic()
    assert value(registry, STATE) == 1
    assert value(registry, OPENED, reason="slow_calls") == 2
    assert send(proxy.port, build("GET", "/refused")).status == 503

    # The app recovers: the next probe is fast and closes it.
    app.then = OK
    time.sleep(max(0.0, reopened + OPEN_FOR + 0.05 - time.monotonic()))
    assert send(proxy.port, build("GET", "/probe")).status == 200
    assert value(registry, STATE) == 0
    assert send(proxy.port, build("GET", "/after")).status == 200
    assert len(up.received) == WINDOW + 3
