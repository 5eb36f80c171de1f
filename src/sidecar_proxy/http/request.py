"""What the client leg learned from one request head, handed to the :class:`Forward`."""

from __future__ import annotations


class RequestHead:
    """One parsed request head. Filled field by field from httptools callbacks; ``__slots__``
    because one is made per request."""

    __slots__ = (
        "b3_trace_id",
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "forwarded_host",
        "forwarded_proto",
        "header_bytes",
        "headers",
        "host",
        "host_count",
        "idempotency_key",
        "keep_alive",
        "lowered",
        "method",
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
        self.headers: list[tuple[bytes, bytes]] = []
        self.lowered: list[bytes] = []  # lower-cased names, parallel to headers
        self.header_bytes = 0
        self.host = b""
        self.host_count = 0
        self.content_length: int | None = None
        self.transfer_encoding: list[bytes] = []
        self.chunked = False
        self.connection: list[bytes] = []
        self.upgrade = b""
        self.keep_alive = True
        self.expect_continue = False
        self.idempotency_key = False
        self.request_id = b""
        self.traceparent: bytes | None = None
        self.b3_trace_id: bytes | None = None
        self.user_agent = b""
        self.xff = b""
        self.forwarded_proto = b""
        self.forwarded_host = b""
