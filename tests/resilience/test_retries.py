"""Retries against a real misbehaving app: what is retried, how often, and what the app sees.

Counts are taken at the app (every request that reached it is recorded), never from the proxy's
own view of what it sent.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from email.utils import formatdate

import pytest
from support.calls import build, send
from support.client import connect
from support.misbehave import OK, Script, always, flaky, reset, status
from support.scrape import total, value, wait_until
from support.upstream import Received, Upstream

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]

# Every retryable condition on, so that only replay safety, the budget or the deadline can be
# what stops a retry in these tests.
RETRY_ON_ALL = frozenset({"connect-failure", "reset", "timeout", "429", "500", "502", "503", "504"})
# Far more credit than these tests spend; the budget itself is tested in test_budget.py.
AMPLE_BUDGET = {"retry_budget_min_per_second": 1000}


def test_get_retried_until_the_app_answers(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(flaky(2))
    proxy = start_proxy(up.port, attempts_header=True, max_retries=3)

    out = send(proxy.port, build("GET", "/flaky"))

    assert out.status == 200
    assert out.response is not None and out.response.body == b"ok"
    assert len(up.received) == 3
    assert out.header("X-Sidecar-Attempts") == "3"
    assert value(proxy.metrics.registry, "sidecar_retries_total") == 2
    assert value(proxy.metrics.registry, "sidecar_upstream_errors_total", type="5xx_error") == 2


def test_get_reset_before_headers_is_retried_then_502(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(always(reset))
    proxy = start_proxy(up.port, max_retries=2, circuit_breaker_threshold=0)

    out = send(proxy.port, build("GET", "/reset"))

    assert out.status == 502
    assert len(up.received) == 3  # 1 + max_retries: a GET may be sent again
    assert value(proxy.metrics.registry, "sidecar_upstream_errors_total", type="reset") == 3


def test_get_retries_stop_at_max_retries(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(always(status(503)))
    proxy = start_proxy(up.port, max_retries=2, circuit_breaker_threshold=0, **AMPLE_BUDGET)

    out = send(proxy.port, build("GET", "/storm"))

    # The last attempt's answer is the app's own 503, passed on as it is.
    assert out.status == 503
    assert out.response is not None and out.response.body == b"app says 503"
    assert len(up.received) == 3


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_post_with_idempotency_key_is_retried_with_its_body_intact(
    start_upstream: StartUpstream, start_proxy: StartProxy, chunked: bool
) -> None:
    up = start_upstream(flaky(2))
    proxy = start_proxy(up.port, attempts_header=True, max_retries=3, retry_on=RETRY_ON_ALL)
    body = b"order=42&" + bytes(range(256)) * 4

    out = send(
        proxy.port,
        build("POST", "/orders", body, "Idempotency-Key: k-42\r\n", chunked=chunked),
    )

    assert out.status == 200
    assert out.header("X-Sidecar-Attempts") == "3"
    assert [r.method for r in up.received] == ["POST"] * 3
    for received in up.received:
        assert received.body == body
        assert received.header("Idempotency-Key") == "k-42"


def test_post_with_key_but_body_over_buffer_limit_is_streamed_once(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = start_upstream(flaky(1))
    proxy = start_proxy(
        up.port, max_retries=3, retry_on=RETRY_ON_ALL, retry_buffer_limit=1024, **AMPLE_BUDGET
    )
    body = bytes(range(256)) * 16  # 4 KiB, four times the replay buffer

    out = send(proxy.port, build("POST", "/upload", body, "Idempotency-Key: k-big\r\n"))
    time.sleep(0.2)  # a retry, if one were wrongly sent, would land well within this

    assert out.status == 503  # the app's answer to the only attempt
    assert out.response is not None and out.response.body == b"app says 503"
    assert len(up.received) == 1
    assert up.received[0].body == body


def test_backoff_has_full_jitter_within_its_ceiling(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    base, cap, retries, requests = 0.05, 0.1, 3, 6
    app = Script(then=status(503))
    up = start_upstream(app)
    proxy = start_proxy(
        up.port,
        max_retries=retries,
        retry_backoff=base,
        retry_max_backoff=cap,
        circuit_breaker_threshold=0,
        **AMPLE_BUDGET,
    )

    gaps: list[tuple[int, float]] = []  # (retry number, seconds since the previous attempt)
    for _ in range(requests):
        before = len(app.arrivals)
        assert send(proxy.port, build("GET", "/storm")).status == 503
        arrivals = app.arrivals[before:]
        assert len(arrivals) == 1 + retries
        gaps += [(i + 1, b - a) for i, (a, b) in enumerate(itertools.pairwise(arrivals))]

    # Each gap is the backoff plus a loopback reconnect and scheduling, so it may overshoot its
    # ceiling by that much (more on a loaded 2-core CI machine) but never undershoot zero. An
    # uncapped backoff still fails: the third retry would wait up to 0.2 s, the seed's 0.4 s.
    slack = 0.08
    for retry, gap in gaps:
        ceiling = min(cap, base * 2 ** (retry - 1))
        assert 0.0 <= gap <= ceiling + slack, (retry, gap)
    spread = [gap for _, gap in gaps]
    # A fixed backoff (the seed's base * 2**attempt) gives identical gaps per retry number.
    assert max(spread) - min(spread) > 0.01, spread
    # Full jitter draws from the whole [0, ceiling], not its upper half (equal jitter): among
    # 18 draws at least one falls in the lower half, except with probability 2**-18.
    assert any(gap < min(cap, base * 2 ** (r - 1)) / 2 for r, gap in gaps), gaps


def test_retry_after_seconds_is_honoured(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app = Script(status(503, [("Retry-After", "1")]), then=OK)
    up = start_upstream(app)
    proxy = start_proxy(up.port, max_retries=3, request_timeout=5.0)

    out = send(proxy.port, build("GET", "/busy"))

    assert out.status == 200
    assert len(app.arrivals) == 2
    # The app's wait wins over the tiny backoff the tests configure.
    assert 0.95 <= app.gaps()[0] <= 1.5, app.gaps()


def test_retry_after_http_date_on_429_is_honoured(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    async def too_many(req: Received, w: asyncio.StreamWriter) -> None:
        # An HTTP-date two seconds ahead, formatted at the moment of answering. The date has a
        # resolution of one second, so the wait it asks for is between 1 and 2 seconds.
        when = formatdate(time.time() + 2, usegmt=True)
        await status(429, [("Retry-After", when)])(req, w)

    app = Script(too_many, then=OK)
    up = start_upstream(app)
    proxy = start_proxy(up.port, max_retries=1, retry_on=RETRY_ON_ALL, request_timeout=5.0)

    out = send(proxy.port, build("GET", "/limited"))

    assert out.status == 200
    assert len(app.arrivals) == 2
    assert 0.9 <= app.gaps()[0] <= 2.3, app.gaps()


def test_no_retry_is_sent_for_a_client_that_left(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    # The app asks for a second's wait; the client leaves during it. The retry would be work
    # for nobody.
    app = Script(status(503, [("Retry-After", "1")]), then=OK)
    up = start_upstream(app)
    proxy = start_proxy(up.port, max_retries=3, request_timeout=5.0)

    sock = connect(proxy.port)
    sock.sendall(build("GET", "/busy"))
    assert wait_until(lambda: len(up.received) == 1)
    time.sleep(0.1)  # the 503 is in, the wait has begun
    sock.close()
    registry = proxy.metrics.registry
    assert wait_until(lambda: total(registry, "sidecar_requests_total", status="499") == 1)
    time.sleep(1.2)  # past the moment the retry was due

    assert len(up.received) == 1
