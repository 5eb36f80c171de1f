"""Deadlines: request_timeout bounds the whole request, retries included; per_try_timeout bounds
each attempt; no retry starts that cannot finish in time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from support.calls import build, send
from support.misbehave import OK, Behaviour, Script, always, hang, status
from support.scrape import value
from support.upstream import Received, Upstream

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]

MARGIN = 0.15


async def stall_in_head(req: Received, w: asyncio.StreamWriter) -> None:
    """Start a response head and stall in the middle of it."""
    w.write(b"HTTP/1.1 200 OK\r\nContent-Le")


@pytest.mark.parametrize(
    ("behaviour", "path"),
    [
        pytest.param(hang, "/hang", id="silent"),
        # Half a head is no head: the deadline for the head still applies.
        pytest.param(stall_in_head, "/half-head", id="half-head"),
    ],
)
def test_request_timeout_gives_504_on_time(
    start_upstream: StartUpstream, start_proxy: StartProxy, behaviour: Behaviour, path: str
) -> None:
    up = start_upstream(always(behaviour))
    proxy = start_proxy(up.port, request_timeout=0.5)

    out = send(proxy.port, build("GET", path))

    assert out.status == 504
    assert abs(out.elapsed - 0.5) <= MARGIN, out.elapsed


def test_per_try_timeout_retries_within_the_request_deadline(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(Script(hang, hang, then=OK))
    proxy = start_proxy(up.port, per_try_timeout=0.2, request_timeout=1.0, max_retries=3)

    out = send(proxy.port, build("GET", "/slow-start"))

    assert out.status == 200
    assert len(up.received) == 3
    # Two attempts cut at 0.2 s each, the third answered at once.
    assert 0.38 <= out.elapsed <= 0.65, out.elapsed


def test_per_try_timeouts_stop_at_the_request_deadline(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(always(hang))
    proxy = start_proxy(
        up.port,
        per_try_timeout=0.2,
        request_timeout=0.5,
        max_retries=10,
        retry_budget_min_per_second=1000,
        circuit_breaker_threshold=0,
    )

    out = send(proxy.port, build("GET", "/hang"))

    assert out.status == 504
    assert abs(out.elapsed - 0.5) <= MARGIN, out.elapsed
    assert len(up.received) == 3  # at 0, 0.2 and 0.4 s; no fourth past the deadline


def test_retry_after_beyond_the_deadline_returns_the_apps_503_at_once(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(always(status(503, [("Retry-After", "2")])))
    proxy = start_proxy(up.port, request_timeout=1.0, max_retries=3)

    out = send(proxy.port, build("GET", "/busy"))

    assert out.status == 503
    assert out.response is not None and out.response.body == b"app says 503"
    assert out.header("Retry-After") == "2"  # the app's advice reaches the client
    assert out.elapsed < 0.2, out.elapsed
    assert len(up.received) == 1


def test_retry_after_beyond_the_deadline_returns_the_apps_429_at_once(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(always(status(429, [("Retry-After", "5")])))
    retry_on = frozenset({"connect-failure", "reset", "timeout", "429", "502", "503", "504"})
    proxy = start_proxy(up.port, request_timeout=1.0, max_retries=3, retry_on=retry_on)

    out = send(proxy.port, build("GET", "/limited"))

    assert out.status == 429
    assert out.header("Retry-After") == "5"
    assert out.elapsed < 0.2, out.elapsed
    assert len(up.received) == 1


def test_retry_after_that_would_end_too_close_to_the_deadline_is_not_waited_for(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # Retry-After 1 s with 1 s of deadline: waiting would start the retry with no time left
    # for the app to answer, so the client gets the 503 now rather than a 504 in a second.
    up = start_upstream(always(status(503, [("Retry-After", "1")])))
    proxy = start_proxy(up.port, request_timeout=1.0, max_retries=3)

    out = send(proxy.port, build("GET", "/busy"))

    assert out.status == 503
    assert out.elapsed < 0.2, out.elapsed
    assert len(up.received) == 1


def test_backoff_that_would_outlast_the_deadline_is_not_waited_out(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # A backoff drawn from [0, 300 s] is longer than the 0.3 s left with probability 0.999.
    # The retry is then refused and the app's 503 returned at once; in the rare short draw the
    # retry is sent and its 503 comes back before the deadline. Either way the client gets the
    # app's answer, never a 504 from waiting out a retry that could not have gone in time.
    up = start_upstream(always(status(503)))
    proxy = start_proxy(
        up.port,
        request_timeout=0.3,
        max_retries=1,
        retry_backoff=300.0,
        retry_max_backoff=300.0,
        retry_budget_min_per_second=1000,
    )

    out = send(proxy.port, build("GET", "/busy"))

    assert out.status == 503
    assert out.response is not None and out.response.body == b"app says 503"
    assert out.elapsed < 0.3, out.elapsed
    assert len(up.received) <= 2


async def stall_in_body(req: Received, w: asyncio.StreamWriter) -> None:
    """After 0.2 s, send a head promising 100 bytes and 10 of them, then stall with the
    connection open. The delay puts the last byte well after the request started, so a stall
    limit counted from anything but the last byte shows."""
    await asyncio.sleep(0.2)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)


def test_app_stalling_inside_its_body_is_cut_after_request_timeout_of_silence(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # The head is out, so the status cannot change: the proxy closes the connection short of
    # the promised length, which is how the client learns the body is truncated. The last byte
    # came at 0.2 s; request_timeout of silence after it is 0.7 s.
    up = start_upstream(always(stall_in_body))
    proxy = start_proxy(up.port, request_timeout=0.5)

    out = send(proxy.port, build("GET", "/stalled-body"))

    assert out.response is not None
    assert out.status == 200
    assert out.response.body == b"x" * 10
    assert not out.response.complete
    assert out.closed
    assert abs(out.elapsed - 0.7) <= MARGIN, out.elapsed
    assert value(proxy.metrics.registry, "sidecar_upstream_errors_total", type="timeout") == 1
