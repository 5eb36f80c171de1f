"""The HTTP/2 app leg (``UPSTREAM_PROTOCOL=h2c``): attempts as streams over few connections.

:class:`H2AppPool` is the :class:`~sidecar_proxy.http.legs.AppPool`: an attempt gets an
:class:`H2AppStream` on the oldest connection that has room under the app's
``SETTINGS_MAX_CONCURRENT_STREAMS``, and another connection is opened only when every one is
full. Attempts that arrive while a connection is being opened wait for that one instead of each
opening their own.

What the app never saw is said so (RFC 9113 §8.7): a stream the app refuses (REFUSED_STREAM),
or one above the last stream id of its GOAWAY, is reported with
:meth:`~sidecar_proxy.http.legs.AppEvents.app_refused`, which the exchange retries like a refused
connection, whatever the method. A connection that sent GOAWAY takes no new streams; it closes
once the ones it still serves are done.

Keepalive (``H2_KEEPALIVE_INTERVAL``, off by default), as Envoy's ``connection_keepalive``: a
connection the app has sent nothing on for the interval gets a PING, and one that then stays
silent for ``H2_KEEPALIVE_TIMEOUT`` is closed, so a dead app (a host gone without a FIN, a
half-open NAT entry) costs the next calls a retry on a new connection rather than their
deadline. Any frame counts as the answer, as in Envoy: a connection that is receiving is alive.
One timer per pool checks every connection, every half of the shorter of the two settings, so
each acts up to that much late; a read costs one flag store.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final

from sidecar_proxy.config import Settings
from sidecar_proxy.http.fields import RequestHead
from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.connection import (
    ConnectionFault,
    H2Connection,
    Limits,
    Stream,
    as_transport,
)
from sidecar_proxy.http.h2.heads import (
    Malformed,
    out_trailers,
    request_fields,
    response_head,
    trailer_fields,
)
from sidecar_proxy.http.h2.hpack import Field
from sidecar_proxy.http.legs import AppEvents, ConnectCallback, Trailers
from sidecar_proxy.observe.metrics import H2Counts

_SCHEME: Final = b"http"
_KEEPALIVE_PING: Final = b"alive\x00\x00\x00"


def app_limits(s: Settings) -> Limits:
    return Limits(
        max_streams=s.h2_max_concurrent_streams,
        stream_window=s.h2_stream_window,
        window=s.h2_connection_window,
        header_list_bytes=2 * s.max_header_bytes,
        reset_rate=s.h2_max_reset_rate,
        control_rate=s.h2_max_control_frame_rate,
        send_stall=s.h2_send_stall_timeout,
    )


class H2AppPool:
    __slots__ = (
        "_closed",
        "_conns",
        "_opening",
        "_pinger",
        "_sweeper",
        "connect_timeout",
        "counts",
        "host",
        "idle_timeout",
        "keepalive",
        "keepalive_timeout",
        "limits",
        "loop",
        "on_connection",
        "port",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        on_connection: Callable[[bool], None],
        counts: H2Counts,
    ) -> None:
        self.loop = loop
        self.host = settings.upstream_host
        self.port = settings.upstream_port
        self.connect_timeout = settings.connect_timeout
        self.idle_timeout = settings.upstream_idle_timeout
        self.limits = app_limits(settings)
        self.on_connection = on_connection  # metrics hook: True when an open one is used
        self.counts = counts  # the app leg's sidecar_h2_* numbers
        self.keepalive = settings.h2_keepalive_interval  # 0: off
        self.keepalive_timeout = settings.h2_keepalive_timeout
        self._pinger: asyncio.TimerHandle | None = None
        self._conns: list[H2AppConnection] = []  # oldest first: streams gather on few
        self._opening: asyncio.Future[H2AppConnection] | None = None
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def idle_count(self) -> int:
        """Open connections without a stream."""
        return sum(1 for conn in self._conns if not conn.active)

    def _with_room(self) -> H2AppConnection | None:
        for conn in self._conns:
            if conn.has_room():
                return conn
        return None

    def take_idle(self) -> H2AppStream | None:
        conn = self._with_room()
        if conn is None:
            return None
        self.on_connection(True)
        return conn.new_stream()

    def connect(self, done: ConnectCallback) -> asyncio.Task[None]:
        return self.loop.create_task(self._connect(done))

    async def _connect(self, done: ConnectCallback) -> None:
        while True:
            conn = self._with_room()
            if conn is not None:
                self.on_connection(True)
                done(conn.new_stream(), None)
                return
            opening = self._opening
            if opening is None:
                opening = self._opening = self.loop.create_future()
                self.loop.create_task(self._open(opening))
            try:
                # shielded: one waiter giving up must not cancel the others' connection
                fresh = await asyncio.shield(opening)
            except (OSError, TimeoutError) as exc:
                done(None, exc)
                return
            if not fresh.peer_max_streams:
                # SETTINGS_MAX_CONCURRENT_STREAMS 0: opening more would never help
                done(None, ConnectionRefusedError("the app takes no streams"))
                return

    async def _open(self, opening: asyncio.Future[H2AppConnection]) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: H2AppConnection(self), self.host, self.port
                )
                await conn.ready  # the app's SETTINGS: its stream limit is known
        except (OSError, TimeoutError, ConnectionFault) as exc:
            self._opening = None
            opening.set_exception(exc if not isinstance(exc, ConnectionFault) else OSError(exc))
            opening.exception()  # retrieved: waiters that gave up must not leave it unread
            return
        self._opening = None
        if self._closed:
            conn.close()
            opening.set_exception(OSError("pool closed"))
            opening.exception()
            return
        self.on_connection(False)
        self.add(conn)
        opening.set_result(conn)

    def add(self, conn: H2AppConnection) -> None:
        """A connection is open and its SETTINGS have come: it takes streams from now on."""
        self._conns.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)
        if self.keepalive and self._pinger is None:
            self._pinger = self.loop.call_later(self._keepalive_step(), self._check_alive)

    def _keepalive_step(self) -> float:
        return min(self.keepalive, self.keepalive_timeout) / 2

    def _check_alive(self) -> None:
        """PING the connections the app has been silent on; close those that did not answer."""
        self._pinger = None
        now = self.loop.time()
        for conn in list(self._conns):
            conn.check_alive(now, self.keepalive, self.keepalive_timeout)
        if self._conns:
            self._pinger = self.loop.call_later(self._keepalive_step(), self._check_alive)

    def forget(self, conn: H2AppConnection) -> None:
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    def _sweep(self) -> None:
        """Close connections without streams for longer than the idle timeout."""
        self._sweeper = None
        deadline = self.loop.time() - self.idle_timeout
        for conn in list(self._conns):
            if conn.idle_since and conn.idle_since < deadline:
                self.forget(conn)
                conn.close()
        if self._conns:
            self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


class H2AppConnection(H2Connection):
    __slots__ = (
        "active",
        "gone_away",
        "heard",
        "heard_at",
        "idle_since",
        "next_id",
        "ping_sent",
        "pool",
        "ready",
        "touched",
    )

    def __init__(self, pool: H2AppPool) -> None:
        super().__init__(pool.loop, pool.limits, pool.counts)
        self.pool = pool
        # keepalive: whether anything came since the last check, when the last check saw it,
        # and when our PING went out (0: none in flight)
        self.heard = False
        self.heard_at = self.clock()
        self.ping_sent = 0.0
        self.next_id = 1
        self.active = 0  # streams handed out and not yet released: what counts against room
        self.gone_away = False
        self.idle_since = 0.0
        self.ready: asyncio.Future[None] = pool.loop.create_future()
        self.touched: list[H2AppStream] = []  # streams with events in the current read

    def initial_settings(self) -> list[tuple[int, int]]:
        limits = self.limits
        return [
            (F.ENABLE_PUSH, 0),
            (F.INITIAL_WINDOW_SIZE, limits.stream_window),
            (F.MAX_HEADER_LIST_SIZE, limits.header_list_bytes),
        ]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.out.append(F.PREFACE)
        self.start(as_transport(transport))
        self.write_out()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionFault(F.NO_ERROR, "closed before its SETTINGS"))
            self.ready.exception()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self.feed(data)
        touched = self.touched
        if touched:
            self.touched = []
            for st in touched:
                events = st.events
                if events is not None:
                    events.read_done()

    def on_peer_settings(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def check_alive(self, now: float, interval: float, timeout: float) -> None:
        """The keepalive's check of this connection (see the module docstring)."""
        if self.heard:
            self.heard = False
            self.heard_at = now
            self.ping_sent = 0.0
        elif self.ping_sent:
            if now - self.ping_sent >= timeout:
                self.counts.keepalive_timeout()
                self.pool.forget(self)
                self.cut()
            return
        if now - self.heard_at >= interval:
            self.ping_sent = now
            self.out.append(F.ping(_KEEPALIVE_PING))
            self.write_out()

    def has_room(self) -> bool:
        return (
            not self.gone_away
            and not self.closing
            and self.active < self.peer_max_streams
            and self.next_id <= F.MAX_STREAM_ID
        )

    def new_stream(self) -> H2AppStream:
        self.active += 1
        self.idle_since = 0.0
        return H2AppStream(self)

    def stream_released(self) -> None:
        self.active -= 1
        if not self.active:
            if self.gone_away:
                self.close()
            else:
                self.idle_since = self.clock()

    # == the frame layer's questions ============================================================

    def is_peer_stream(self, stream_id: int) -> bool:
        return not stream_id & 1  # only server push would open one: never enabled

    def last_peer_stream(self) -> int:
        return 0

    def next_own_stream(self) -> int:
        return self.next_id

    def new_peer_stream(self, stream_id: int, fields: list[Field], end_stream: bool) -> None:
        raise ConnectionFault(F.PROTOCOL_ERROR, "the app opened a stream")

    def refuse(self, sid: int, code: int) -> None:
        raise ConnectionFault(F.PROTOCOL_ERROR, "the app opened a stream")

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        self.gone_away = True
        self.pool.forget(self)
        for st in list(self.streams.values()):
            if st.id > last_stream_id:
                assert isinstance(st, H2AppStream)
                self.drop(st)
                st.refused()
        if not self.active:
            self.close()


