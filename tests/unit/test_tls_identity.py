"""Client identities and X-Forwarded-Client-Cert: pure functions over certificate facts."""

from __future__ import annotations

import hashlib
import ssl

import pytest
from support.certs import CA

from sidecar_proxy.tls.accept import (
    CLIENT_CERTIFICATE,
    CLOSED,
    NO_SHARED_CIPHER,
    OTHER,
    PEER_ALERT,
    PLAIN_HTTP,
    PROTOCOL_VERSION,
    TIMEOUT,
    failure_reason,
)
from sidecar_proxy.tls.identity import ClientCert, allowed, client_cert, xfcc

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"


def cert(uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> ClientCert:
    return ClientCert("ab" * 32, "CN=client", uris, dns)


def test_client_cert_reads_sans_subject_and_hash() -> None:
    issued = CA().issue("checkout", uris=(CHECKOUT,), dns=("a.shop", "b.shop"), ips=("10.0.0.1",))
    got = client_cert(issued.der)
    assert got.uris == (CHECKOUT,)
    assert got.dns == ("a.shop", "b.shop")  # IP SANs are not identities
    assert got.subject == "CN=checkout,O=sidecar-proxy tests"
    assert got.sha256 == hashlib.sha256(issued.der).hexdigest()
    assert got.identity == CHECKOUT


def test_identity_falls_back_to_dns_then_nothing() -> None:
    assert cert(dns=("a.shop",)).identity == "a.shop"
    assert cert().identity == ""


@pytest.mark.parametrize(
    ("patterns", "client", "ok"),
    [
        (frozenset(), None, True),  # no list: whoever the handshake let in
        (frozenset({CHECKOUT}), None, False),  # a list: a certificate is needed
        (frozenset({CHECKOUT}), cert(uris=(CHECKOUT,)), True),
        (frozenset({CHECKOUT}), cert(uris=(CHECKOUT + "x",)), False),  # exact means exact
        (frozenset({"spiffe://cluster.local/ns/shop/*"}), cert(uris=(CHECKOUT,)), True),
        (frozenset({"spiffe://cluster.local/ns/shop*"}), cert(uris=(CHECKOUT,)), True),
        (frozenset({"spiffe://cluster.local/ns/pay/*"}), cert(uris=(CHECKOUT,)), False),
        (frozenset({"spiffe://*"}), cert(dns=("spiffe",)), False),  # URI patterns: URI SANs
        (frozenset({"a.shop"}), cert(dns=("A.Shop",)), True),  # DNS: case-insensitive
        (frozenset({"a.shop"}), cert(uris=("a.shop",)), False),  # DNS patterns: DNS SANs
        (frozenset({"a.*"}), cert(dns=("b.shop", "a.shop")), True),  # any SAN may match
        (frozenset({"x", CHECKOUT}), cert(uris=(CHECKOUT,)), True),  # any pattern may match
    ],
)
def test_allowed(patterns: frozenset[str], client: ClientCert | None, ok: bool) -> None:
    assert allowed(patterns, client) is ok


def test_xfcc_in_envoys_format() -> None:
    c = ClientCert("ab" * 32, "CN=client,O=Acme\\, Inc", (CHECKOUT,), ("a.shop", "b.shop"))
    assert xfcc(("spiffe://cluster.local/ns/shop/sa/proxy",), c) == (
        "By=spiffe://cluster.local/ns/shop/sa/proxy"
        f";Hash={'ab' * 32}"
        ';Subject="CN=client,O=Acme\\\\, Inc"'
        f";URI={CHECKOUT}"
        ";DNS=a.shop;DNS=b.shop"
    )


def test_xfcc_without_a_local_uri_san_has_no_by() -> None:
    assert xfcc((), cert(dns=("a.shop",))).startswith("Hash=")


def test_xfcc_quotes_separators_and_encodes_what_could_break_the_header() -> None:
    value = xfcc((), ClientCert("00", 'CN="q"', ("urn:a;b=c",), ("x\r\nEvil: 1",)))
    assert ';Subject="CN=\\"q\\""' in value
    assert ';URI="urn:a;b=c"' in value
    assert ";DNS=x%0D%0AEvil: 1" in value
    assert "\r" not in value and "\n" not in value
    assert xfcc((), ClientCert("00", "CN=café", (), ())).endswith('Subject="CN=caf%C3%A9"')


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] something")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (None, CLOSED),
        (ConnectionResetError(), CLOSED),
        (ConnectionAbortedError("SSL handshake is taking longer than 1 seconds"), TIMEOUT),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), PROTOCOL_VERSION),
        (_ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), PROTOCOL_VERSION),
        (_ssl_error("NO_SHARED_CIPHER"), NO_SHARED_CIPHER),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), CLIENT_CERTIFICATE),
        (_ssl_error("CERTIFICATE_VERIFY_FAILED"), CLIENT_CERTIFICATE),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), PEER_ALERT),
        (_ssl_error("SSLV3_ALERT_BAD_CERTIFICATE"), PEER_ALERT),
        (_ssl_error("HTTP_REQUEST"), PLAIN_HTTP),
        (_ssl_error("WRONG_VERSION_NUMBER"), OTHER),
        (RuntimeError(), OTHER),
    ],
)
def test_handshake_failure_reasons(exc: BaseException | None, label: str) -> None:
    assert failure_reason(exc) == label
