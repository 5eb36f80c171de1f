"""Fixtures: one uvloop thread per session; upstreams and proxies started on 127.0.0.1 port 0."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.loop import LoopThread
from support.process import free_port as support_free_port
from support.proxy import new_proxy
from support.upstream import Handler, Upstream, ok

from sidecar_proxy.server import ProxyServer


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
        server = new_proxy(loop, upstream_port, access_log_fd, **overrides)
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
def log_pipe() -> Iterator[tuple[int, int]]:
    """A pipe for an access log: (non-blocking read end, write end)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    return support_free_port()
