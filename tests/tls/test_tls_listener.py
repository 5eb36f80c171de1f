"""The proxy port with TLS on: versions, ciphers, ALPN, plain HTTP, stalled handshakes, metrics
and the access log, over real sockets with Python's ssl as the client."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.client import closed_by_peer, connect, read_responses
from support.scrape import samples, value, wait_until
from support.tls import Pki, client_context, exchange, tls_connect, tls_get
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

ERRORS = "sidecar_tls_handshake_errors_total"


@pytest.fixture
def tls_proxy(start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki) -> ProxyServer:
    return start_proxy(upstream.port, **pki.settings())


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_tls12_and_tls13_clients_are_served(
    tls_proxy: ProxyServer, upstream: Upstream, pki: Pki, version: ssl.TLSVersion
) -> None:
    ctx = client_context(pki.ca, minimum=version, maximum=version)
    ctx.set_alpn_protocols(["http/1.1"])
    resp, sock = tls_get(tls_proxy.port, ctx)
    with sock:
        assert resp.status == 200
        assert sock.version() == version.name.replace("_", ".")
        assert sock.selected_alpn_protocol() == "http/1.1"  # h2 only for clients that offer it
        if version is ssl.TLSVersion.TLSv1_2:
            name, _, _ = sock.cipher()  # type: ignore[misc]
            assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
        assert sock.compression() is None
    # The app is told the client spoke HTTPS.
    assert upstream.received[-1].header("X-Forwarded-Proto") == "https"


def test_a_server_name_is_not_needed(tls_proxy: ProxyServer, pki: Pki) -> None:
    # Without SNI OpenSSL still runs the servername callback, which picks the current material.
    ctx = client_context(pki.ca)
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5)
    with ctx.wrap_socket(raw) as sock:
        assert exchange(sock).status == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"]
)
def test_tls10_and_tls11_clients_are_refused(
    tls_proxy: ProxyServer, pki: Pki, version: ssl.TLSVersion
) -> None:
    ctx = client_context(pki.ca, minimum=version, maximum=version)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what it is asked to
    with pytest.raises(ssl.SSLError):
        tls_get(tls_proxy.port, ctx)
    registry = tls_proxy.metrics.registry
    assert wait_until(lambda: value(registry, ERRORS, reason="protocol_version") == 1)


def test_tls13_minimum_refuses_tls12(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki
) -> None:
    proxy = start_proxy(upstream.port, **pki.settings(tls_min_version="1.3"))
    v12 = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        tls_get(proxy.port, client_context(pki.ca, minimum=v12, maximum=v12))
    resp, sock = tls_get(proxy.port, client_context(pki.ca))
    sock.close()
    assert resp.status == 200


def test_cbc_and_non_ecdhe_ciphers_are_not_offered(tls_proxy: ProxyServer, pki: Pki) -> None:
    v12 = ssl.TLSVersion.TLSv1_2
    ctx = client_context(pki.ca, minimum=v12, maximum=v12)
    ctx.set_ciphers("AES128-SHA:AES256-SHA256:ECDHE-ECDSA-AES128-SHA:DHE-RSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        tls_get(tls_proxy.port, ctx)
    registry = tls_proxy.metrics.registry
    assert wait_until(lambda: value(registry, ERRORS, reason="no_shared_cipher") == 1)


def test_plain_http_on_the_tls_port_gets_a_clear_400(tls_proxy: ProxyServer) -> None:
    with connect(tls_proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        responses, _ = read_responses(sock, 1)
        assert closed_by_peer(sock)
    assert [r.status for r in responses] == [400]
    assert b"https://" in responses[0].body
    registry = tls_proxy.metrics.registry
    assert wait_until(lambda: value(registry, ERRORS, reason="plain_http") == 1)


def test_a_client_that_does_not_trust_the_certificate(tls_proxy: ProxyServer) -> None:
    ctx = ssl.create_default_context()  # the system's CAs: not the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_get(tls_proxy.port, ctx)
    registry = tls_proxy.metrics.registry
    assert wait_until(lambda: value(registry, ERRORS, reason="peer_alert") == 1)


@pytest.mark.parametrize(
    "send", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"], ids=["silent", "partial"]
)
def test_a_handshake_that_never_finishes_times_out(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, send: bytes
) -> None:
    # Nothing at all, or the start of a ClientHello and then silence: both are cut at the
    # header timeout and counted.
    proxy = start_proxy(upstream.port, **pki.settings(client_header_timeout=0.3))
    with connect(proxy.port) as sock:
        sock.sendall(send)
        started = time.monotonic()
        sock.settimeout(3)
        assert sock.recv(100) == b""
        assert 0.2 < time.monotonic() - started < 1.5
    registry = proxy.metrics.registry
    assert wait_until(lambda: value(registry, ERRORS, reason="timeout") == 1)


def test_the_access_log_has_the_tls_version(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, tmp_path: Path
) -> None:
    read_fd, write_fd = os.pipe()
    proxy = start_proxy(upstream.port, access_log_fd=write_fd, **pki.settings())
    resp, sock = tls_get(proxy.port, client_context(pki.ca))
    sock.close()
    assert resp.status == 200
    proxy.access_log.flush()  # type: ignore[union-attr]
    os.set_blocking(read_fd, False)
    assert wait_until(lambda: _readable(read_fd))
    entry = json.loads(os.read(read_fd, 65536).splitlines()[0])
    assert entry["tls_version"] == "TLSv1.3"
    assert entry["client_identity"] == ""
    os.close(read_fd)
    os.close(write_fd)


def _readable(fd: int) -> bool:
    import select  # noqa: PLC0415

    return bool(select.select([fd], [], [], 0)[0])


def test_certificate_expiry_is_exported(tls_proxy: ProxyServer, pki: Pki) -> None:
    expiry = value(
        tls_proxy.metrics.registry,
        "sidecar_tls_certificate_expiry_timestamp_seconds",
        file=pki.cert_file,
    )
    assert expiry == pki.server.cert.not_valid_after_utc.timestamp()


def test_the_admin_port_stays_plain_http(tls_proxy: ProxyServer) -> None:
    with connect(tls_proxy.admin_port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert responses[0].status == 200


def test_a_connection_closed_mid_handshake_counts_and_one_closed_at_once_does_not(
    tls_proxy: ProxyServer,
) -> None:
    registry = tls_proxy.metrics.registry
    with connect(tls_proxy.port):
        pass  # a TCP health check: connect, close
    with connect(tls_proxy.port) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello begins
    assert wait_until(lambda: value(registry, ERRORS, reason="closed") >= 1)
    time.sleep(0.2)  # room for a wrongly counted first connection to show
    assert sum(samples(registry, ERRORS).values()) == 1


def test_requests_refused_over_tls_are_answered_and_deadlines_keep_working(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki
) -> None:
    # A refused request closes the connection; over TLS that cannot be a TCP half-close, so it
    # must not take the path that plain connections use to linger.
    proxy = start_proxy(upstream.port, **pki.settings(client_header_timeout=0.3))
    ctx = client_context(pki.ca)
    with tls_connect(proxy.port, ctx) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        responses, _ = read_responses(sock, 1)
        assert [r.status for r in responses] == [400]
    with tls_connect(proxy.port, ctx) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and then nothing
        responses, _ = read_responses(sock, 1, timeout=3)
        assert [r.status for r in responses] == [408]
        assert closed_by_peer(sock)
    with tls_connect(proxy.port, ctx) as sock:
        assert exchange(sock).status == 200
