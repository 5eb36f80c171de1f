"""Helpers for the hardening tests: byte-exact exchanges with the proxy, strict parsing of what it
sends back, an app that also records which of its connections have ended, scripted apps that
write raw (possibly broken) bytes, and a watch on the event loop's error handler.

Everything here observes from outside, through sockets: the hardening tests state rules about
what crosses the wire, not about how the proxy is built.
"""

from __future__ import annotations

import asyncio
import re
import select
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httptools

from sidecar_proxy.server import ProxyServer
from support.client import Incoming, Response, ResponseParse, connect
from support.loop import LoopThread
from support.proxy import new_proxy
from support.upstream import Handler, Listener, Received, Upstream, ok

# == talking to the proxy ==========================================================================


@dataclass
class Capture:
    """Everything the proxy sent on one connection, and how the connection ended."""

    data: bytes
    closed: bool  # the proxy closed the connection (EOF or reset) before the deadline
    elapsed: float  # seconds from the last byte sent to the close, or to the deadline


def send_tolerant(sock: socket.socket, data: bytes, piece: int = 65536) -> bool:
    """Send ``data``; False when the proxy stopped accepting it (it may close early, as it
    should on a rejected request, and a test must still read what it answered)."""
    try:
        for i in range(0, len(data), piece):
            sock.sendall(data[i : i + piece])
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def dribble(sock: socket.socket, piece: bytes, times: int, pause: float = 0.005) -> int:
    """Send ``piece`` up to ``times`` times, ``pause`` apart, until the proxy answers or stops
    accepting; returns the bytes sent before that. What counts is when the proxy answered: after
    it answers it may still read and discard what the client sends (a lingering close), which
    holds nothing, so bytes it accepted afterwards say nothing about what it buffered."""
    sent = 0
    for _ in range(times):
        if select.select([sock], [], [], 0)[0]:
            break  # the answer (or the close) is there
        if not send_tolerant(sock, piece):
            break
        sent += len(piece)
        time.sleep(pause)
    return sent


def read_until_close(
    sock: socket.socket, timeout: float, linger: float = 0.3, responses: int | None = None
) -> Capture:
    """Read until the proxy closes the connection or ``timeout`` passes. Once something has
    arrived, ``linger`` seconds without more bytes also end the wait (``closed`` stays False):
    the proxy writes an answer and its close together, so a longer silence means no close.
    With ``responses``, having that many complete responses ends the wait too: for tests that
    do not care whether the connection stays open."""
    start = time.monotonic()
    buf = bytearray()
    incoming = Incoming(sock, timeout, linger)
    for data in incoming:
        buf += data
        if responses is not None and len(parse_responses(bytes(buf)).responses) >= responses:
            break
    return Capture(bytes(buf), incoming.closed, time.monotonic() - start)


def exchange(
    port: int,
    raw: bytes,
    timeout: float = 2.0,
    linger: float = 0.3,
    responses: int | None = None,
) -> Capture:
    """Send ``raw`` on a new connection and collect everything until the proxy closes it (see
    :func:`read_until_close` for the other ends of the wait)."""
    with connect(port, timeout) as sock:
        send_tolerant(sock, raw)
        return read_until_close(sock, timeout, linger, responses)


