"""The data path wired to fakes: no socket, no wall clock, every record kept.

A :class:`DataPath` is one proxy's :class:`~sidecar_proxy.http.context.ProxyContext` on a
:class:`~support.fakes.FakeLoop`, with a :class:`~support.fakes.FakePool` for its app side and
its deadline ticker running. :meth:`DataPath.client` connects a real
:class:`~sidecar_proxy.http.h1.client.H1ClientConnection` to a fake transport; the test then
plays both peers with bytes and moves the clock with :meth:`DataPath.advance`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sidecar_proxy.config import Settings
from sidecar_proxy.hooks.load import Hooks
from sidecar_proxy.http.context import TICK, ProxyContext
from sidecar_proxy.http.exchange import Exchange
from sidecar_proxy.http.h1.client import H1ClientConnection
from sidecar_proxy.http.phase import CONNECTING, Phase
from sidecar_proxy.lifecycle.health import HealthState
from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.record import Record
from sidecar_proxy.observe.recorder import Recorder
from support.client import Response, ResponseParse
from support.fakes import App, FakeLoop, FakePool, FakeTimer, FakeTransport

SETTINGS: dict[str, Any] = {"upstream_host": "127.0.0.1", "upstream_port": 3000}

# Deadlines are checked by the context's ticker every TICK seconds, so a deadline is met at the
# first tick after it: within TICK, plus the rounding the ticker's float clock accumulates.
NOT_YET = 0.001  # how far before a boundary a test looks
TICKED = TICK + NOT_YET  # how far after a boundary the tick that enforces it has come


class KeptRecords:
    """The real recorder (metrics and all), wrapped to keep every record it is given: a
    ``RecordSink`` by composition, since a compiled Recorder takes no interpreted subclass."""

    __slots__ = ("recorder", "records", "started_count")

    def __init__(self, metrics: Metrics) -> None:
        self.recorder = Recorder(metrics, PathLabeler(200), None)
        self.records: list[Record] = []
        self.started_count = 0

    def started(self) -> None:
        self.recorder.started()
        self.started_count += 1

    def finished(self, rec: Record) -> None:
        self.recorder.finished(rec)
        self.records.append(rec)


@dataclass
class Client:
    """One client connection as the test plays it: the real client leg and its transport."""

    conn: H1ClientConnection
    transport: FakeTransport

    def send(self, data: bytes) -> None:
        """The client sends ``data``; then the loop runs what that scheduled."""
        self.conn.data_received(data)
        self.transport.loop.run_ready()

    def received(self) -> bytes:
        """What the proxy wrote to the client since the last call."""
        return self.transport.take()

    def responses(self) -> list[Response]:
        """What the proxy wrote since the last call, parsed; a trailing incomplete response is
        included with ``complete`` False."""
        p = ResponseParse()
        p.parser.feed_data(self.received())
        out = list(p.done)
        if p.partial is not None and p.partial.status:
            out.append(p.partial)
        return out

    def response(self) -> Response:
        """The one response written since the last call."""
        responses = self.responses()
        assert len(responses) == 1, responses
        return responses[0]

    @property
    def exchange(self) -> Exchange:
        """The exchange the connection serves now (the head of its queue)."""
        assert self.conn.queue, "no exchange in progress"
        return self.conn.queue[0]

    @property
    def closed(self) -> bool:
        return self.transport.closed


class DataPath:
    """A proxy made of the real data path and fakes for everything around it."""

    def __init__(self, **settings: Any) -> None:
        self.loop = FakeLoop()
        self.settings = dataclasses.replace(Settings(), **{**SETTINGS, **settings})
        self.metrics = Metrics()
        self.recorder = KeptRecords(self.metrics)
        self.health = HealthState()
        self.pool = FakePool(self.loop)
        self.ctx = ProxyContext(
            self.loop.as_loop(),
            self.settings,
            self.metrics,
            self.recorder,
            self.health,
            pool=self.pool,
        )
        self.ctx.start_ticking()

    @classmethod
    def hooked(cls, hooks: Hooks, **settings: Any) -> DataPath:
        """A data path running ``hooks``, as a proxy does once they are loaded."""
        dp = cls(**settings)
        dp.ctx.reconfigure(dp.settings, hooks)
        return dp

    def client(self, peer: str = "192.0.2.7") -> Client:
        transport = FakeTransport(self.loop, (peer, 41000))
        conn = H1ClientConnection(self.ctx)
        transport.connect(conn)
        return Client(conn, transport)

    def begin(self, raw: bytes | None = None) -> tuple[Client, Exchange]:
        """A new client sends ``raw`` (a plain GET by default); its exchange is started."""
        c = self.client()
        c.send(request() if raw is None else raw)
        return c, c.exchange

    def advance(self, seconds: float) -> None:
        self.loop.advance(seconds)

    def backoff(self, ex: Exchange) -> FakeTimer:
        """The timer that will start ``ex``'s next attempt."""
        (timer,) = self.loop.timers_for(ex._after_backoff)
        return timer

    @property
    def records(self) -> list[Record]:
        return self.recorder.records

    @property
    def record(self) -> Record:
        """The one finished request's record."""
        assert len(self.records) == 1, [(r.method, r.path, r.status) for r in self.records]
        return self.records[0]

    def app_of(self, client: Client) -> App:
        """The app connection the client's current exchange is bound to; if it is still
        connecting, its connect succeeds now."""
        if client.exchange.phase is CONNECTING:
            assert len(self.pool.wanted()) == 1, "which connect is the client's?"
            return self.pool.accept()
        leg = client.exchange.app
        assert leg is not None, "the exchange has no app leg"
        return self.pool.app_of(leg)


def phase(ex: Exchange) -> Phase:
    """The exchange's phase, read through a call: after ``assert ex.phase is X`` mypy would
    otherwise take the attribute to stay X through the events that follow."""
    return ex.phase


def request(
    method: str = "GET",
    target: str = "/",
    body: bytes = b"",
    *,
    headers: str = "",
    version: str = "1.1",
    rid: str = "rid-1",
) -> bytes:
    """A request with a fixed X-Request-ID (so responses are exact bytes) and a
    Content-Length body when ``body`` is given."""
    lines = f"{method} {target} HTTP/{version}\r\nHost: svc\r\nX-Request-ID: {rid}\r\n{headers}"
    if body:
        lines += f"Content-Length: {len(body)}\r\n"
    return lines.encode() + b"\r\n" + body


def response(status: int = 200, body: bytes = b"ok", headers: str = "", reason: str = "") -> bytes:
    """An app response with a Content-Length body."""
    reason = reason or {200: "OK", 503: "Service Unavailable"}.get(status, "X")
    head = f"HTTP/1.1 {status} {reason}\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body: each chunk framed, then the last chunk with ``trailers``."""
    out = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks)
    return out + b"0\r\n" + trailers + b"\r\n"
