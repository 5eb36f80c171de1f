"""An app that is not listening: 502 Bad Gateway (the seed said 503), retried for any method.

A refused connection carried no byte of the request, so even a POST may be tried again: it
cannot run twice in an app it never reached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from support.calls import build, send
from support.misbehave import OK
from support.scrape import value
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_refused_connection_is_502_after_every_retry(
    free_port: int, start_proxy: StartProxy, method: str
) -> None:
    proxy = start_proxy(free_port, max_retries=3, circuit_breaker_threshold=0)

    out = send(proxy.port, build(method, "/nobody-home", b"x=1" if method == "POST" else b""))

    assert out.status == 502, out.response
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_upstream_errors_total", type="connection_error") == 4
    assert value(registry, "sidecar_retries_total") == 3


def test_app_that_starts_listening_later_is_served(
    free_port: int, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(free_port, max_retries=1, circuit_breaker_threshold=0)
    assert send(proxy.port, build("GET", "/")).status == 502

    up = start_upstream(OK, port=free_port)
    out = send(proxy.port, build("GET", "/"))

    assert out.status == 200
    assert len(up.received) == 1


def test_refused_post_is_retried_until_the_app_listens_and_then_runs_once(
    free_port: int, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    started: list[Upstream] = []
    # Ten retries of up to 50 ms each (full jitter): they span about 250 ms on average, and
    # all ten finish within the 100 ms before the app starts only with probability ~3e-4.
    proxy = start_proxy(
        free_port,
        attempts_header=True,
        max_retries=10,
        retry_backoff=0.05,
        retry_max_backoff=0.05,
        circuit_breaker_threshold=0,
    )
    opener = threading.Timer(0.1, lambda: started.append(start_upstream(OK, port=free_port)))
    opener.start()
    try:
        body = b"payment=7"
        out = send(proxy.port, build("POST", "/pay", body))
    finally:
        opener.join(5)

    assert out.status == 200, out.response
    assert len(started) == 1
    attempts = out.header("X-Sidecar-Attempts")
    assert attempts is not None and int(attempts) > 1  # at least one refusal came first
    # and the POST ran once, whole, in the app that was finally there
    assert [r.body for r in started[0].received] == [body]
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_upstream_errors_total", type="connection_error") == (
        int(attempts) - 1
    )
