"""Mutual TLS on the proxy port: client certificates verified against TLS_CLIENT_CA_FILE, identities
allowed or answered 403, and X-Forwarded-Client-Cert for the app (an incoming one never passes)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import pytest
from support.certs import CA
from support.scrape import value, wait_until
from support.tls import Pki, client_context, exchange, refused, tls_get
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

ERRORS = "sidecar_tls_handshake_errors_total"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"


@pytest.fixture
def client_ca(pki: Pki) -> CA:
    return CA("Client CA")


def mtls(pki: Pki, client_ca: CA, **extra: object) -> dict[str, object]:
    return pki.settings(
        tls_client_ca_file=client_ca.write(pki.directory, "client-ca"),
        tls_client_auth="require",
        **extra,
    )


def test_required_client_certificate_missing_is_refused(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, client_ca: CA
) -> None:
    proxy = start_proxy(upstream.port, **mtls(pki, client_ca))
    assert refused(proxy.port, client_context(pki.ca))
    registry = proxy.metrics.registry
    assert wait_until(lambda: value(registry, ERRORS, reason="client_certificate") == 1)
    assert upstream.received == []


def test_a_client_certificate_from_another_ca_is_refused(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, client_ca: CA
) -> None:
    proxy = start_proxy(upstream.port, **mtls(pki, client_ca))
    stranger = CA("Other CA").issue("checkout", uris=(CHECKOUT,))
    ctx = client_context(pki.ca, stranger, directory=pki.directory)
    assert refused(proxy.port, ctx)
    registry = proxy.metrics.registry
    assert wait_until(lambda: value(registry, ERRORS, reason="client_certificate") == 1)
    assert upstream.received == []


def test_the_verified_identity_reaches_the_app_and_a_forged_one_does_not(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, client_ca: CA
) -> None:
    proxy = start_proxy(upstream.port, **mtls(pki, client_ca))
    client = client_ca.issue("checkout", uris=(CHECKOUT,), dns=("checkout.shop.svc",), ips=())
    ctx = client_context(pki.ca, client, directory=pki.directory)
    forged = "X-Forwarded-Client-Cert: By=x;Hash=00;URI=spiffe://cluster.local/ns/admin/sa/root\r\n"
    resp, sock = tls_get(proxy.port, ctx, headers=forged)
    sock.close()
    assert resp.status == 200
    sent = upstream.received[-1].header_all("X-Forwarded-Client-Cert")
    digest = hashlib.sha256(client.der).hexdigest()
    assert sent == [
        "By=spiffe://cluster.local/ns/shop/sa/proxy"
        f";Hash={digest}"
        ';Subject="CN=checkout,O=sidecar-proxy tests"'
        f";URI={CHECKOUT}"
        ";DNS=checkout.shop.svc"
    ]


def test_without_a_client_certificate_an_incoming_xfcc_is_still_removed(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki
) -> None:
    proxy = start_proxy(upstream.port, **pki.settings())
    forged = "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/admin/sa/root\r\n"
    resp, sock = tls_get(proxy.port, client_context(pki.ca), headers=forged)
    sock.close()
    assert resp.status == 200
    assert upstream.received[-1].header_all("X-Forwarded-Client-Cert") == []


@pytest.mark.parametrize(
    "allowed",
    [CHECKOUT, "spiffe://cluster.local/ns/shop/*", "checkout.shop.svc", "CHECKOUT.shop.*"],
)
def test_an_allowed_identity_is_let_in(
    start_proxy: Callable[..., ProxyServer],
    upstream: Upstream,
    pki: Pki,
    client_ca: CA,
    allowed: str,
) -> None:
    read_fd, write_fd = os.pipe()
    proxy = start_proxy(
        upstream.port,
        access_log_fd=write_fd,
        **mtls(pki, client_ca, tls_allowed_identities=frozenset({allowed.lower()})),
    )
    client = client_ca.issue("checkout", uris=(CHECKOUT,), dns=("checkout.shop.svc",))
    resp, sock = tls_get(proxy.port, client_context(pki.ca, client, directory=pki.directory))
    with sock:
        assert resp.status == 200
        assert exchange(sock).status == 200  # and stays in, keep-alive
    proxy.access_log.flush()  # type: ignore[union-attr]
    entry = json.loads(os.read(read_fd, 65536).splitlines()[0])
    assert entry["client_identity"] == CHECKOUT
    assert entry["tls_version"] == "TLSv1.3"
    os.close(read_fd)
    os.close(write_fd)


def test_a_refused_identity_gets_403_and_the_app_sees_nothing(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, client_ca: CA
) -> None:
    read_fd, write_fd = os.pipe()
    proxy = start_proxy(
        upstream.port,
        access_log_fd=write_fd,
        **mtls(
            pki, client_ca, tls_allowed_identities=frozenset({"spiffe://cluster.local/ns/pay/*"})
        ),
    )
    client = client_ca.issue("checkout", uris=(CHECKOUT,))
    resp, sock = tls_get(proxy.port, client_context(pki.ca, client, directory=pki.directory))
    sock.close()
    assert resp.status == 403
    assert resp.header("Connection") == "close"
    assert upstream.received == []
    proxy.access_log.flush()  # type: ignore[union-attr]
    entry = json.loads(os.read(read_fd, 65536).splitlines()[0])
    assert (entry["status"], entry["flags"], entry["client_identity"]) == (403, "CID", CHECKOUT)
    os.close(read_fd)
    os.close(write_fd)


def test_optional_client_auth_lets_in_clients_without_a_certificate(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, client_ca: CA
) -> None:
    settings = mtls(pki, client_ca)
    settings["tls_client_auth"] = "optional"
    proxy = start_proxy(upstream.port, **settings)
    resp, sock = tls_get(proxy.port, client_context(pki.ca))
    sock.close()
    assert resp.status == 200
    assert upstream.received[-1].header_all("X-Forwarded-Client-Cert") == []
    # ... but a certificate that is sent must verify.
    stranger = CA("Other CA").issue("checkout")
    assert refused(proxy.port, client_context(pki.ca, stranger, directory=pki.directory))


def test_optional_client_auth_with_allowed_identities_refuses_anonymous_clients(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, client_ca: CA
) -> None:
    settings = mtls(pki, client_ca, tls_allowed_identities=frozenset({CHECKOUT}))
    settings["tls_client_auth"] = "optional"
    proxy = start_proxy(upstream.port, **settings)
    resp, sock = tls_get(proxy.port, client_context(pki.ca))
    sock.close()
    assert resp.status == 403
