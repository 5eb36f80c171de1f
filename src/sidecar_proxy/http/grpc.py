"""gRPC on top of the exchange: deadlines, gRPC-shaped answers, statuses, message counts.

gRPC is HTTP/2 with rules of its own (grpc/grpc ``doc/PROTOCOL-HTTP2.md``): every call is a POST
with ``content-type: application/grpc[+format]``; its outcome is ``grpc-status`` in the trailers,
or in the head of a *Trailers-Only* response (one HEADERS frame with END_STREAM), and the HTTP
status is 200 whenever the server got the call at all. A proxy that reads only the HTTP status
counts every failed call as a success and answers its own errors with bare 502s that a gRPC
client reports as transport failures. This module holds what the exchange needs to do better,
as pure functions and one small per-call record; the exchange asks for it only when the request
is a gRPC call (:func:`is_grpc`, one test on the content type), so other requests pay nothing.

- ``grpc-timeout`` (at most 8 digits and a unit) is the call's deadline (:func:`parse_timeout`);
  the app gets the time left in its own ``grpc-timeout`` (:func:`timeout_value`).
- Answers of the sidecar's own become Trailers-Only responses with ``grpc-status`` and a
  percent-encoded ``grpc-message`` (:func:`local_code`, :func:`encode_message`).
- Messages are counted as their 5-byte prefixes (flag, 4-byte length) pass
  (:class:`MessageCounter`); no message is held or copied.
"""

from __future__ import annotations

from typing import Final

from sidecar_proxy.http.fields import ResponseHead
from sidecar_proxy.http.legs import Trailers

# doc/statuscodes.md
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNAUTHENTICATED: Final = 16

CONTENT_TYPE: Final = b"application/grpc"
_WEB: Final = b"application/grpc-web"  # gRPC-Web: another protocol, HTTP/1.1-friendly

# PROTOCOL-HTTP2.md: TimeoutUnit -> seconds
_UNITS: Final = {
    0x48: 3600.0,  # H
    0x4D: 60.0,  # M
    0x53: 1.0,  # S
    0x6D: 1e-3,  # m
    0x75: 1e-6,  # u
    0x6E: 1e-9,  # n
}

# doc/http-grpc-status-mapping.md for the statuses the sidecar answers with, with three
# exceptions that say more than the table: a call the sidecar sheds or rate-limits is
# RESOURCE_EXHAUSTED (statuscodes.md lists it for "out of quota" and flow-control limits), a
# deadline it enforced is DEADLINE_EXCEEDED, and a body too large is RESOURCE_EXHAUSTED, as a
# gRPC server says of a message over its limit.
_BY_HTTP: Final = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: RESOURCE_EXHAUSTED,
    431: RESOURCE_EXHAUSTED,
    501: UNIMPLEMENTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}

# Percent-Byte-Unencoded (PROTOCOL-HTTP2.md): %x20-%x24 / %x26-%x7E; every other byte of the
# UTF-8 message is %XX.
_PERCENT: Final = [
    b"%%%02X" % b if b < 0x20 or b > 0x7E or b == 0x25 else bytes((b,)) for b in range(256)
]

_MAX_TIMEOUT_DIGITS: Final = 8


def is_grpc(content_type: bytes) -> bool:
    """Whether a request with this content type is a gRPC call (``application/grpc`` or
    ``application/grpc+proto`` and kin, any parameters; not gRPC-Web)."""
    return content_type[:16].lower() == CONTENT_TYPE and content_type[:20].lower() != _WEB


def parse_timeout(value: bytes) -> float:
    """``grpc-timeout`` in seconds; ValueError if malformed (PROTOCOL-HTTP2.md: TimeoutValue is
    a positive integer of at most 8 ASCII digits, TimeoutUnit one of H M S m u n)."""
    digits = value[:-1]
    unit = _UNITS.get(value[-1]) if value else None
    if unit is None or not digits or len(digits) > _MAX_TIMEOUT_DIGITS or not digits.isdigit():
        raise ValueError("malformed grpc-timeout")
    return int(digits) * unit


