"""The head records that cross between legs and exchange, and how each header field is treated.

Both legs classify a field with one dict lookup while parsing: most fields are forwarded as they
are (no entry), hop-by-hop ones are dropped, and the few the proxy reads or rewrites are kept
apart. The request and response tables live together here so the two directions' rules can be
read side by side.

:class:`RequestHead` and :class:`ResponseHead` are plain ``__slots__`` records, one per message:
a retried attempt's response starts a fresh :class:`ResponseHead` rather than resetting fields.
"""

from __future__ import annotations

from typing import Final

from sidecar_proxy.http.headers import HOP_BY_HOP

# What the client leg does with a request field; a field absent from the table is forwarded as
# it is, so the common field costs one dict lookup. Plain ``Final`` ints rather than an enum: they
# are compared on every field of every request, and a compiled module inlines them.
REQ_HOP: Final = 0  # hop-by-hop (RFC 9110 §7.6.1): dropped
REQ_HOST: Final = 1
REQ_CONTENT_LENGTH: Final = 2  # framing is the proxy's to set, for each leg
REQ_TRANSFER_ENCODING: Final = 3
REQ_CONNECTION: Final = 4
REQ_UPGRADE: Final = 5
REQ_USER_AGENT: Final = 6  # forwarded, and logged
REQ_TRACEPARENT: Final = 7  # forwarded, and the trace id logged
REQ_B3_TRACE_ID: Final = 8
REQ_IDEMPOTENCY_KEY: Final = 9  # forwarded; makes a POST replay-safe
REQ_REQUEST_ID: Final = 10  # re-added exactly once by the exchange
REQ_X_FORWARDED_FOR: Final = 11  # re-added with the client's address appended
REQ_X_FORWARDED_PROTO: Final = 12
REQ_X_FORWARDED_HOST: Final = 13

REQUEST_FIELDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP, REQ_HOP),
    b"host": REQ_HOST,
    b"content-length": REQ_CONTENT_LENGTH,
    b"transfer-encoding": REQ_TRANSFER_ENCODING,
    b"connection": REQ_CONNECTION,
    b"upgrade": REQ_UPGRADE,
    b"user-agent": REQ_USER_AGENT,
    b"traceparent": REQ_TRACEPARENT,
    b"x-b3-traceid": REQ_B3_TRACE_ID,
    b"idempotency-key": REQ_IDEMPOTENCY_KEY,
    b"x-request-id": REQ_REQUEST_ID,
    b"x-forwarded-for": REQ_X_FORWARDED_FOR,
    b"x-forwarded-proto": REQ_X_FORWARDED_PROTO,
    b"x-forwarded-host": REQ_X_FORWARDED_HOST,
    # Only the sidecar vouches for a client certificate: an incoming one is always a forgery
    # (Envoy's SANITIZE); the verified one is added by the exchange.
    b"x-forwarded-client-cert": REQ_HOP,
}

# What the app leg does with a response field (absent: forward it).
RESP_HOP: Final = 0
RESP_CONTENT_LENGTH: Final = 1
RESP_CONNECTION: Final = 2
RESP_TRANSFER_ENCODING: Final = 3
RESP_UPGRADE: Final = 4
RESP_REQUEST_ID: Final = 5  # forwarded; the proxy then adds none of its own
RESP_RETRY_AFTER: Final = 6  # forwarded; read when the status is retried

RESPONSE_FIELDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP, RESP_HOP),
    b"content-length": RESP_CONTENT_LENGTH,
    b"connection": RESP_CONNECTION,
    b"transfer-encoding": RESP_TRANSFER_ENCODING,
    b"upgrade": RESP_UPGRADE,
    b"x-request-id": RESP_REQUEST_ID,
    b"retry-after": RESP_RETRY_AFTER,
}


class RequestHead:
    """One parsed request head, filled field by field by the client leg."""

    __slots__ = (
        "b3_trace_id",
        "chunked",
        "connection",
        "content_length",
        "content_type",
        "forwarded_host",
        "forwarded_proto",
        "grpc_timeout",
        "header_bytes",
        "header_count",
        "host",
        "host_count",
        "host_line",
        "idempotency_key",
        "keep_alive",
        "lines",
        "method",
        "names",
        "request_id",
        "target",
        "traceparent",
        "transfer_encoding",
        "upgrade",
        "user_agent",
        "version",
        "xff",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = "1.1"
        # forwardable fields as ready "name: value\r\n" lines, lower-cased names alongside
        self.lines: list[bytes] = []
        self.names: list[bytes] = []
        self.header_bytes = 0
        self.header_count = 0
        self.host = b""
        self.host_line = -1  # index of the Host line in ``lines``
        self.host_count = 0
        self.content_length: int | None = None
        self.transfer_encoding: list[bytes] = []
        # the body's length is not known ahead (chunked): the app leg frames it so too
        self.chunked = False
        self.connection: list[bytes] = []
        self.upgrade = b""  # the protocol asked for, once the request is known to be an upgrade
        self.keep_alive = True
        self.idempotency_key = False
        self.request_id = b""
        self.traceparent: bytes | None = None
        self.b3_trace_id: bytes | None = None
        self.user_agent = b""
        self.xff = b""
        self.forwarded_proto = b""
        self.forwarded_host = b""
        # gRPC (HTTP/2 only: the HTTP/2 client leg fills these, see http/grpc.py)
        self.content_type = b""
        self.grpc_timeout: bytes | None = None  # not forwarded: re-added with the time left


class ResponseHead:
    """One response head from the app (a 1xx included), filled by the app leg."""

    __slots__ = (
        "connection",
        "content_length",
        "framed",
        "has_request_id",
        "keep_alive",
        "lines",
        "names",
        "reason",
        "retry_after",
        "status",
        "transfer_encoding",
        "upgrade",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.lines: list[bytes] = []  # forwardable fields, ready to write
        self.names: list[bytes] = []  # their lower-cased names
        # Rare fields stay None until one arrives: a list made for each response was a
        # measurable share of a small request's cost.
        self.content_length: bytes | None = None  # the digits, as the parser validated them
        self.transfer_encoding: list[bytes] | None = None
        self.connection: list[bytes] | None = None
        self.upgrade = b""
        self.has_request_id = False
        self.retry_after: bytes | None = None
        self.keep_alive = False  # the app will take another request on this connection
        # the protocol marks where the body ends whatever the fields say (an HTTP/2 stream's
        # END_STREAM), so it never ends by the app closing the connection
        self.framed = False
