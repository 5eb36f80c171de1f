"""Load shedding: past max_in_flight the proxy answers 503 at once instead of queueing."""

from __future__ import annotations

from collections.abc import Callable

from support.calls import build, send_together
from support.misbehave import OK, always, slow
from support.scrape import value
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]


def test_requests_over_the_limit_are_shed_at_once(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app_time = 0.5
    up = start_upstream(always(slow(app_time, OK)))
    proxy = start_proxy(up.port, max_in_flight=2)

    outcomes = send_together(proxy.port, [build("GET", f"/slow/{i}") for i in range(5)])

    served = [o for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status == 503]
    assert len(served) == 2, [o.status for o in outcomes]
    assert len(shed) == 3, [o.status for o in outcomes]
    for o in shed:
        # At once: well before either admitted request could have freed its place.
        assert o.elapsed < app_time / 2, o.elapsed
        assert o.header("Retry-After") is not None
    for o in served:
        assert o.elapsed >= app_time * 0.9
    assert len(up.received) == 2  # the shed requests never reached the app
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_requests_rejected_total", reason="shed") == 3

    # The places are given back: the next request is served.
    after = send_together(proxy.port, [build("GET", "/after")])
    assert after[0].status == 200