def timeout_value(seconds: float) -> bytes:
    """``seconds`` as a ``grpc-timeout`` value: the finest unit whose 8 digits hold it, rounded
    down so the app never believes it has more time than the caller gave."""
    micros = int(seconds * 1e6)
    if micros < 100_000_000:
        return b"%du" % max(micros, 1)
    millis = micros // 1000
    if millis < 100_000_000:
        return b"%dm" % millis
    return b"%dS" % min(millis // 1000, 99_999_999)


def encode_message(text: str) -> bytes:
    """A ``grpc-message`` value: the UTF-8 text, percent-encoded (PROTOCOL-HTTP2.md)."""
    return b"".join([_PERCENT[b] for b in text.encode()])


def local_code(http_status: int, shed: bool) -> int:
    """The gRPC status of an answer the sidecar gives instead of the app's."""
    if shed:  # load shedding: a resource of ours is exhausted, not the app down
        return RESOURCE_EXHAUSTED
    return _BY_HTTP.get(http_status, UNKNOWN)


def local_trailers(code: int, message: str, pushback: int | None) -> list[tuple[bytes, bytes]]:
    """The fields of a Trailers-Only answer of ours besides ``content-type``. ``pushback`` (seconds
    a retry should wait) becomes ``grpc-retry-pushback-ms`` (gRFC A6), as Retry-After would."""
    fields = [(b"grpc-status", b"%d" % code), (b"grpc-message", encode_message(message))]
    if pushback is not None:
        fields.append((b"grpc-retry-pushback-ms", b"%d" % (pushback * 1000)))
    return fields


def _field(lines: list[bytes], names: list[bytes], name: bytes) -> bytes | None:
    """The value of field ``name`` in a head's lines (see :mod:`sidecar_proxy.http.fields`)."""
    for i, low in enumerate(names):
        if low == name:
            return lines[i][len(low) + 2 : -2]
    return None


def head_status(resp: ResponseHead) -> int | None:
    """``grpc-status`` in a response head: there only in a Trailers-Only response."""
    return _status(_field(resp.lines, resp.names, b"grpc-status"))


def head_pushback(resp: ResponseHead) -> float | None:
    """``grpc-retry-pushback-ms`` in seconds; -1.0 when it says not to retry (gRFC A6: a
    negative or unparsable value means the server asks for no retry)."""
    value = _field(resp.lines, resp.names, b"grpc-retry-pushback-ms")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 10:
        return -1.0
    return int(value) / 1000.0


def trailer_status(trailers: Trailers | None) -> int | None:
    """``grpc-status`` in the trailers of a response."""
    for name, value in trailers or ():
        if name.lower() == b"grpc-status":
            return _status(value)
    return None


def _status(value: bytes | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 3:
        return None if value is None else UNKNOWN
    return int(value)


class MessageCounter:
    """Counts length-prefixed messages in one direction of a call's body, whatever the chunks."""

    __slots__ = ("count", "prefix", "skip")

    def __init__(self) -> None:
        self.count = 0
        self.skip = 0  # bytes of the current message's payload still to pass
        self.prefix = b""  # the part of a 5-byte prefix that arrived in the last chunk

    def feed(self, data: bytes) -> None:
        i = 0
        n = len(data)
        while i < n:
            if self.skip:
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                continue
            need = 5 - len(self.prefix)
            prefix = self.prefix + data[i : i + need]
            i += need
            if len(prefix) < 5:
                self.prefix = prefix
                return
            self.prefix = b""
            self.count += 1
            self.skip = int.from_bytes(prefix[1:5], "big")


class GrpcCall:
    """What the exchange keeps of one gRPC call."""

    __slots__ = ("malformed", "requests", "responses", "timeout")

    def __init__(self, grpc_timeout: bytes | None) -> None:
        self.timeout: float | None = None  # seconds the caller gave the call, if it said
        self.malformed = False  # its grpc-timeout was not one
        if grpc_timeout is not None:
            try:
                self.timeout = parse_timeout(grpc_timeout)
            except ValueError:
                self.malformed = True
        self.requests = MessageCounter()  # messages from the client
        self.responses = MessageCounter()  # messages from the app
