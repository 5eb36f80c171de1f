"""Timed raw requests for resilience tests: what came back, how long it took, and whether the
proxy closed the connection afterwards (the only way it can report a truncated body)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from support.client import Response, connect, read_responses


@dataclass
class Outcome:
    response: Response | None  # None when nothing at all came back
    elapsed: float  # seconds from connecting to the end of reading
    closed: bool  # the proxy closed the connection

    @property
    def status(self) -> int:
        return self.response.status if self.response is not None else 0

    def header(self, name: str) -> str | None:
        return self.response.header(name) if self.response is not None else None


def build(
    method: str,
    path: str = "/",
    body: bytes = b"",
    headers: str = "",
    *,
    chunked: bool = False,
    keep_alive: bool = False,
) -> bytes:
    """A raw request. Chunked bodies go as two chunks, so a proxy that replays only the last
    chunk it saw (or only the first) delivers a different body."""
    connection = "" if keep_alive else "Connection: close\r\n"
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{connection}{headers}"
    if chunked:
        half = len(body) // 2
        parts = [p for p in (body[:half], body[half:]) if p]
        framed = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def send(port: int, raw: bytes, timeout: float = 5.0) -> Outcome:
    """Send ``raw`` on a new connection; read one response (or until the proxy closes)."""
    start = time.monotonic()
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        responses, closed = read_responses(sock, 1, timeout)
    elapsed = time.monotonic() - start
    return Outcome(responses[0] if responses else None, elapsed, closed)