def raw_request(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """A request from its request line and field lines; CRLFs added, nothing else checked."""
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


# == reading what the proxy sent ===================================================================


@dataclass
class Parsed:
    responses: list[Response] = field(default_factory=list)  # complete ones, in order
    partial: Response | None = None  # started but not ended by its framing
    error: str | None = None  # the bytes are not a valid sequence of HTTP/1.1 responses

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def parse_responses(data: bytes) -> Parsed:
    """Parse ``data`` strictly (llhttp, no leniency) as responses to non-HEAD requests."""
    p = ResponseParse()
    error = None
    try:
        p.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        error = "unexpected upgrade"
    except httptools.HttpParserError as exc:
        error = str(exc) or type(exc).__name__
    return Parsed(p.done, p.partial, error)


def assert_rejected(cap: Capture, status: int | set[int]) -> Response:
    """The proxy answered with exactly one complete, well-formed ``status`` response that
    announces the close, and then closed the connection."""
    parsed = parse_responses(cap.data)
    assert parsed.error is None, f"malformed bytes from the proxy: {parsed.error}: {cap.data!r}"
    allowed = {status} if isinstance(status, int) else status
    assert len(parsed.responses) == 1, f"expected one response: {cap.data!r}"
    assert parsed.partial is None, f"trailing partial response: {cap.data!r}"
    resp = parsed.responses[0]
    assert resp.status in allowed, f"status {resp.status}, expected {allowed}: {cap.data!r}"
    assert (resp.header("Connection") or "").lower() == "close", cap.data
    assert cap.closed, "the proxy kept the connection open after rejecting the request"
    return resp


def split_head(data: bytes) -> tuple[bytes, bytes]:
    """A response head (up to and including the blank line) and whatever followed it."""
    end = data.find(b"\r\n\r\n")
    assert end >= 0, f"no complete response head in {data!r}"
    return data[: end + 4], data[end + 4 :]


# == apps ==========================================================================================


@dataclass
class TrackingUpstream(Upstream):
    """An :class:`Upstream` that also records which connections have ended (by 1-based number).

    A connection ends when the proxy closes it, sends bytes the app cannot parse, or the
    handler closes it; tests that use ``ended`` as "the proxy discarded it" keep their handlers
    from closing.
    """

    ended: set[int] = field(default_factory=set)

    def __repr__(self) -> str:  # the default one prints every byte received
        return f"TrackingUpstream(port={self.port}, connections={self.connections})"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_no = self.connections + 1  # what the base class is about to assign
        try:
            await super()._serve(reader, writer)
        finally:
            self.ended.add(conn_no)

    def raw_total(self) -> int:
        return sum(len(r) for r in self.raw)


@contextmanager
def proxy_to(lt: LoopThread, upstream_port: int, /, **overrides: Any) -> Iterator[ProxyServer]:
    """A proxy in front of ``upstream_port``, configured like the shared fixtures do, for tests
    that share one proxy across many cases (starting one costs about 0.1 s)."""
    proxy = new_proxy(lt, upstream_port, **overrides)
    try:
        yield proxy
    finally:
        lt.run(proxy.close())


@contextmanager
def running(
    lt: LoopThread, handler: Handler = ok, /, **overrides: Any
) -> Iterator[tuple[TrackingUpstream, ProxyServer]]:
    """A tracking app and a proxy in front of it."""
    app = TrackingUpstream(handler)
    lt.run(app.start())
    try:
        with proxy_to(lt, app.port, **overrides) as proxy:
            yield app, proxy
    finally:
        lt.run(app.stop())


@dataclass(frozen=True)
class AppMark:
    """How much had reached the app at one moment."""

    received: int
    raw_bytes: int
    per_connection: tuple[int, ...]


def mark(app: TrackingUpstream) -> AppMark:
    return AppMark(len(app.received), app.raw_total(), tuple(len(r) for r in app.raw))


def touched_since(app: TrackingUpstream, since: AppMark) -> list[int]:
    """The app connections (1-based) that received bytes after ``since``."""
    before = since.per_connection
    return [
        i + 1 for i, raw in enumerate(app.raw) if len(raw) > (before[i] if i < len(before) else 0)
    ]


def assert_nothing_reached(app: TrackingUpstream, since: AppMark, settle: float = 0.05) -> None:
    """No request and not one byte reached the app after ``since``. Waits ``settle`` first: a
    wrongly forwarded request would be written on the event loop after the answer."""
    time.sleep(settle)
    assert app.received[since.received :] == [], "a request reached the app"
    assert app.raw_total() == since.raw_bytes, f"bytes reached the app: {app.raw[-1]!r}"


def assert_never_completed(app: TrackingUpstream, since: AppMark) -> None:
    """Whatever part of a refused request streamed to the app after ``since``, the app never
    saw it complete, and every connection that carried part of it was closed, not reused."""
    time.sleep(0.05)
    assert app.received[since.received :] == [], "the refused request completed at the app"
    touched = touched_since(app, since)
    assert wait_for(lambda: all(c in app.ended for c in touched)), (
        f"app connections {touched} carried part of a refused request and were left open"
    )


class Close:
    """A step of :func:`script`: close the app's side of the connection."""


CLOSE = Close()


def script(*steps: bytes | float | Close) -> Handler:
    """An app handler that writes raw bytes, sleeps (a float, in seconds) and may close."""

    async def handler(req: Received, w: asyncio.StreamWriter) -> None:
        for step in steps:
            if isinstance(step, Close):
                w.close()
                return
            if isinstance(step, bytes):
                w.write(step)
                await w.drain()
            else:
                await asyncio.sleep(step)

    return handler


RawScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawApp(Listener):
    """An app that hands each connection to ``script`` as it is: for apps that answer before
    the request has ended, which a request-at-a-time app cannot do."""

    script: RawScript
    connections: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def stop(self) -> None:
        self._stop_accepting()
        for w in list(self._writers):
            w.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.script(reader, writer)
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# == waiting and watching ==========================================================================


def wait_for(pred: Callable[[], bool], timeout: float = 2.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@contextmanager
def loop_errors(lt: LoopThread) -> Iterator[list[dict[str, Any]]]:
    """Collect what reaches the event loop's exception handler meanwhile: an exception escaping
    a protocol callback (a crash of that connection) lands there, not in the test."""
    errors: list[dict[str, Any]] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A test app's connection task cancelled at shutdown is reported by asyncio's stream
        # machinery as an error; it says nothing about the proxy.
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            errors.append(context)

    async def swap(new: Any) -> Any:
        loop = asyncio.get_running_loop()
        old = loop.get_exception_handler()
        loop.set_exception_handler(new)
        return old

    old = lt.run(swap(handler))
    try:
        yield errors
    finally:
        lt.run(swap(old))


# == what a request on the wire must look like =====================================================

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"^(" + _TOKEN + rb") (\S+) HTTP/1\.1$")
_FIELD_LINE = re.compile(rb"^(" + _TOKEN + rb"): ?([\t\x20-\x7e\x80-\xff]*)$")


def check_request_head(head: bytes) -> list[str]:
    """Problems with one request head as the proxy wrote it (empty when it is clean): a strict
    request line, strict field lines, exactly one Host, and one unambiguous framing."""
    problems: list[str] = []
    lines = head.split(b"\r\n")
    if not _REQUEST_LINE.match(lines[0]):
        problems.append(f"bad request line {lines[0]!r}")
    names: list[bytes] = []
    for line in lines[1:]:
        m = _FIELD_LINE.match(line)
        if m is None:
            problems.append(f"bad field line {line!r}")
            continue
        value = m.group(2)
        if value != value.strip(b" \t"):
            problems.append(f"padded field value {line!r}")
        names.append(m.group(1).lower())
    if names.count(b"host") != 1:
        problems.append(f"{names.count(b'host')} Host fields")
    framing = names.count(b"content-length") + names.count(b"transfer-encoding")
    if framing > 1:
        problems.append("more than one framing field")
    return problems


@dataclass
class AppStream:
    """One app connection's bytes, parsed as the app would."""

    heads: list[bytes] = field(default_factory=list)
    complete: int = 0
    error: str | None = None
    tail: bool = False  # a request started but not finished when the bytes ran out


class _RequestParse:
    def __init__(self, out: AppStream) -> None:
        self.out = out

    def on_message_begin(self) -> None:
        self.out.tail = True

    def on_message_complete(self) -> None:
        self.out.complete += 1
        self.out.tail = False


def parse_app_stream(raw: bytes) -> AppStream:
    """Split one app connection's bytes into requests: heads by their blank line (for
    :func:`check_request_head`), framing by llhttp in strict mode."""
    out = AppStream()
    parser = httptools.HttpRequestParser(_RequestParse(out))
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        out.error = "unexpected upgrade"
    except httptools.HttpParserError as exc:
        out.error = str(exc) or type(exc).__name__
    # heads: every request starts right after the previous one ended; the parser already
    # vouched for framing, so locating heads only needs the blank lines that close them
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        out.heads.append(raw[pos:end])
        try:
            pos = _skip_body(raw, raw[pos:end], end + 4)
        except ValueError:  # unreadable framing: llhttp has reported it in ``error``
            break
        if pos < 0:
            break
    return out


def _skip_body(raw: bytes, head: bytes, pos: int) -> int:
    """Where the message whose head is ``head`` ends, or -1 when the bytes end first."""
    low = head.lower()
    m = re.search(rb"\r\ncontent-length: *(\d+)", low)
    if m:
        end = pos + int(m.group(1))
        return end if end <= len(raw) else -1
    if b"\r\ntransfer-encoding: chunked" in low:
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                return -1
            size = int(raw[pos:eol].split(b";")[0] or b"0", 16)
            pos = eol + 2
            if size == 0:
                trailer_end = raw.find(b"\r\n", pos)
                while trailer_end > pos:  # trailer fields until the empty line
                    pos = trailer_end + 2
                    trailer_end = raw.find(b"\r\n", pos)
                return trailer_end + 2 if trailer_end >= 0 else -1
            pos += size + 2
    return pos
