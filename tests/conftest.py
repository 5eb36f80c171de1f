"""Fixtures: one uvloop thread per session; upstreams and proxies started on 127.0.0.1 port 0."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.h2app import H2App
from support.loop import LoopThread
from support.process import free_port as support_free_port
from support.proxy import new_proxy
from support.upstream import Handler, Upstream, ok

from sidecar_proxy.buildinfo import build_info
from sidecar_proxy.server import ProxyServer


def pytest_sessionstart(session: pytest.Session) -> None:
    """An editable install's compiled modules sit in src/ and run instead of their .py files, so
    after an edit the tests would run the old code until `make build` compiles it again."""
    src = Path(__file__).resolve().parents[1] / "src"
    stale = []
    for name in build_info().compiled_modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not Path(spec.origin).is_relative_to(src):
            continue  # an installed wheel: built as a whole, nothing to compare
        compiled = Path(spec.origin)
        leaf = "__init__" if spec.submodule_search_locations is not None else name.split(".")[-1]
        source = compiled.with_name(f"{leaf}.py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            stale.append(name)
    if stale:
        pytest.exit(
            f"compiled modules older than their source: {', '.join(stale)}; run `make build`",
            returncode=2,
        )


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
def start_h2app(loop: LoopThread) -> Iterator[Callable[..., H2App]]:
    """Scriptable h2c apps (see support.h2app), stopped after the test."""
    started: list[H2App] = []

    def start(**options: object) -> H2App:
        app = H2App(**options)  # type: ignore[arg-type]
        loop.run(app.start())
        started.append(app)
        return app

    yield start
    for app in started:
        loop.run(app.stop())


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
