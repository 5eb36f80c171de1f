"""The HTTP/2 client leg: one connection from a client, each of its streams one exchange.

A client speaks HTTP/2 on the proxy's one port by sending the connection preface first (prior
knowledge, RFC 9113 §3.3; ALPN ``h2`` will do the same once TLS lands). The HTTP/1.1 client leg
reads the first bytes of every connection; when they are the preface it hands the transport to
:func:`take_over`, which swaps the protocol (``transport.set_protocol``) and feeds it those
bytes. Nothing is parsed twice and an HTTP/1.1 connection pays one flag test per read.

Each stream is an :class:`H2ClientStream`, which is a :class:`~sidecar_proxy.http.legs.ClientLeg`
of its own: streams are answered independently, so an exchange starts as soon as its head is
complete, and a stream's flow control is its own (see :mod:`.connection`).

Drain (RFC 9113 §6.8), from the moment shutdown begins (``ctx.goodbye``, seen at the next tick):
:meth:`H2ServerConnection.drain` sends GOAWAY with the largest stream id and a PING; when the
PING comes back (one round trip, so every stream the client opened before it saw the GOAWAY has
arrived), or after ``_DRAIN_RTT`` at most, the real last stream id follows. Streams up to it are
served to their end; later ones are ignored, and the client retries them elsewhere. The
connection closes when its last stream is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from sidecar_proxy.config import Settings
from sidecar_proxy.http.context import ProxyContext
from sidecar_proxy.http.exchange import Exchange, new_record
from sidecar_proxy.http.fields import RequestHead, ResponseHead
from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.connection import H2Connection, Limits, Stream, as_transport
from sidecar_proxy.http.h2.heads import (
    Malformed,
    local_fields,
    out_trailers,
    request_head,
    response_fields,
    trailer_fields,
)
from sidecar_proxy.http.h2.hpack import Field
from sidecar_proxy.http.legs import ClientEvents, Trailers
from sidecar_proxy.observe.metrics import FLOOD_HEADER_TIME
from sidecar_proxy.tls.identity import Peer

_DRAIN_PING: Final = b"drain\x00\x00\x00"
# as the HTTP/1.1 leg answers every request of a client whose certificate is not let in
_FORBIDDEN: Final = (403, "the client certificate's identity is not allowed")
_DRAIN_RTT: Final = 1.0  # the longest a drain waits for its PING to come back


def server_limits(s: Settings) -> Limits:
    return Limits(
        max_streams=s.h2_max_concurrent_streams,
        stream_window=s.h2_stream_window,
        window=s.h2_connection_window,
        # The request head limit is MAX_HEADER_BYTES (answered 431, like HTTP/1.1); decoding
        # stops at twice it, which must then be a connection error: HPACK state cannot be
        # resynchronised after an abandoned block.
        header_list_bytes=2 * s.max_header_bytes,
        reset_rate=s.h2_max_reset_rate,
        control_rate=s.h2_max_control_frame_rate,
        send_stall=s.h2_send_stall_timeout,
    )


def new_exchange(
    conn: H2ServerConnection, leg: H2ClientStream, head: RequestHead, body_follows: bool
) -> ClientEvents:
    ctx = conn.ctx
    ex = Exchange(ctx, leg, head, new_record(head, conn.remote_addr, conn.tls_peer), body_follows)
    ctx.recorder.started()
    return ex


ExchangeFactory = Callable[
    ["H2ServerConnection", "H2ClientStream", RequestHead, bool], ClientEvents
]


def take_over(
    ctx: ProxyContext,
    transport: asyncio.BaseTransport,
    data: bytes,
    proto_line: bytes,
    tls_peer: Peer | None,
) -> None:
    """An HTTP/1.1 client leg saw the preface in ``data`` (with prior knowledge, or after ALPN
    chose h2): from now on this is HTTP/2. The leg passes on what it knows of the connection:
    its ``X-Forwarded-Proto`` line and, over TLS, the client's identity.

    The HTTP/1.1 leg has counted the connection as opened and forgets it; this connection takes
    its place among the context's connections and will count it closed."""
    conn = H2ServerConnection(ctx)
    transport.set_protocol(conn)
    conn.adopt(transport, proto_line, tls_peer)
    conn.data_received(data)