class H2AppStream(Stream):
    """One attempt's stream: the app leg the exchange talks to."""

    __slots__ = ("app_conn", "events", "final", "released")

    def __init__(self, conn: H2AppConnection) -> None:
        super().__init__(conn, 0)  # the id is taken when the request goes out, in order
        self.app_conn = conn
        self.events: AppEvents | None = None
        self.final = False  # the final (non-1xx) response head has come
        self.released = False

    # == AppLeg ================================================================================

    def bind(self, events: AppEvents) -> None:
        self.events = events

    def send_request(
        self, head: RequestHead, added: list[bytes], body: list[bytes], end: Trailers | None
    ) -> None:
        conn = self.app_conn
        if conn.gone_away or conn.closing:
            # it went away between the handing out and now: the app never saw this
            conn.loop.call_soon(self.refused)
            return
        self.id = conn.next_id
        conn.next_id += 2
        self.send_window = conn.peer_initial_window
        conn.open_stream(self)
        self.head = request_fields(head, added, _SCHEME)
        for chunk in body:
            self.pending.append(chunk)
            self.pending_bytes += len(chunk)
        if end is not None:
            self.end_pending = True
            if end:
                self.trailers = out_trailers(end)
        conn.pump(self)
        conn.schedule_write()

    def send_body(self, data: bytes) -> None:
        if self.local_open and self.id:
            conn = self.conn
            conn.queue_body(self, data)
            conn.pump(self)
            conn.schedule_write()

    def send_end(self, trailers: Trailers) -> None:
        if not self.local_open or not self.id:
            return
        self.end_pending = True
        if trailers:
            self.trailers = out_trailers(trailers)
        self.conn.pump(self)
        self.conn.schedule_write()

    def pause_reading(self) -> None:
        self.pause_receiving()

    def resume_reading(self) -> None:
        self.resume_receiving()

    def release(self, complete: bool) -> None:
        self._end()

    def abandon(self) -> None:
        self._end()

    def _end(self) -> None:
        self.events = None
        if self.released:
            return
        self.released = True
        conn = self.app_conn
        if self.id in conn.streams and (self.remote_open or self.local_open):
            conn.reset(self, F.CANCEL)  # what is left of it is not wanted
            conn.schedule_write()
        conn.stream_released()

    def start_tunnel(self) -> None:
        # never called: an HTTP/2 app cannot answer 101 (RFC 9113 §8.6), see on_headers
        self.abandon()

    def send_raw(self, data: bytes) -> None:
        self.abandon()

    # == from the frame layer ===================================================================

    def _touch(self) -> AppEvents | None:
        events = self.events
        if events is not None and self not in self.app_conn.touched:
            self.app_conn.touched.append(self)
        return events

    def on_headers(self, fields: list[Field], end_stream: bool) -> None:
        events = self._touch()
        if events is None:
            return
        if self.final:
            if not end_stream:
                self._malformed(events, "trailers without END_STREAM")
                return
            try:
                trailers = trailer_fields(fields)
            except Malformed as exc:
                self._malformed(events, str(exc))
                return
            events.response_end(self, trailers)
            return
        try:
            resp = response_head(fields)
        except Malformed as exc:
            self._malformed(events, str(exc))
            return
        if resp.status == 101:
            self._malformed(events, "101 over HTTP/2")
            return
        if resp.status < 200:
            if end_stream:
                self._malformed(events, "a 1xx response ends the stream")
                return
            events.response_head(self, resp)
            events.response_end(self, None)  # the 1xx is over; the final head follows
            return
        self.final = True
        events.response_head(self, resp)
        if end_stream and self.events is not None:
            events.response_end(self, None)

    def _malformed(self, events: AppEvents, reason: str) -> None:
        self.conn.reset(self, F.PROTOCOL_ERROR)
        events.app_protocol_error(self, reason)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        events = self._touch()
        if events is None:
            return
        if not self.final:
            self._malformed(events, "DATA before the response head")
            return
        if data:
            events.response_body(data)
        if end_stream and self.events is not None:
            events.response_end(self, None)

    def on_reset(self, code: int) -> None:
        events = self._touch()
        if events is None:
            return
        if code == F.REFUSED_STREAM and not self.final:
            events.app_refused(self)  # RFC 9113 §8.7: no processing happened
        else:
            events.app_lost(self, ConnectionResetError(f"stream reset by the app ({code})"))

    def refused(self) -> None:
        events = self.events
        if events is not None:
            events.app_refused(self)

    def on_write_paused(self, paused: bool) -> None:
        events = self.events
        if events is not None:
            events.app_write_paused(paused)
