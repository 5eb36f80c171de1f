"""A POST without an Idempotency-Key reaches the app exactly once, whatever the app does.

The seed replayed every request from a buffered body, so a POST whose answer was lost (a reset, a
timeout) ran twice in the app: a double charge, a duplicate order. Here every retry condition is
switched on and retries are plentiful, so the only thing that can hold a retry back is the
proxy knowing the request is not safe to send again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.calls import build, send
from support.misbehave import Behaviour, always, hang, reset, reset_mid_body, status
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]

RETRY_ON_ALL = frozenset({"connect-failure", "reset", "timeout", "429", "500", "502", "503", "504"})


@dataclass
class Case:
    behaviour: Behaviour
    status: int  # what the client must get
    truncated: bool = False  # the app's head went out, its body cannot be completed
    settings: dict[str, Any] = field(default_factory=dict)


CASES = {
    "503-storm": Case(status(503), 503),
    "reset-before-headers": Case(reset, 502),
    # The app's 200 head and first bytes are already on their way to the client when the app
    # resets; a status can no longer be changed, so the proxy must close the client's
    # connection before the promised 1000 bytes, which is how HTTP/1.1 says "truncated".
    "reset-mid-body": Case(reset_mid_body, 200, truncated=True),
    "hang": Case(hang, 504, settings={"request_timeout": 0.5}),
    "hang-per-try-timeout": Case(
        hang, 504, settings={"request_timeout": 1.0, "per_try_timeout": 0.2}
    ),
}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_post_reaches_the_app_exactly_once(
    start_upstream: StartUpstream, start_proxy: StartProxy, case: Case, chunked: bool
) -> None:
    up = start_upstream(always(case.behaviour))
    proxy = start_proxy(
        up.port,
        max_retries=3,
        retry_on=RETRY_ON_ALL,
        retry_budget_min_per_second=1000,
        circuit_breaker_threshold=0,
        **case.settings,
    )
    body = b'{"charge": 100, "currency": "EUR"}'

    out = send(proxy.port, build("POST", "/charge", body, chunked=chunked))
    # The tests' backoff is at most 10 ms: a wrongly sent retry would reach the app well
    # within this.
    time.sleep(0.2)

    assert len(up.received) == 1, [r.method for r in up.received]
    assert up.received[0].body == body
    assert out.response is not None, "no response at all"
    assert out.status == case.status
    if case.truncated:
        assert not out.response.complete
        assert out.closed
    else:
        assert out.response.complete
    if case.status == 503:
        assert out.response.body == b"app says 503"  # the app's answer, not one of ours
