"""Header rules for both directions: hop-by-hop removal, forwarding headers, request ids.

Pure functions over lists of ``(name, value)`` byte pairs as httptools delivers them. Names keep
the case the peer sent (some apps still care); comparisons use the lower-cased name.
"""

from __future__ import annotations

import os
import re
from typing import Final

# RFC 9110 §7.6.1 plus the legacy names Go's ReverseProxy also strips (RFC 2616 §13.5.1).
# Content-Length is not here: framing decides it separately for each leg.
HOP_BY_HOP: Final = frozenset(
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

MAX_REQUEST_ID_LENGTH: Final = 200


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
    # Usually Connection holds only options that are hop-by-hop anyway ("keep-alive", "close"):
    # testing each token costs less than the two set differences it took (~1,800 instructions).
    nominated = [
        token
        for token in list_tokens(connection)
        if token not in HOP_BY_HOP and token not in _NOT_NOMINABLE
    ]
    if not nominated:
        return lines
    return [line for line, low in zip(lines, names, strict=True) if low not in nominated]


# "close" is an option, not a field; Host is required on every HTTP/1.1 request, so a
# "Connection: host" cannot take it away from the app.
_NOT_NOMINABLE: Final = frozenset({b"close", b"host"})


# RFC 3986 authority without userinfo: an IP-literal or a reg-name (unreserved, sub-delims,
# pct-encoded), then an optional port of digits.
_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def valid_host(value: bytes) -> bool:
    """RFC 9110 §7.2: a Host that is not a valid authority must be answered 400."""
    return _HOST.fullmatch(value) is not None


def valid_request_id(value: bytes) -> bool:
    """A client-supplied X-Request-ID is kept only when it is short visible ASCII: it is copied
    into logs and response headers, so nothing that could forge a log line or a header."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(0x21 <= b <= 0x7E for b in value)


class _RequestIds:
    """Random version-4 UUIDs, formatted, from random bytes drawn 4 KiB (256 ids) at a time.

    One getrandom() and one ``hex()`` serve 256 ids; each id is then slices of that text with
    the version and variant digits set. Several times cheaper than ``str(uuid.uuid4())``, and
    about 2,000 instructions an id cheaper compiled than cutting 16 bytes off a ``bytearray``
    and formatting them, which went through generic item and slice calls.
    """

    __slots__ = ("_hex", "_pos")

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def new(self) -> str:
        x = self._hex
        i = self._pos
        if i >= len(x):
            x = self._hex = os.urandom(4096).hex()
            i = 0
        self._pos = i + 32
        # RFC 9562 §5.4: version 4 in the 13th digit, variant 10xx in the 17th.
        return (
            f"{x[i : i + 8]}-{x[i + 8 : i + 12]}-4{x[i + 13 : i + 16]}-"
            f"{_VARIANT[x[i + 16]]}{x[i + 17 : i + 20]}-{x[i + 20 : i + 32]}"
        )


# A random hex digit's low two bits under the variant's high ones (RFC 9562 §4.1).
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_REQUEST_IDS: Final = _RequestIds()


def new_request_id() -> str:
    """A random version-4 UUID, formatted."""
    return _REQUEST_IDS.new()


# Codings RFC 9112 registers; a request using one of them (other than a final chunked) is valid
# HTTP that we do not implement (501), anything else is unknown (also 501, RFC 9112 §6.1).
KNOWN_CODINGS: Final = frozenset(
    {b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"}
)
