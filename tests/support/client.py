"""Raw HTTP/1.1 clients: bytes in, parsed responses out, nothing hidden by a client library."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import httptools


@dataclass
class Response:
    status: int = 0
    reason: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False  # the message ended by its framing, not by a closed connection

    def header(self, name: str) -> str | None:
        low = name.lower()
        for n, v in self.headers:
            if n.lower() == low:
                return v
        return None


class _Parse:
    def __init__(self) -> None:
        self.done: list[Response] = []
        self.cur = Response()
        self.parser = httptools.HttpResponseParser(self)

    def on_status(self, reason: bytes) -> None:
        self.cur.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.cur.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.cur.body += body

    def on_message_complete(self) -> None:
        self.cur.complete = True
        self.done.append(self.cur)
        self.cur = Response()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_responses(
    sock: socket.socket, count: int, timeout: float = 5.0, head_request: bool = False
) -> tuple[list[Response], bool]:
    """Read until ``count`` responses are complete or the peer closes; returns the responses
    (a trailing incomplete one included) and whether the connection was closed."""
    p = _Parse()
    if head_request:
        p.parser = httptools.HttpResponseParser(p)
    deadline = time.monotonic() + timeout
    closed = False
    while len(p.done) < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not data:
            closed = True
            break
        try:
            p.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            break
    out = list(p.done)
    if p.cur.status:
        out.append(p.cur)
    return out, closed


def request(port: int, raw: bytes, count: int = 1, timeout: float = 5.0) -> list[Response]:
    """Send raw bytes on a new connection and read ``count`` responses."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        responses, _ = read_responses(sock, count, timeout)
        return responses


def get(port: int, path: str = "/", headers: str = "") -> Response:
    raw = f"GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode()
    responses = request(port, raw)
    assert responses, "no response"
    return responses[0]


def closed_by_peer(sock: socket.socket, timeout: float = 2.0) -> bool:
    """True when the peer closes the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
