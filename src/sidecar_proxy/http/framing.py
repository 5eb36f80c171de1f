"""Message framing rules (RFC 9112 §6): who has a body, and how to re-frame one.

The proxy never forwards framing as received. httptools hands us decoded body bytes; each leg
re-frames them for its peer (Content-Length kept when known, chunked otherwise, close-delimited
only for HTTP/1.0 clients), so a framing disagreement between client, proxy and app — the root of
request smuggling — cannot pass through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk_size_line(size: int) -> bytes:
    """The size line of one chunk; the caller writes ``line, data, CRLF`` with writelines so a
    large body chunk is never copied just to frame it."""
    return b"%x\r\n" % size


def last_chunk(trailers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The terminating chunk, carrying trailer fields when the peer sent any (RFC 9112 §7.1.2)."""
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(name + b": " + value + CRLF for name, value in trailers) + CRLF


def response_has_body(request_method: bytes, status: int) -> bool:
    """RFC 9110 §6.4.1: no content in responses to HEAD, nor in 1xx, 204 and 304 responses."""
    return not (request_method == b"HEAD" or status < 200 or status in (204, 304))
