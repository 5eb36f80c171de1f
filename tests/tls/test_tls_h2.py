"""HTTP/2 over TLS: ALPN picks h2 for clients that offer it, and the HTTP/2 leg then knows the
connection is HTTPS and who the client is."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import pytest
from support.certs import CA
from support.tls import Pki, client_context, tls_connect
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"


def h2_get(port: int, ctx: ssl.SSLContext, path: str = "/") -> tuple[dict[bytes, bytes], bytes]:
    """One GET over HTTP/2 on a new TLS connection: the response's fields and body."""
    sock = tls_connect(port, ctx)
    with sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":path", path.encode()),
                (b":authority", b"localhost"),
            ],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        fields: dict[bytes, bytes] = {}
        body = b""
        while True:
            data = sock.recv(65536)
            assert data, "closed before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    fields = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return fields, body
            sock.sendall(conn.data_to_send())


def test_alpn_h2_is_served_as_http2_over_tls(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki
) -> None:
    proxy = start_proxy(upstream.port, **pki.settings())
    ctx = client_context(pki.ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    fields, body = h2_get(proxy.port, ctx, "/over-tls")
    assert fields[b":status"] == b"200" and body == b"GET /over-tls"
    assert upstream.received[-1].header("X-Forwarded-Proto") == "https"


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is needed")
def test_curl_negotiates_h2(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki
) -> None:
    proxy = start_proxy(upstream.port, **pki.settings())
    ca = pki.ca.write(pki.directory)
    url = f"https://localhost:{proxy.port}/curl"
    got = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", ca, "-w", " %{http_version}", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert got.stdout == "GET /curl 2", got.stderr


def test_an_identity_not_allowed_is_answered_403_on_each_stream(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki
) -> None:
    client_ca = CA("Client CA")
    settings = pki.settings(
        tls_client_ca_file=client_ca.write(pki.directory, "client-ca"),
        tls_client_auth="require",
        tls_allowed_identities=frozenset({"spiffe://cluster.local/ns/pay/*"}),
    )
    proxy = start_proxy(upstream.port, **settings)
    client = client_ca.issue("checkout", uris=(CHECKOUT,))
    ctx = client_context(pki.ca, client, directory=pki.directory)
    ctx.set_alpn_protocols(["h2"])
    before = len(upstream.received)
    fields, _ = h2_get(proxy.port, ctx)
    assert fields[b":status"] == b"403"
    assert len(upstream.received) == before
