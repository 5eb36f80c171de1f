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
