"""Fixtures: one uvloop thread per session; upstreams and proxies started on 127.0.0.1 port 0."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.loop import LoopThread
from support.process import free_port as support_free_port
from support.upstream import Handler, Upstream, ok

from sidecar_proxy.config import Settings
from sidecar_proxy.server import ProxyServer

# Tests run the proxy with small timeouts; anything a test needs differently it passes itself.
TEST_SETTINGS: dict[str, Any] = {
    "listen_host": "127.0.0.1",
    "listen_port": 0,
    "metrics_host": "127.0.0.1",
    "metrics_port": 0,
    "upstream_host": "127.0.0.1",
    "request_timeout": 5.0,
    "retry_backoff": 0.001,
    "retry_max_backoff": 0.01,
    "drain_delay": 0.0,
    "access_log": False,
}


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def start_upstream(loop: LoopThread) -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def start(handler: Handler = ok, port: int = 0) -> Upstream:
        up = Upstream(handler)
        loop.run(up.start(port))
        started.append(up)
        return up

    yield start
    for up in started:
        loop.run(up.stop())


@pytest.fixture
def start_proxy(loop: LoopThread) -> Iterator[Callable[..., ProxyServer]]:
    started: list[ProxyServer] = []

    def start(
        upstream_port: int, access_log_fd: int | None = None, **overrides: Any
    ) -> ProxyServer:
        fields = {**TEST_SETTINGS, "upstream_port": upstream_port, **overrides}
        if access_log_fd is not None:
            fields["access_log"] = True
        settings = dataclasses.replace(Settings(), **fields)
        server = ProxyServer(settings, access_log_fd=access_log_fd or 1)
        loop.run(server.start())
        started.append(server)
        return server

    yield start
    for server in started:
        loop.run(server.close())


@pytest.fixture
def upstream(start_upstream: Callable[..., Upstream]) -> Upstream:
    return start_upstream()


@pytest.fixture
def proxy(start_proxy: Callable[..., ProxyServer], upstream: Upstream) -> ProxyServer:
    return start_proxy(upstream.port)


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    return support_free_port()
