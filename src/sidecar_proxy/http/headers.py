"""Header rules for both directions: hop-by-hop removal, forwarding headers, request ids.

Pure functions over lists of ``(name, value)`` byte pairs as httptools delivers them. Names keep
the case the peer sent (some apps still care); comparisons use the lower-cased name.
"""

from __future__ import annotations

import os
import re

# RFC 9110 §7.6.1 plus the legacy names Go's ReverseProxy also strips (RFC 2616 §13.5.1).
# Content-Length is not here: framing decides it separately for each leg.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

MAX_REQUEST_ID_LENGTH = 200


def list_tokens(values: list[bytes]) -> list[bytes]:
    """The lower-cased members of comma-separated list headers (RFC 9110 §5.6.1), in order,
    across every occurrence of the header: Connection options, transfer codings."""
    tokens: list[bytes] = []
    for value in values:
        for item in value.split(b","):
            token = item.strip().lower()
            if token:
                tokens.append(token)
    return tokens


def without_h2c(offer: bytes) -> bytes:
    """An ``Upgrade`` offer (RFC 9110 §7.8) less HTTP/2 over cleartext; empty if nothing else
    is offered. RFC 9113 §3.1 deprecates the h2c upgrade, and a 101 to it would make the
    connection a tunnel carrying the client's HTTP/2 straight to the app, past every HTTP/2
    check the proxy makes ("h2c smuggling"). The other protocols are kept as written."""
    kept = [
        item.strip()
        for item in offer.split(b",")
        if item.strip() and item.strip().lower().split(b"/")[0] != b"h2c"
    ]
    return b", ".join(kept)


def end_to_end(
    lines: list[bytes], names: list[bytes], connection: list[bytes] | None
) -> list[bytes]:
    """The header lines that go on to the next hop.

    Both legs drop the fixed hop-by-hop set while parsing (one lookup per header, no second
    pass) and keep each forwardable field as a ready ``name: value\\r\\n`` line with its
    lower-cased name alongside. What is left here is the rare part: fields the Connection header
    nominated as hop-by-hop (RFC 9110 §7.6.1). Usually there are none and ``lines`` is returned
    as it is.
    """
    if not connection:
        return lines
    nominated = frozenset(list_tokens(connection)) - HOP_BY_HOP - _NOT_NOMINABLE
    if not nominated:
        return lines
    return [line for line, low in zip(lines, names, strict=True) if low not in nominated]


# "close" is an option, not a field; Host is required on every HTTP/1.1 request, so a
# "Connection: host" cannot take it away from the app.
_NOT_NOMINABLE = frozenset({b"close", b"host"})


# RFC 3986 authority without userinfo: an IP-literal or a reg-name (unreserved, sub-delims,
# pct-encoded), then an optional port of digits.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def valid_host(value: bytes) -> bool:
    """RFC 9110 §7.2: a Host that is not a valid authority must be answered 400."""
    return _HOST.fullmatch(value) is not None


def valid_request_id(value: bytes) -> bool:
    """A client-supplied X-Request-ID is kept only when it is short visible ASCII: it is copied
    into logs and response headers, so nothing that could forge a log line or a header."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(0x21 <= b <= 0x7E for b in value)


_ENTROPY = bytearray()


def new_request_id() -> str:
    """A random version-4 UUID, formatted.

    Random bytes are drawn 4 KiB at a time, one getrandom() per 256 ids instead of one each;
    with the hand formatting this is several times cheaper than ``str(uuid.uuid4())``.
    """
    if not _ENTROPY:
        _ENTROPY.extend(os.urandom(4096))
    h = _ENTROPY[-16:]
    del _ENTROPY[-16:]
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# Codings RFC 9112 registers; a request using one of them (other than a final chunked) is valid
# HTTP that we do not implement (501), anything else is unknown (also 501, RFC 9112 §6.1).
KNOWN_CODINGS = frozenset({b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"})
