"""HTTP/2 connections driven without sockets: bytes in by hand, frames out read by the ``h2``
library as the peer, time and the event loop's callbacks under the test's control."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.settings

from sidecar_proxy.config import Settings
from sidecar_proxy.http.context import ProxyContext
from sidecar_proxy.http.fields import RequestHead, ResponseHead
from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.server import H2ClientStream, H2ServerConnection
from sidecar_proxy.http.legs import ClientEvents, ClientLeg, Trailers
from sidecar_proxy.lifecycle.health import HealthState
from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.recorder import Recorder
from support.fakeclock import FakeClock


class FakeLoop:
    """The two things a connection asks of its loop: the time, and a callback soon."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.clock.now

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.soon.append((callback, args))

    def run_soon(self) -> None:
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def take(self) -> bytes:
        data = bytes(self.data)
        self.data.clear()
        return data


class StubExchange:
    """A :class:`ClientEvents` that answers by itself, as an app would: 200 with ``body`` (or the
    request's body, for a POST) once the request is complete. Records what it was told."""

    def __init__(
        self, leg: ClientLeg, head: RequestHead, body_follows: bool, body: bytes = b"hello"
    ) -> None:
        self.leg = leg
        self.head = head
        self.body_follows = body_follows
        self.body = body
        self.received: list[bytes] = []
        self.trailers: Trailers | None = None
        self.rejected: tuple[int, str] | None = None
        self.gone = False
        self.paused: list[bool] = []
        self.answer_on_end = True
        self.finished = False
        self.request_complete = False
        self.ticks = 0

    def start(self) -> None:
        if self.rejected is not None:
            self.reply_local(*self.rejected)
        elif not self.body_follows:  # as the real exchange, complete without request_end
            self.request_end([])

    def reject(self, status: int, detail: str) -> None:
        self.rejected = (status, detail)
        if self.finished:
            return
        self.reply_local(status, detail)

    def reply_local(self, status: int, detail: str) -> None:
        self.leg.send_local(status, detail.encode(), b"text/plain", None, b"X-Request-ID: stub\r\n")
        self.done()

    def request_body(self, data: bytes) -> None:
        self.received.append(data)

    def request_end(self, trailers: Trailers) -> None:
        self.request_complete = True
        self.trailers = trailers
        if self.answer_on_end:
            self.respond()

    def respond(self, trailers: Trailers | None = None) -> None:
        self.start_response()
        self.leg.send_end(trailers)
        self.leg.flush()
        self.done()

    def start_response(self) -> None:
        """The head and the body so far, but not the end: the exchange goes on."""
        body = b"".join(self.received) if self.head.method == b"POST" else self.body
        resp = ResponseHead()
        resp.status = 200
        resp.lines = [b"Content-Type: text/plain\r\n"]
        resp.names = [b"content-type"]
        self.leg.send_head(200, resp, [b"X-Request-ID: stub\r\n"], True)
        if body:
            self.leg.send_body(body)
        self.leg.flush()

    def done(self) -> None:
        if not self.finished:
            self.finished = True
            self.leg.exchange_done(self)

    def client_gone(self) -> None:
        self.gone = True
        self.done()

    def client_write_paused(self, paused: bool) -> None:
        self.paused.append(paused)

    def tunnel_data(self, data: bytes) -> None:
        raise AssertionError("no tunnel over HTTP/2")

    def on_tick(self, now: float) -> None:
        self.ticks += 1


def new_context(loop: asyncio.AbstractEventLoop, settings: Settings) -> ProxyContext:
    metrics = Metrics()
    recorder = Recorder(metrics, PathLabeler(10), None)
    return ProxyContext(loop, settings, metrics, recorder, HealthState())


class H2Pair:
    """Our server connection and an ``h2`` client connection, wired by hand."""

    def __init__(self, answer: bool = True, **overrides: Any) -> None:
        self.clock = FakeClock(1000.0)
        self.loop = FakeLoop(self.clock)
        self.settings = dataclasses.replace(Settings(), **overrides)
        self.exchanges: list[StubExchange] = []
        self.answer = answer

        def new_exchange(
            conn: H2ServerConnection, leg: H2ClientStream, head: RequestHead, body_follows: bool
        ) -> ClientEvents:
            ex = StubExchange(leg, head, body_follows)
            ex.answer_on_end = self.answer
            self.exchanges.append(ex)
            return ex

        self.ctx = new_context(cast(asyncio.AbstractEventLoop, self.loop), self.settings)
        self.transport = FakeTransport()
        self.conn = H2ServerConnection(self.ctx, new_exchange)
        self.conn.adopt(self.transport, b"X-Forwarded-Proto: http\r\n", None)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.client = h2.connection.H2Connection(config)
        self.client.initiate_connection()
        self.events: list[h2.events.Event] = []

    def send(self) -> None:
        """What the client has queued goes to our connection."""
        data = self.client.data_to_send()
        if data:
            self.conn.data_received(data)

    def receive(self) -> list[h2.events.Event]:
        """What our connection wrote goes to the client; its events are returned."""
        self.loop.run_soon()
        events = self.client.receive_data(self.transport.take())
        self.events += events
        return events

    def exchange(self) -> list[h2.events.Event]:
        self.send()
        events = self.receive()
        self.send()  # the client's acknowledgements
        return events

    def request(
        self,
        path: bytes = b"/",
        method: bytes = b"GET",
        body: bytes = b"",
        extra: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
    ) -> int:
        sid: int = self.client.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"example.test"),
            *(extra or []),
        ]
        self.client.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.client.send_data(sid, body, end_stream=end)
        return sid

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.conn.on_tick(self.clock.now)
        self.loop.run_soon()


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames in ``data``: type, flags, stream id, payload."""
    found = []
    pos = 0
    while pos < len(data):
        hi, lo, ftype, flags, sid = F.HEAD.unpack_from(data, pos)
        size = (hi << 16) | lo
        found.append((ftype, flags, sid & 0x7FFFFFFF, data[pos + 9 : pos + 9 + size]))
        pos += 9 + size
    return found


def of(events: list[h2.events.Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def initial_window(pair: H2Pair, size: int) -> None:
    """The client advertises a stream window of ``size``."""
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size})
    pair.exchange()
