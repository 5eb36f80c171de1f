"""Header rules: hop-by-hop fields, Connection-nominated fields, Host and request-id validation,
and request ids made by the proxy."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_proxy.http.fields import REQUEST_FIELDS, RESPONSE_FIELDS
from sidecar_proxy.http.headers import (
    HOP_BY_HOP,
    MAX_REQUEST_ID_LENGTH,
    end_to_end,
    list_tokens,
    new_request_id,
    valid_host,
    valid_request_id,
    without_h2c,
)

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def fields(*pairs: tuple[bytes, bytes]) -> tuple[list[bytes], list[bytes]]:
    """Lines and lower-cased names, as the legs keep forwardable fields."""
    return [n + b": " + v + b"\r\n" for n, v in pairs], [n.lower() for n, _ in pairs]


def test_hop_by_hop_fields_are_rfc_9110s_and_the_legacy_ones() -> None:
    # RFC 9110 §7.6.1, plus the names Go's ReverseProxy also strips (RFC 2616 §13.5.1)
    assert {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding"} <= (
        HOP_BY_HOP
    )
    assert {b"upgrade", b"trailer", b"proxy-authenticate", b"proxy-authorization"} <= HOP_BY_HOP
    # framing is decided per leg, not dropped as hop-by-hop
    assert b"content-length" not in HOP_BY_HOP
    # both legs drop every one of them while parsing
    assert all(name in REQUEST_FIELDS and name in RESPONSE_FIELDS for name in HOP_BY_HOP)


@pytest.mark.parametrize(
    ("values", "tokens"),
    [
        ([], []),
        ([b"close"], [b"close"]),
        ([b"Keep-Alive, Upgrade"], [b"keep-alive", b"upgrade"]),
        ([b"a,,  b ,", b" C"], [b"a", b"b", b"c"]),  # empty members are not tokens
        ([b"gzip", b"chunked"], [b"gzip", b"chunked"]),  # order across occurrences is kept
    ],
)
def test_list_tokens(values: list[bytes], tokens: list[bytes]) -> None:
    assert list_tokens(values) == tokens


@pytest.mark.parametrize(
    ("offer", "kept"),
    [
        (b"h2c", b""),
        (b"H2C", b""),
        (b"websocket, h2c", b"websocket"),
        (b"h2c,WebSocket/13 , ", b"WebSocket/13"),  # kept as written
        (b"h2c/1, h2", b"h2"),
        (b"websocket", b"websocket"),
        (b"h2cx", b"h2cx"),  # another protocol's name
    ],
)
def test_an_upgrade_to_h2c_is_never_offered_on(offer: bytes, kept: bytes) -> None:
    assert without_h2c(offer) == kept


def test_end_to_end_returns_the_same_list_when_nothing_is_nominated() -> None:
    lines, names = fields((b"X-A", b"1"), (b"Close", b"2"))
    assert end_to_end(lines, names, None) is lines
    assert end_to_end(lines, names, []) is lines
    # options that name no field: nothing to drop, and no copy made
    assert end_to_end(lines, names, [b"close, keep-alive"]) is lines


def test_end_to_end_drops_the_fields_connection_nominates() -> None:
    lines, names = fields((b"X-Hop", b"secret"), (b"X-Keep", b"yes"), (b"x-hop", b"again"))
    assert end_to_end(lines, names, [b"keep-alive, X-HOP"]) == [b"X-Keep: yes\r\n"]


def test_connection_cannot_take_host_away() -> None:
    # RFC 9112 §3.2: every HTTP/1.1 request has a Host; "Connection: host" must not remove it
    lines, names = fields((b"Host", b"svc"), (b"X-A", b"1"))
    assert end_to_end(lines, names, [b"host, x-a"]) == [b"Host: svc\r\n"]


@pytest.mark.parametrize(
    "host",
    [b"svc", b"example.com:8080", b"127.0.0.1", b"[::1]:80", b"xn--bcher-kva.example", b""],
)
def test_valid_hosts(host: bytes) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    [b"a b", b"a/b", b"user@host", b"a:1:2", b"a:port", b"[::1", b"host\r\nX: y", b"\xc3\xa9.fr"],
)
def test_invalid_hosts_are_refused(host: bytes) -> None:
    # RFC 9110 §7.2: a Host that is not a valid authority is answered 400
    assert not valid_host(host)


def test_request_ids_are_short_visible_ascii() -> None:
    assert valid_request_id(b"abc-123")
    assert valid_request_id(b"x" * MAX_REQUEST_ID_LENGTH)
    assert not valid_request_id(b"x" * (MAX_REQUEST_ID_LENGTH + 1))
    assert not valid_request_id(b"")


@given(st.binary(min_size=1, max_size=MAX_REQUEST_ID_LENGTH))
def test_a_request_id_that_could_forge_a_log_line_or_a_header_is_refused(value: bytes) -> None:
    # copied into logs and response headers: no space, control byte or non-ASCII may pass
    assert valid_request_id(value) == all(0x21 <= b <= 0x7E for b in value)


def test_new_request_ids_are_distinct_uuid4s_across_entropy_refills() -> None:
    # 4 KiB of entropy makes 256 ids; a thousand cross several refills
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert UUID4.match(rid), rid
        assert uuid.UUID(rid).version == 4
        assert uuid.UUID(rid).variant == uuid.RFC_4122
        assert valid_request_id(rid.encode())
    # the variant digit keeps its two random bits
    assert {rid[19] for rid in ids} == set("89ab")
