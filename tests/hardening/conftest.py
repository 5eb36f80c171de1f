"""Fixtures the hardening modules share. Each module starts its own ``pair`` (an app and a proxy
in front of it, configured for what the module tests); these name the pair's parts, warm it up,
and watch the event loop for exceptions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.client import get
from support.hardening import AppMark, TrackingUpstream, loop_errors, mark
from support.loop import LoopThread

from sidecar_proxy.server import ProxyServer


@pytest.fixture
def no_crash(loop: LoopThread) -> Iterator[None]:
    """An exception escaping one of the proxy's callbacks lands in the event loop's handler, not
    in the test: any such exception fails the test. Modules ask for it with ``usefixtures``."""
    with loop_errors(loop) as errors:
        yield
    assert errors == [], errors


@pytest.fixture
def app(pair: tuple[TrackingUpstream, ProxyServer]) -> TrackingUpstream:
    return pair[0]


@pytest.fixture
def sidecar(pair: tuple[TrackingUpstream, ProxyServer]) -> ProxyServer:
    return pair[1]


@pytest.fixture
def warm(sidecar: ProxyServer, app: TrackingUpstream) -> AppMark:
    """One request through first, so the proxy holds an idle connection to the app and a wrongly
    forwarded request would reach the app at once; returns what had reached the app by then."""
    assert get(sidecar.port).status == 200
    return mark(app)
