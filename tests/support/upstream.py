"""Scriptable upstream apps that record exactly what reached them.

Each accepted connection is parsed with httptools; every complete request is recorded (method,
target, headers, body, and the raw bytes of the whole connection) and handed to the test's
handler, which writes whatever bytes it wants — a correct response, a broken one, or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import httptools

from support.client import HeaderFields
from support.loop import LoopThread


@dataclass
class Received(HeaderFields):
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    version: str = "1.1"
    connection: int = 0  # which accepted connection carried it (1-based)


Handler = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


def response(
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    reason: str = "OK",
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    names = {n.lower() for n, _ in headers or []}
    for n, v in headers or []:
        lines.append(f"{n}: {v}")
    if "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def ok(req: Received, w: asyncio.StreamWriter) -> None:
    """Default handler: 200 with a body naming the request."""
    w.write(response(200, f"{req.method} {req.target}".encode(), [("Content-Type", "text/plain")]))


@dataclass(kw_only=True)
class Listener:
    """A server on 127.0.0.1 that hands each connection it accepts to ``_serve``."""

    port: int = 0
    _server: asyncio.base_events.Server | None = None

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _stop_accepting(self) -> None:
        """Close the listening socket; the connections already accepted are the subclass's."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class Upstream(Listener):
    handler: Handler = ok
    received: list[Received] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)  # raw bytes per connection
    connections: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def stop(self) -> None:
        self._stop_accepting()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        raw = bytearray()
        self.raw.append(raw)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        done: asyncio.Queue[Received] = asyncio.Queue()
        collector = _Collector(done, conn_no)
        parser = httptools.HttpRequestParser(collector)
        collector.parser = parser
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                raw += data
                with contextlib.suppress(httptools.HttpParserUpgrade):
                    parser.feed_data(data)
                while not done.empty():
                    req = done.get_nowait()
                    self.received.append(req)
                    await self.handler(req, writer)
                    await writer.drain()
                    if writer.is_closing():
                        return
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()


@contextlib.contextmanager
def upstream_thread(handler: Handler) -> Iterator[Upstream]:
    """An upstream on an event loop thread of its own, for tests whose proxy is a process."""
    lt = LoopThread()
    up = Upstream(handler)
    lt.run(up.start())
    try:
        yield up
    finally:
        lt.run(up.stop())
        lt.stop()


class _Collector:
    def __init__(self, out: asyncio.Queue[Received], conn_no: int) -> None:
        self.out = out
        self.conn_no = conn_no
        self.cur: Received | None = None
        self.body = bytearray()
        self.parser: httptools.HttpRequestParser | None = None

    def on_message_begin(self) -> None:
        self.cur = Received("", "", [], connection=self.conn_no)

    def on_url(self, url: bytes) -> None:
        assert self.cur is not None
        self.cur.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        self.cur.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.cur is not None and self.parser is not None
        self.cur.method = self.parser.get_method().decode()
        self.cur.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self.body += body  # a bytearray: appending bytes to bytes would be quadratic

    def on_message_complete(self) -> None:
        assert self.cur is not None
        self.cur.body = bytes(self.body)
        self.body = bytearray()
        self.out.put_nowait(self.cur)
        self.cur = None
