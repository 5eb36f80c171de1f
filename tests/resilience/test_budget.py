"""The retry budget in a total outage: retries add at most ``ratio`` to the load on the app.

Without it, max_retries 3 against an app failing everything quadruples its traffic exactly when
it can least take it.
"""

from __future__ import annotations

from collections.abc import Callable

from support.calls import build, send
from support.misbehave import always, status
from support.scrape import value
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]


def test_retry_budget_caps_retries_in_a_failure_storm(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    requests, ratio = 100, 0.2
    up = start_upstream(always(status(503)))
    proxy = start_proxy(
        up.port,
        max_retries=3,
        retry_budget_ratio=ratio,
        retry_budget_min_per_second=0,  # no reserve: only the ratio pays for retries
        retry_budget_ttl=10.0,  # far longer than the test, so no credit expires during it
        circuit_breaker_threshold=0,  # the breaker would end the storm; the budget is tested
    )

    for i in range(requests):
        assert send(proxy.port, build("GET", f"/storm/{i}")).status == 503

    received = len(up.received)
    allowed = int(requests * ratio)
    assert received <= requests + allowed + 1, received
    # The budget spends what it earns: without any retries this would pass for a proxy that
    # never retries at all.
    assert received >= requests + allowed - 2, received
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_retries_total") == received - requests
    assert value(registry, "sidecar_retries_budget_exhausted_total") > 0