class H2ServerConnection(H2Connection):
    __slots__ = (
        "_deadline",
        "_drain_step",
        "_gaps",
        "_last_id",
        "_new_exchange",
        "_preface",
        "ctx",
        "peer",
        "proto_line",
        "remote_addr",
        "tls_peer",
        "xfcc_line",
        "xff_line",
    )

    def __init__(self, ctx: ProxyContext, make_exchange: ExchangeFactory = new_exchange) -> None:
        super().__init__(ctx.loop, server_limits(ctx.settings), ctx.metrics.h2.client)
        self.ctx = ctx
        self._new_exchange = make_exchange
        self.remote_addr = ""
        self.peer = b""
        self.xff_line = b""
        self.proto_line = b""
        self.tls_peer: Peer | None = None
        self.xfcc_line = b""
        self._preface = F.PREFACE  # what is still to come of it
        self._last_id = 0
        # ids the client skipped (RFC 9113 §5.1.1 lets it), as (first, last) ranges: HEADERS on
        # one later is a connection error, not a frame on a closed stream; a few are kept
        self._gaps: list[tuple[int, int]] = []
        self._drain_step = 0  # 1: GOAWAY with the largest id sent; 2: the real last id sent
        # the preface and SETTINGS within the header timeout; later, the idle timeout
        self._deadline = self.clock() + ctx.settings.client_header_timeout

    # == lifecycle ===============================================================================

    def adopt(
        self, transport: asyncio.BaseTransport, proto_line: bytes, tls_peer: Peer | None
    ) -> None:
        """Take a connection the HTTP/1.1 leg accepted (see :func:`take_over`)."""
        peer = transport.get_extra_info("peername")
        self.remote_addr = peer[0] if peer else ""
        self.peer = self.remote_addr.encode()
        self.xff_line = b"X-Forwarded-For: " + self.peer + b"\r\n"
        self.proto_line = proto_line
        self.tls_peer = tls_peer
        if tls_peer is not None:
            self.xfcc_line = tls_peer.xfcc_line
        self.ctx.connections.add(self)
        self.start(as_transport(transport))

    def connection_lost(self, exc: Exception | None) -> None:
        connections = self.ctx.connections
        if self in connections:
            connections.discard(self)
            self.ctx.metrics.connection_closed()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        preface = self._preface
        if preface:
            n = min(len(data), len(preface))
            if data[:n] != preface[:n]:
                self.close(F.PROTOCOL_ERROR, "invalid connection preface")
                return
            self._preface = preface[n:]
            data = data[n:]
            if not data:
                return
        self.feed(data)

    # == streams =================================================================================

    def is_peer_stream(self, stream_id: int) -> bool:
        return bool(stream_id & 1)

    def last_peer_stream(self) -> int:
        return self._last_id

    def was_opened(self, sid: int) -> bool:
        return not any(first <= sid <= last for first, last in self._gaps)

    def _advance(self, stream_id: int) -> None:
        expected = self._last_id + 2 if self._last_id else 1
        if stream_id > expected:
            gaps = self._gaps
            gaps.append((expected, stream_id - 2))
            if len(gaps) > 16:
                del gaps[0]
        self._last_id = stream_id

    def new_peer_stream(self, stream_id: int, fields: list[Field], end_stream: bool) -> None:
        self._advance(stream_id)
        if self._drain_step == 2 and stream_id > self.goaway_sent:
            return  # after our last GOAWAY: ignored, the client retries it (RFC 9113 §6.8)
        if len(self.streams) >= self.limits.max_streams:
            self.refuse(stream_id, F.REFUSED_STREAM)
            return
        s = self.ctx.settings
        try:
            head, problem = request_head(fields, end_stream, s.max_header_bytes, s.max_header_count)
        except Malformed:
            self.refuse(stream_id, F.PROTOCOL_ERROR)
            return
        st = H2ClientStream(self, stream_id, head.method == b"HEAD")
        self.open_stream(st)
        length = head.content_length
        if end_stream:
            st.remote_open = False
        elif length is not None:
            st.length_left = length
        limit = s.max_request_body_bytes
        tls_peer = self.tls_peer
        if tls_peer is not None and not tls_peer.allowed:
            problem = _FORBIDDEN
        elif problem is None and limit and length is not None and length > limit:
            problem = (413, "request body too large")
        ex = self._new_exchange(self, st, head, not end_stream)
        st.ex = ex
        if problem is not None:
            ex.reject(*problem)
        ex.start()

    def refuse(self, sid: int, code: int) -> None:
        if sid > self._last_id:
            self._advance(sid)
        self.reset_unopened(sid, code)

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        # The client opens no more streams; those it has go on. A GOAWAY with an error means
        # it is gone in all but name.
        if code != F.NO_ERROR or not self.streams:
            self.close()

    def on_idle(self) -> None:
        if self._drain_step == 2:
            self.close()
        else:
            self._deadline = self.clock() + self.ctx.settings.client_idle_timeout

    # == drain ===================================================================================

    def drain(self) -> None:
        """The first step of a graceful shutdown; the rest follows by itself (module doc)."""
        if self._drain_step or self.closing:
            return
        self._drain_step = 1
        self.send_goaway(F.MAX_STREAM_ID, F.NO_ERROR)
        self.out.append(F.ping(_DRAIN_PING))
        self._deadline = self.clock() + _DRAIN_RTT
        self.schedule_write()

    def on_ping_ack(self, payload: bytes) -> None:
        if payload == _DRAIN_PING and self._drain_step == 1:
            self._final_goaway()

    def _final_goaway(self) -> None:
        self._drain_step = 2
        if not self.streams:
            self.close()
            return
        self.goaway_sent = self._last_id
        self.send_goaway(self._last_id, F.NO_ERROR)
        self.schedule_write()

    def close_if_idle(self) -> bool:
        """The server's drain: start the two-step GOAWAY; True once closed."""
        self.drain()
        return self.closing

    def close_transport(self) -> None:
        """The grace period is over: GOAWAY and close, whatever is still in flight."""
        self.close()

    def abort(self) -> None:
        """A bug of ours surfaced on this connection: cut it, and only it."""
        self.close(F.INTERNAL_ERROR)

    # == deadlines ===============================================================================

    def on_tick(self, now: float) -> None:
        if self.closing:
            return
        if (self._preface or not self.streams) and now >= self._deadline and self._drain_step != 1:
            self.close()  # no preface in time, or idle too long
            return
        if self.ctx.goodbye and not self._drain_step:
            self.drain()  # shutdown has begun: as HTTP/1.1 responses say Connection: close
        elif self._drain_step == 1 and now >= self._deadline:
            self._final_goaway()
        s = self.ctx.settings
        if self.hb_sid and now - self.hb_started >= s.client_header_timeout:
            self.counts.flood(FLOOD_HEADER_TIME)
            self.close(F.ENHANCE_YOUR_CALM, "header block not completed in time")
            return
        body_timeout = s.client_body_timeout
        for st in list(self.streams.values()):
            assert isinstance(st, H2ClientStream)
            st.on_tick(now, body_timeout)
        self.check_stalls(now)
        self.schedule_write()


