"""UPSTREAM_TLS: the proxy verifies the app's certificate and name, presents its own client
certificate when asked, and reuses pooled TLS connections like plain ones."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.certs import CA
from support.client import get, request
from support.loop import LoopThread
from support.scrape import value
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer


@pytest.fixture
def app_ca() -> CA:
    return CA("App CA")


def app_context(ca: CA, directory: Path, client_ca: CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = ca.issue("app", dns=("app.internal",), ips=()).write(directory, "app")
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cadata=client_ca.pem.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def start_app(loop: LoopThread) -> Iterator[Callable[[ssl.SSLContext], Upstream]]:
    """An app serving HTTPS with the given context; stopped after the test."""
    apps: list[Upstream] = []

    def start(ctx: ssl.SSLContext) -> Upstream:
        app = Upstream()
        loop.run(app.start(0, ctx))
        apps.append(app)
        return app

    yield start
    for app in apps:
        loop.run(app.stop())


def test_requests_reach_an_https_app_over_pooled_connections(
    start_app: Callable[[ssl.SSLContext], Upstream],
    start_proxy: Callable[..., ProxyServer],
    app_ca: CA,
    tmp_path: Path,
) -> None:
    app = start_app(app_context(app_ca, tmp_path))
    proxy = start_proxy(
        app.port,
        upstream_tls=True,
        upstream_ca_file=app_ca.write(tmp_path, "app-ca"),
        upstream_server_name="app.internal",
    )
    raw = b"GET /a HTTP/1.1\r\nHost: test\r\n\r\n" * 3
    assert [r.status for r in request(proxy.port, raw, count=3)] == [200] * 3
    assert get(proxy.port, "/b").status == 200
    assert app.connections == 1  # one handshake, then the pooled connection
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_upstream_connections_reused_total") == 3


@pytest.mark.parametrize(
    "case",
    [
        # the server name defaults to upstream_host, 127.0.0.1: not in the certificate
        ("app", ""),
        ("other", "app.internal"),
    ],
    ids=["another name", "an untrusted CA"],
)
def test_an_app_certificate_that_does_not_verify_is_refused(
    start_app: Callable[[ssl.SSLContext], Upstream],
    start_proxy: Callable[..., ProxyServer],
    app_ca: CA,
    tmp_path: Path,
    case: tuple[str, str],
) -> None:
    trusted, server_name = case
    app = start_app(app_context(app_ca, tmp_path))
    ca = app_ca if trusted == "app" else CA("Other")
    proxy = start_proxy(
        app.port,
        upstream_tls=True,
        upstream_ca_file=ca.write(tmp_path, "trusted-ca"),
        upstream_server_name=server_name,
        max_retries=0,
    )
    assert get(proxy.port).status == 502
    assert app.received == []


def test_a_client_certificate_is_presented_to_an_app_that_asks(
    start_app: Callable[[ssl.SSLContext], Upstream],
    start_proxy: Callable[..., ProxyServer],
    app_ca: CA,
    tmp_path: Path,
) -> None:
    sidecar_ca = CA("Sidecar CA")
    app = start_app(app_context(app_ca, tmp_path, client_ca=sidecar_ca))
    cert, key = sidecar_ca.issue("sidecar").write(tmp_path, "sidecar")
    common = {
        "upstream_tls": True,
        "upstream_ca_file": app_ca.write(tmp_path, "app-ca"),
        "upstream_server_name": "app.internal",
        "max_retries": 0,
    }
    without = start_proxy(app.port, **common)
    assert get(without.port).status == 502
    proxy = start_proxy(app.port, upstream_cert_file=cert, upstream_key_file=key, **common)
    assert get(proxy.port).status == 200
