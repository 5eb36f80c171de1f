"""Retries against a real misbehaving app: what is retried, how often, and what the app sees.

Counts are taken at the app (every request that reached it is recorded), never from the proxy's
own view of what it sent. How long a retry waits (backoff, Retry-After, the deadline) is tested
on the fake clock in tests/dataplane/test_attempts.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.calls import build, send
from support.misbehave import always, flaky, reset, status
from support.scrape import value
from support.upstream import Upstream

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