class H2ClientStream(Stream):
    """One request and its response: the client leg of one exchange."""

    __slots__ = ("body_seen", "ex", "head_only", "last_data", "server_conn")

    def __init__(self, conn: H2ServerConnection, stream_id: int, head_only: bool) -> None:
        super().__init__(conn, stream_id)
        self.server_conn = conn
        self.ex: ClientEvents | None = None
        self.head_only = head_only  # a HEAD request: a response of ours gets no body
        self.body_seen = 0
        self.last_data = conn.clock()

    # == from the frame layer ======================================================================

    def on_headers(self, fields: list[Field], end_stream: bool) -> None:
        conn = self.conn
        if not end_stream:
            conn.stream_error(self, F.PROTOCOL_ERROR)  # RFC 9113 §8.1: trailers end the stream
            return
        try:
            trailers = trailer_fields(fields)
        except Malformed:
            conn.stream_error(self, F.PROTOCOL_ERROR)
            return
        ex = self.ex
        if ex is not None and not ex.finished:
            ex.request_end(trailers)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        ex = self.ex
        if ex is None or ex.finished:
            return
        if data:
            self.last_data = self.conn.clock()
            limit = self.server_conn.ctx.settings.max_request_body_bytes
            self.body_seen += len(data)
            if limit and self.body_seen > limit:
                ex.reject(413, "request body too large")
                return
            ex.request_body(data)
        if end_stream and not ex.finished:
            ex.request_end([])

    def on_reset(self, code: int) -> None:
        ex = self.ex
        self.ex = None
        if ex is not None and not ex.finished:
            ex.client_gone()

    def on_write_paused(self, paused: bool) -> None:
        ex = self.ex
        if ex is not None and not ex.finished:
            ex.client_write_paused(paused)

    def on_sent(self) -> None:
        if self.ex is None and self.remote_open:
            # RFC 9113 §8.1: the response is complete; the rest of the request is not wanted
            self.conn.reset(self, F.NO_ERROR)

    def on_tick(self, now: float, body_timeout: float) -> None:
        ex = self.ex
        if ex is None:
            return
        ex.on_tick(now)
        if (
            self.remote_open
            and not self.paused
            and not ex.finished
            and now - self.last_data >= body_timeout
        ):
            ex.reject(408, "request body timeout")

    # == ClientLeg =================================================================================

    @property
    def protocol(self) -> str:
        return "HTTP/2.0"

    @property
    def peer(self) -> bytes:
        return self.server_conn.peer

    @property
    def forwarded_for_line(self) -> bytes:
        return self.server_conn.xff_line

    @property
    def proto_line(self) -> bytes:
        return self.server_conn.proto_line

    @property
    def xfcc_line(self) -> bytes:
        return self.server_conn.xfcc_line

    def send_interim(self, status: int, resp: ResponseHead) -> None:
        conn = self.conn
        if not self.local_open:
            return
        block = conn.encoder.encode(response_fields(status, resp, []))
        F.header_block(self.id, block, False, conn.peer_max_frame, conn.out)

    def send_head(
        self, status: int, resp: ResponseHead, added: list[bytes], has_body: bool
    ) -> None:
        if not self.local_open:
            return  # reset meanwhile
        # Encoded only when pumped: until then it can be retracted, and HPACK state with it.
        self.head = response_fields(status, resp, added)
        if not has_body:
            self.end_pending = True

    def send_body(self, data: bytes) -> None:
        if self.local_open:
            self.conn.queue_body(self, data)

    def send_end(self, trailers: Trailers | None) -> None:
        if not self.local_open:
            return
        self.end_pending = True
        if trailers:
            self.trailers = out_trailers(trailers)
        self.flush()

    def send_local(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None,
        request_id_line: bytes,
    ) -> None:
        if not self.local_open:
            return
        self.pending.clear()
        self.pending_bytes = 0
        self.trailers = None
        self.head = local_fields(status, len(body), content_type, extra, request_id_line)
        self.end_pending = True
        if body and not self.head_only:
            self.pending.append(body)
            self.pending_bytes = len(body)
        self.flush()

    def retract(self) -> bool:
        if self.head is None:
            return False
        self.head = None
        self.end_pending = False
        return True

    def flush(self) -> None:
        conn = self.conn
        if self.local_open and (self.head is not None or self.pending or self.end_pending):
            conn.pump(self)
        conn.schedule_write()

    def abort(self) -> None:
        conn = self.conn
        conn.reset(self, F.INTERNAL_ERROR)
        conn.schedule_write()

    def start_tunnel(self) -> None:
        # An HTTP/2 request carries no Upgrade (RFC 9113 §8.6): a 101 for it is the app's error.
        self.abort()

    def send_raw(self, data: bytes) -> None:
        self.abort()

    def pause_request_body(self) -> None:
        self.pause_receiving()

    def resume_request_body(self) -> None:
        if self.paused:
            # the body timeout counts the client's silence from when we take data again
            self.last_data = self.conn.clock()
        self.resume_receiving()

    def exchange_done(self, ex: ClientEvents) -> None:
        self.ex = None
        if self.end_pending or not self.local_open:
            if not self.local_open and self.remote_open:
                self.conn.reset(self, F.NO_ERROR)  # complete response, request not wanted
        else:
            self.conn.reset(self, F.CANCEL)  # the exchange ended without a response end
        self.conn.schedule_write()
