"""Raw HTTP/1.1 clients: bytes in, parsed responses out, nothing hidden by a client library."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httptools


class HeaderFields:
    """Field lookup by name, in any case, for a message that keeps its fields in wire order."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The first value of the field ``name``."""
        found = self.header_all(name)
        return found[0] if found else None

    def header_all(self, name: str) -> list[str]:
        """Every value of the field ``name``, in order."""
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]


@dataclass
class Response(HeaderFields):
    status: int = 0
    reason: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False  # the message ended by its framing, not by a closed connection


class ResponseParse:
    """Responses parsed by llhttp (strict, no leniency) as bytes are fed to ``parser``."""

    def __init__(self) -> None:
        self.done: list[Response] = []  # complete ones, in order
        self.partial: Response | None = None  # begun but not ended by its framing
        self.cur = Response()
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.cur = Response()
        self.partial = self.cur

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
        self.partial = None


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Incoming:
    """What the peer sends, a ``recv`` at a time. The iteration ends when ``timeout`` seconds
    have passed, when the peer closes the connection (EOF or reset; ``closed`` is then True),
    or, once something has arrived, after ``linger`` seconds without more bytes."""

    def __init__(self, sock: socket.socket, timeout: float, linger: float = math.inf) -> None:
        self.sock = sock
        self.timeout = timeout
        self.linger = linger
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        deadline = time.monotonic() + self.timeout
        arrived = False
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(min(left, self.linger) if arrived else left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if arrived:
                    return
                continue
            except ConnectionResetError:
                self.closed = True
                return
            if not data:
                self.closed = True
                return
            arrived = True
            yield data


def read_responses(
    sock: socket.socket, count: int, timeout: float = 5.0
) -> tuple[list[Response], bool]:
    """Read until ``count`` responses are complete or the peer closes; returns the responses
    (a trailing incomplete one included) and whether the connection was closed."""
    p = ResponseParse()
    incoming = Incoming(sock, timeout)
    for data in incoming:
        try:
            p.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            break
        if len(p.done) >= count:
            break
    out = list(p.done)
    if p.partial is not None and p.partial.status:
        out.append(p.partial)
    return out, incoming.closed


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
