"""The app the soak sends its traffic to, and the ledger of every request that reached it.

It is written on raw asyncio streams and httptools so the ledger is exact: a request is entered
the moment its head is parsed, before its body, so a request whose body never finished still
counts as having reached the app. That is the moment that matters for "no POST ran twice".

Answers are deterministic functions of the request id (see :func:`response_payload`), so the
client can check every byte it got back without the app telling it what to expect, and every
answer echoes the SHA-256 of the request body the app received, so the client can check the
body it sent arrived intact.

Faults are switched on by the schedule (``bench.soak_faults``) through :class:`Faults`; while a
window is open the app draws, per request, whether to misbehave in that window's way, and counts
what it did in the window, so the report can show that each fault really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import httptools

HOST = "127.0.0.1"

# Fault kinds. RESTART is not drawn per request: the schedule calls SoakApp.restart().
RESET = "reset"  # close the connection before answering, or half-way through the body
SLOW = "slow"  # hold the response head past the proxy's per-try and request timeouts
BURST_503 = "503"  # answer every request 503
RESTART = "restart"  # stop listening and drop every connection, then listen again
# Not injected: a time the soak's own process did not run (measured, see soak_faults.watch_stalls).
# The app lives in that process, so for the proxy the app was as unresponsive as in a slow window.
STALL = "stall"

# What the app did with one request (AppRecord.action)
OK = "ok"
RESET_BEFORE = "reset-before"
RESET_MID = "reset-mid"
DELAYED = "slow"
ANSWERED_503 = "503"

# Per-request odds inside a window. Resets leave a share answered normally so retried GETs can
# succeed inside the window, which is what exercises the proxy's retry path end to end.
RESET_BEFORE_ODDS = 0.3
RESET_MID_ODDS = 0.3
SLOW_ODDS = 0.5
SLOW_DELAY = 2.5  # seconds; longer than the proxy's REQUEST_TIMEOUT the soak configures

RESPONSE_SIZES = {"get": 512, "post": 256, "postkey": 256, "put": 256, "hold": 128, "partial": 64}
STREAM_CHUNKS = 10
STREAM_CHUNK_BYTES = 8192
STREAM_INTERVAL = 0.1  # so a stream lasts about a second
STREAM_CUT_AFTER = 3  # chunks sent before a mid-body reset of a stream
HOLD_DELAY = 0.5  # "hold" requests wait this long, so the client can hang up before the answer

# A connection's read loop is bounded by count as well as by the app's stop(); the bound is far
# above what any connection of a 300 s soak reads (a few reads per request).
_MAX_READS_PER_CONNECTION = 5_000_000


def request_payload(rid: str, size: int) -> bytes:
    """The body a client sends for ``rid``: SHAKE-256 output, so no two requests share bytes."""
    return hashlib.shake_256(b"req:" + rid.encode()).digest(size)


def response_payload(rid: str, size: int) -> bytes:
    """The body the app answers ``rid`` with (a stream's chunks are consecutive slices of it)."""
    return hashlib.shake_256(b"resp:" + rid.encode()).digest(size)


def response_size(kind: str) -> int:
    if kind == "stream":
        return STREAM_CHUNKS * STREAM_CHUNK_BYTES
    return RESPONSE_SIZES.get(kind, 64)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FaultWindow:
    """One scheduled fault: planned offsets from the start of traffic, actual monotonic times."""

    kind: str
    planned_start: float
    planned_end: float
    start: float = 0.0  # time.monotonic() when it began (0 until then)
    end: float = 0.0  # when it ended: for a restart, when the app listened again
    hits: Counter[str] = field(default_factory=Counter)  # what the app did in it

    @property
    def happened(self) -> bool:
        return self.start > 0.0 and self.end >= self.start


class Faults:
    """The fault windows open right now; the schedule opens and closes them."""

    def __init__(self) -> None:
        self.open: list[FaultWindow] = []

    def current(self, kind: str) -> FaultWindow | None:
        for window in self.open:
            if window.kind == kind:
                return window
        return None


@dataclass(slots=True)
class AppRecord:
    """One request as the app received it."""

    rid: str  # from the path /soak/<kind>/<rid>
    kind: str  # from the path
    method: str
    conn: int  # which accepted connection carried it (1-based, across restarts)
    t_head: float  # time.monotonic() when its head was parsed
    header_rid: str  # its X-Request-ID as received ("" if none)
    idempotency_key: bool
    complete: bool = False  # its whole body arrived
    body_len: int = 0
    body_sha: str = ""
    action: str = ""  # what the app did with it; "" if it never got to answer


class _Collector:
    """httptools callbacks for one connection: enter heads in the ledger, queue whole requests."""

    def __init__(self, app: SoakApp, conn: int) -> None:
        self.app = app
        self.conn = conn
        self.parser: httptools.HttpRequestParser | None = None
        self.done: deque[AppRecord] = deque()
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = hashlib.sha256()
        self._body_len = 0
        self._cur: AppRecord | None = None

    def on_message_begin(self) -> None:
        self._url = bytearray()
        self._headers = []
        self._body = hashlib.sha256()
        self._body_len = 0
        self._cur = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        path = self._url.decode("latin-1").partition("?")[0]
        parts = path.split("/")
        kind, rid = (parts[2], parts[3]) if len(parts) == 4 and parts[1] == "soak" else ("?", path)
        headers = dict(self._headers)
        rec = AppRecord(
            rid=rid,
            kind=kind,
            method=self.parser.get_method().decode("latin-1"),
            conn=self.conn,
            t_head=time.monotonic(),
            header_rid=headers.get(b"x-request-id", b"").decode("latin-1"),
            idempotency_key=b"idempotency-key" in headers,
        )
        self.app.ledger.append(rec)
        self._cur = rec

    def on_body(self, body: bytes) -> None:
        self._body.update(body)
        self._body_len += len(body)

    def on_message_complete(self) -> None:
        rec = self._cur
        if rec is None:
            return
        rec.complete = True
        rec.body_len = self._body_len
        rec.body_sha = self._body.hexdigest()
        self.done.append(rec)
        self._cur = None


class _Dropped(Exception):
    """The app dropped the connection on purpose (a reset fault)."""


class SoakApp:
    """The app: listens on 127.0.0.1, answers /soak/<kind>/<rid>, misbehaves on cue."""

    def __init__(self, faults: Faults, rng: random.Random) -> None:
        self.faults = faults
        self.rng = rng
        self.ledger: list[AppRecord] = []
        self.port = 0
        self.connections = 0
        self.restarts = 0
        self._server: asyncio.Server | None = None
        self._live: dict[int, tuple[asyncio.Task[None], asyncio.StreamWriter]] = {}

    async def start(self, port: int = 0) -> int:
        # reuse_address: a restart listens again on the same port while the old connections
        # are still in TIME_WAIT.
        self._server = await asyncio.start_server(
            self._serve, HOST, port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _drop_all(self) -> int:
        """Close the listener and every connection, as a crashing app's kernel would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        live = list(self._live.values())
        self._live.clear()
        for task, writer in live:
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*(task for task, _ in live), return_exceptions=True)
        return len(live)

    async def restart(self, down_for: float) -> int:
        """Stop listening and drop every connection; listen again on the same port after
        ``down_for`` seconds. Returns how many connections were dropped."""
        dropped = await self._drop_all()
        await asyncio.sleep(down_for)
        # Another process on this machine may have bound the port meanwhile; a real app would
        # retry its bind too. Bounded: after 5 s the run fails rather than go on without an app.
        for attempt in range(50):
            try:
                await self.start(self.port)
                break
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        self.restarts += 1
        return dropped

    async def stop(self) -> None:
        await self._drop_all()

    # -- one connection -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        task = asyncio.current_task()
        assert task is not None
        self._live[conn] = (task, writer)
        collector = _Collector(self, conn)
        parser = httptools.HttpRequestParser(collector)
        collector.parser = parser
        try:
            for _ in range(_MAX_READS_PER_CONNECTION):
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
                while collector.done:
                    await self._answer(collector.done.popleft(), writer)
        except (ConnectionError, httptools.HttpParserError, _Dropped):
            pass
        except asyncio.CancelledError:
            # Our own restart() or stop() cancelled it and gathers it. Ending normally keeps
            # asyncio's start_server callback, which calls task.exception() on every finished
            # connection task, from logging the cancellation as an error (Python 3.11).
            pass
        finally:
            self._live.pop(conn, None)
            writer.transport.abort()

    def _draw(self, rec: AppRecord) -> tuple[str, FaultWindow | None]:
        """Which fault, if any, this request gets; the open windows decide the odds."""
        window = self.faults.current(BURST_503)
        if window is not None:
            return ANSWERED_503, window
        window = self.faults.current(RESET)
        if window is not None:
            roll = self.rng.random()
            if roll < RESET_BEFORE_ODDS:
                return RESET_BEFORE, window
            if roll < RESET_BEFORE_ODDS + RESET_MID_ODDS:
                return RESET_MID, window
        window = self.faults.current(SLOW)
        if window is not None and self.rng.random() < SLOW_ODDS:
            return DELAYED, window
        return OK, None

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        """Drop the connection: half the time with an RST (SO_LINGER 0), half with a FIN, since
        the proxy sees the two differently (a read error or an EOF)."""
        if self.rng.random() < 0.5:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        raise _Dropped

    async def _answer(self, rec: AppRecord, writer: asyncio.StreamWriter) -> None:
        action, window = self._draw(rec)
        rec.action = action
        if window is not None:
            window.hits[action] += 1
        if action == RESET_BEFORE:
            self._reset(writer)
        if action == ANSWERED_503:
            body = b"soak: 503 burst\n"
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nX-Request-ID: %b\r\nX-Soak-Id: %b\r\n"
                b"X-Soak-Fault: 503\r\n\r\n%b"
                % (len(body), rec.rid.encode(), rec.rid.encode(), body)
            )
            await writer.drain()
            return
        if action == DELAYED:
            # The proxy gives up on this attempt long before; the late answer then goes to a
            # connection the proxy has closed, which is what a slow app's late answer does.
            await asyncio.sleep(SLOW_DELAY)
        if rec.kind == "hold":
            await asyncio.sleep(HOLD_DELAY)
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"X-Request-ID: %b\r\nX-Soak-Id: %b\r\nX-Soak-Req-Sha: %b\r\nX-Soak-Conn: %d\r\n"
            % (rec.rid.encode(), rec.rid.encode(), rec.body_sha.encode(), rec.conn)
        )
        body = response_payload(rec.rid, response_size(rec.kind))
        if rec.kind == "stream":
            await self._stream(writer, head, body, cut=action == RESET_MID)
            return
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        if action == RESET_MID:
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            self._reset(writer)
        writer.write(head + body)
        await writer.drain()

    async def _stream(
        self, writer: asyncio.StreamWriter, head: bytes, body: bytes, *, cut: bool
    ) -> None:
        """A chunked body over about a second, one chunk per STREAM_INTERVAL."""
        writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(STREAM_CHUNKS):
            if cut and i == STREAM_CUT_AFTER:
                self._reset(writer)
            chunk = body[i * STREAM_CHUNK_BYTES : (i + 1) * STREAM_CHUNK_BYTES]
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.sleep(STREAM_INTERVAL)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
