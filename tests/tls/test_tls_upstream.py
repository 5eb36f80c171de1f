"""UPSTREAM_TLS: the proxy verifies the app's certificate and name, presents its own client
certificate when asked, and reuses pooled TLS connections like plain ones."""

from __future__ import annotations

import ssl
from collections.abc import Callable
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


def tls_app(loop: LoopThread, ctx: ssl.SSLContext) -> Upstream:
    up = Upstream()
    loop.run(up.start(0, ctx))
    return up


def test_requests_reach_an_https_app_over_pooled_connections(
    loop: LoopThread, start_proxy: Callable[..., ProxyServer], app_ca: CA, tmp_path: Path
) -> None:
    app = tls_app(loop, app_context(app_ca, tmp_path))
    try:
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
    finally:
        loop.run(app.stop())


def test_an_app_certificate_for_another_name_is_refused(
    loop: LoopThread, start_proxy: Callable[..., ProxyServer], app_ca: CA, tmp_path: Path
) -> None:
    app = tls_app(loop, app_context(app_ca, tmp_path))
    try:
        proxy = start_proxy(
            app.port,
            upstream_tls=True,
            upstream_ca_file=app_ca.write(tmp_path, "app-ca"),
            max_retries=0,
        )  # the server name defaults to upstream_host, 127.0.0.1: not in the certificate
        assert get(proxy.port).status == 502
        assert app.received == []
    finally:
        loop.run(app.stop())


def test_an_app_certificate_from_an_untrusted_ca_is_refused(
    loop: LoopThread, start_proxy: Callable[..., ProxyServer], app_ca: CA, tmp_path: Path
) -> None:
    app = tls_app(loop, app_context(app_ca, tmp_path))
    try:
        proxy = start_proxy(
            app.port,
            upstream_tls=True,
            upstream_ca_file=CA("Other").write(tmp_path, "other-ca"),
            upstream_server_name="app.internal",
            max_retries=0,
        )
        assert get(proxy.port).status == 502
    finally:
        loop.run(app.stop())


def test_a_client_certificate_is_presented_to_an_app_that_asks(
    loop: LoopThread,
    start_proxy: Callable[..., ProxyServer],
    app_ca: CA,
    tmp_path: Path,
) -> None:
    sidecar_ca = CA("Sidecar CA")
    app = tls_app(loop, app_context(app_ca, tmp_path, client_ca=sidecar_ca))
    cert, key = sidecar_ca.issue("sidecar").write(tmp_path, "sidecar")
    common = {
        "upstream_tls": True,
        "upstream_ca_file": app_ca.write(tmp_path, "app-ca"),
        "upstream_server_name": "app.internal",
        "max_retries": 0,
    }
    try:
        without = start_proxy(app.port, **common)
        assert get(without.port).status == 502
        proxy = start_proxy(app.port, upstream_cert_file=cert, upstream_key_file=key, **common)
        assert get(proxy.port).status == 200
    finally:
        loop.run(app.stop())
