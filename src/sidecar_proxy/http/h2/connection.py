"""The HTTP/2 frame layer both legs share: framing, stream states, flow control, floods.

One :class:`H2Connection` per TCP connection, subclassed for each side
(:mod:`~sidecar_proxy.http.h2.server` for clients, :mod:`~sidecar_proxy.http.h2.app` towards
the app), with one :class:`Stream` subclass per side for the leg objects the exchange talks to.

Why not the ``h2`` library: measured here (docs/benchmarks.md), one exchange through ``h2`` on
both sides costs several times our whole HTTP/1.1 request, most of it in its general stream
state machine and event objects. This layer does only what a proxy needs: it reads frames inline
in one loop, hands each stream's head and body straight to its leg, and writes everything one
read produced as one ``writelines``. HPACK is jh2's Rust codec (:mod:`.hpack`).

Errors follow RFC 9113 §5.4: a :class:`ConnectionFault` raised anywhere in the read loop becomes
a GOAWAY with its code and the connection closes; a stream error resets only that stream. Any
other exception is a bug of ours: it is logged and the connection closed with INTERNAL_ERROR,
never left to crash the loop.

Flow control (RFC 9113 §5.2, §6.9). Receiving: a stream's DATA is handed to its leg at once;
the credit for it (WINDOW_UPDATE) is given back only while the leg has not paused the stream,
i.e. while the other leg keeps draining what it is handed. So the bytes one stream holds are
bounded by its window, and all streams of a connection by the connection window. Credit goes out
in batches of half a window, so a small body costs no WINDOW_UPDATE at all. Sending: what does
not fit the peer's windows waits in the stream; past ``_HIGH`` bytes the stream reports itself
paused to its exchange, which then stops reading from the other leg. Streams wait for window
independently: a slow reader on one stream never holds back another.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Final, cast

from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.hpack import (
    Decoder,
    Encoder,
    Field,
    HpackError,
    HpackTooLarge,
    decode,
    new_decoder,
    new_encoder,
)
from sidecar_proxy.observe.metrics import (
    FLOOD_CONTROL_FRAMES,
    FLOOD_HEADER_BLOCK,
    FLOOD_HEADER_LIST,
    FLOOD_RAPID_RESET,
    H2Counts,
)
from sidecar_proxy.policy.ratelimit import TokenBuckets

log = logging.getLogger("sidecar_proxy.h2")

# Unsent response (or request) body per stream beyond which its exchange is told to stop
# reading from the other leg, and below which it is told to go on: uvloop's transport defaults.
_HIGH: Final = 64 * 1024
_LOW: Final = 16 * 1024

# Streams the peer opened and this side reset while the peer could still send on them are
# remembered, so that the frames the peer sent before it saw the reset are discarded rather than
# answered with an error (RFC 9113 §5.1, "closed"). A PING sent after the reset tells when the
# peer has seen it (§5.1's "other signals": the peer answers the PING after it has read the
# RST_STREAM, and whatever it sent before arrives before the answer), so the ids are forgotten
# when the PING comes back: the memory is what one round trip's resets take. Past this many
# (a peer that leaves PINGs unanswered) the oldest half is forgotten.
_RESET_MEMORY: Final = 1024
_FENCE_PING: Final = b"reset\x00\x00\x00"


class ConnectionFault(Exception):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with ``code``, then close."""

    def __init__(self, code: int, reason: str, flood: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.flood = flood  # the protection that tripped (observe.metrics.H2_FLOODS), if one did


class Limits:
    """What one side enforces and advertises, from the settings: the client leg makes one per
    connection, the app pool one for all of its own."""

    __slots__ = (
        "control_rate",
        "header_block_bytes",
        "header_list_bytes",
        "max_streams",
        "reset_rate",
        "send_stall",
        "stream_window",
        "window",
    )

    def __init__(
        self,
        *,
        max_streams: int,
        stream_window: int,
        window: int,
        header_list_bytes: int,
        reset_rate: int,
        control_rate: int,
        send_stall: float,
    ) -> None:
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.window = window
        # Decoded size (RFC 7541 §4.1) at which decoding stops: the HPACK bomb bound. The
        # per-request limit (431) is applied by the leg below this.
        self.header_list_bytes = header_list_bytes
        # Compressed bytes one header block (HEADERS and its CONTINUATIONs, 9 bytes charged for
        # each frame's header so that empty frames count too) may take: the CONTINUATION flood
        # bound (CVE-2024-27316).
        self.header_block_bytes = header_list_bytes
        self.reset_rate = reset_rate
        self.control_rate = control_rate
        self.send_stall = send_stall


class Stream:
    """One stream's frame-level state; the leg subclasses add what their exchange needs."""

    __slots__ = (
        "conn",
        "end_pending",
        "head",
        "held",
        "id",
        "length_left",
        "local_open",
        "paused",
        "pending",
        "pending_bytes",
        "recv_window",
        "remote_open",
        "reported_paused",
        "send_window",
        "stalled_since",
        "trailers",
        "unacked",
    )

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.remote_open = True  # the peer may still send on it
        self.local_open = True  # END_STREAM not yet framed by us
        self.send_window = conn.peer_initial_window
        self.recv_window = conn.limits.stream_window
        self.unacked = 0  # bytes consumed and not yet credited back
        self.held = 0  # bytes received while paused: credited on resume
        self.paused = False
        self.length_left = -1  # content-length still to come; -1: not declared
        # outbound, framed at the next pump: a head, body chunks, then the end
        self.head: list[Field] | None = None
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.end_pending = False
        self.trailers: list[Field] | None = None
        self.stalled_since = 0.0  # when the peer's window left data waiting; 0: not stalled
        self.reported_paused = False

    # -- what the frame layer tells a stream (the leg subclasses implement these) ----------------

    def on_headers(self, fields: list[Field], end_stream: bool) -> None:
        raise NotImplementedError

    def on_data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def on_reset(self, code: int) -> None:
        """The peer reset the stream, the stream had to be reset, or the connection is gone."""
        raise NotImplementedError

    def on_write_paused(self, paused: bool) -> None:
        raise NotImplementedError

    def on_sent(self) -> None:
        """END_STREAM has been framed: everything of ours on this stream is out."""

    # -- flow control of what it receives ----------------------------------------------------

    def pause_receiving(self) -> None:
        self.paused = True

    def resume_receiving(self) -> None:
        if not self.paused:
            return
        self.paused = False
        held, self.held = self.held, 0
        conn = self.conn
        if held and not conn.closing:
            conn.consumed(self, held)
            conn.schedule_write()

    @property
    def write_paused(self) -> bool:
        return self.reported_paused


class H2Connection(asyncio.Protocol):
    """The frame layer of one connection; see the module docstring."""

    __slots__ = (
        "_buf",
        "_control",
        "_fenced",
        "_hb_bad",
        "_hb_bytes",
        "_hb_end_stream",
        "_hb_parts",
        "_reset_ids",
        "_resets",
        "_settings_seen",
        "_write_scheduled",
        "clock",
        "closing",
        "counts",
        "decoder",
        "encoder",
        "goaway_sent",
        "hb_sid",
        "hb_started",
        "in_read",
        "limits",
        "loop",
        "out",
        "peer_initial_window",
        "peer_max_frame",
        "peer_max_streams",
        "recv_unacked",
        "recv_window",
        "send_window",
        "stalled",
        "streams",
        "transport",
        "transport_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits, counts: H2Counts) -> None:
        self.loop = loop
        self.clock: Callable[[], float] = loop.time
        self.limits = limits
        self.counts = counts  # this leg's sidecar_h2_* numbers
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.out: list[bytes] = []
        self.in_read = False
        self._write_scheduled = False
        self._buf = b""
        self.encoder: Encoder = new_encoder()
        self.decoder: Decoder = new_decoder(limits.header_list_bytes)
        self.streams: dict[int, Stream] = {}
        self._reset_ids: dict[int, None] = {}  # see _RESET_MEMORY; oldest first
        self._fenced = 0  # how many of the oldest _reset_ids the PING in flight covers; 0: none
        self.peer_initial_window = F.DEFAULT_WINDOW
        self.peer_max_frame = F.DEFAULT_FRAME_SIZE
        self.peer_max_streams = 2**31  # until the peer says otherwise (RFC 9113 §6.5.2)
        self.send_window = F.DEFAULT_WINDOW
        self.recv_window = limits.window
        self.recv_unacked = 0
        self.stalled: dict[int, Stream] = {}  # streams whose data waits for the peer's window
        self.transport_paused = False
        self.goaway_sent = -1  # the last stream id a GOAWAY of ours promised to serve
        self._settings_seen = False
        # the header block being received (HEADERS then CONTINUATIONs): its stream, parts, size
        self.hb_sid = 0
        self.hb_started = 0.0
        self._hb_parts: list[bytes] = []
        self._hb_bytes = 0
        self._hb_end_stream = False
        self._hb_bad = False  # the HEADERS frame made the stream depend on itself
        # The flood caps (policy/ratelimit.py's token bucket, one key): a burst of one second's
        # worth, then the rate. Several HTTP/2 attacks cost the attacker one small frame and the
        # proxy real work; none is wrong once, all are wrong ten thousand times a second.
        self._resets = TokenBuckets(limits.reset_rate, limits.reset_rate, 1, self.clock)
        self._control = TokenBuckets(limits.control_rate, limits.control_rate, 1, self.clock)

    # == the side's own parts ======================================================================

    def new_peer_stream(self, stream_id: int, fields: list[Field], end_stream: bool) -> None:
        """HEADERS opened a stream the peer initiates."""
        raise NotImplementedError

    def is_peer_stream(self, stream_id: int) -> bool:
        """Whether the peer, rather than this side, initiates streams with this id."""
        raise NotImplementedError

    def last_peer_stream(self) -> int:
        raise NotImplementedError

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        raise NotImplementedError

    def refuse(self, sid: int, code: int) -> None:
        """A stream the peer opened is reset before it starts (refused, or malformed)."""
        raise NotImplementedError

    def on_ping_ack(self, payload: bytes) -> None:
        """A PING of ours was answered."""

    def on_idle(self) -> None:
        """The last open stream has gone."""

    def on_peer_settings(self) -> None:
        """A SETTINGS frame of the peer's has been applied."""

    def initial_settings(self) -> list[tuple[int, int]]:
        limits = self.limits
        return [
            (F.MAX_CONCURRENT_STREAMS, limits.max_streams),
            (F.INITIAL_WINDOW_SIZE, limits.stream_window),
            (F.MAX_HEADER_LIST_SIZE, limits.header_list_bytes),
            (F.ENABLE_PUSH, 0),
        ]

    # == lifecycle =================================================================================

    def start(self, transport: asyncio.Transport) -> None:
        """Our side of the connection preface: SETTINGS, and the connection window opened."""
        self.transport = transport
        out = self.out
        out.append(F.settings(self.initial_settings()))
        if self.limits.window > F.DEFAULT_WINDOW:
            out.append(F.window_update(0, self.limits.window - F.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.out.clear()
        for st in list(self.streams.values()):
            self.drop(st)
            st.on_reset(F.CANCEL)

    def eof_received(self) -> bool:
        return False  # a peer that stops sending has nothing more to say: close

    def pause_writing(self) -> None:
        self.transport_paused = True
        for st in list(self.streams.values()):
            self._report_paused(st)

    def resume_writing(self) -> None:
        self.transport_paused = False
        for st in list(self.streams.values()):
            self._report_paused(st)

    def close(self, code: int = F.NO_ERROR, reason: str = "") -> None:
        """GOAWAY with ``code`` and close once it is written."""
        if self.closing:
            return
        self.send_goaway(self.last_peer_stream(), code, reason.encode()[:256])
        self.write_out()
        self.closing = True
        t = self.transport
        if t is not None:
            t.close()

    def cut(self) -> None:
        """Close at once, without GOAWAY and without waiting for unsent bytes to drain: for a
        peer that has stopped answering, which would not read them."""
        if self.closing:
            return
        self.closing = True
        self.out.clear()
        t = self.transport
        if t is not None:
            t.abort()

    def send_goaway(self, last_stream_id: int, code: int, debug: bytes = b"") -> None:
        self.out.append(F.goaway(last_stream_id, code, debug))
        self.counts.goaway(True, code)

    # == bytes in ==================================================================================

    def feed(self, data: bytes) -> None:
        """Parse what arrived; everything it produced goes out as one write."""
        if self.closing:
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        self.in_read = True
        try:
            pos = self._frames(data)
        except ConnectionFault as fault:
            self.in_read = False
            log.debug("HTTP/2 connection error", extra={"code": fault.code, "reason": fault.reason})
            if fault.flood:
                self.counts.flood(fault.flood)
            self.close(fault.code, fault.reason)
            return
        except Exception:
            self.in_read = False
            log.exception("HTTP/2 connection failed")
            self.close(F.INTERNAL_ERROR)
            return
        self.in_read = False
        if pos < len(data):
            self._buf = data[pos:]
        self.write_out()

    def _frames(self, data: bytes) -> int:
        pos = 0
        end = len(data)
        unpack = F.HEAD.unpack_from
        while end - pos >= 9:
            hi, lo, ftype, flags, sid = unpack(data, pos)
            size = (hi << 16) | lo
            if size > F.DEFAULT_FRAME_SIZE:
                raise ConnectionFault(
                    F.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"
                )
            stop = pos + 9 + size
            if stop > end:
                break
            payload = data[pos + 9 : stop]
            pos = stop
            sid &= 0x7FFFFFFF
            if not self._settings_seen:
                # RFC 9113 §3.4: the preface's SETTINGS frame comes first
                if ftype != F.SETTINGS or flags & F.ACK:
                    raise ConnectionFault(F.PROTOCOL_ERROR, "the preface lacks its SETTINGS frame")
                self._settings_seen = True
            if self.hb_sid and ftype != F.CONTINUATION:
                raise ConnectionFault(F.PROTOCOL_ERROR, "a frame inside a header block")
            if ftype == F.DATA:
                self._data(flags, sid, payload)
            elif ftype == F.HEADERS:
                self._headers(flags, sid, payload)
            elif ftype == F.WINDOW_UPDATE:
                self._window_update(sid, payload)
            elif ftype == F.RST_STREAM:
                self._rst_stream(sid, payload)
            elif ftype == F.SETTINGS:
                self._settings(flags, sid, payload)
            elif ftype == F.PING:
                self._ping(flags, sid, payload)
            elif ftype == F.CONTINUATION:
                self._continuation(flags, sid, payload)
            elif ftype == F.PRIORITY:
                self._priority(sid, payload)
            elif ftype == F.GOAWAY:
                self._goaway(sid, payload)
            elif ftype == F.PUSH_PROMISE:
                # We never enable push, and a client must never push (RFC 9113 §8.4)
                raise ConnectionFault(F.PROTOCOL_ERROR, "PUSH_PROMISE is not enabled")
            # other types are extensions we do not know: ignored (RFC 9113 §5.5)
            if self.closing:
                return end
        return pos

    # == frames in =================================================================================

    def _control_frame(self) -> None:
        if self._control.take(b""):
            raise ConnectionFault(
                F.ENHANCE_YOUR_CALM, "too many control frames", FLOOD_CONTROL_FRAMES
            )

    def count_reset(self) -> None:
        """A stream ended early by the peer, or by us because of the peer: rapid reset's count."""
        if self._resets.take(b""):
            raise ConnectionFault(F.ENHANCE_YOUR_CALM, "too many stream resets", FLOOD_RAPID_RESET)

    def _closed_or_idle(self, sid: int) -> bool | None:
        """For a stream not open: True if the peer's frames on it are discarded, False if it is
        closed and a frame on it is the peer's error, None if it never existed (idle).

        Streams of ours need no memory: ids are used in order (RFC 9113 §5.1.1), so one below
        the next we would open that is not open is closed. Whether it ended or we reset it, a
        late frame on it is discarded, as §5.1 allows for every closed stream ("an endpoint can
        perform this minimal processing for all streams that are in the closed state") and as
        Go's transport does: so any number of cancelled calls costs the app's connection no
        memory and never an error. The peer's streams we reset are remembered until it has
        seen the reset (:data:`_RESET_MEMORY`); its frames on the others are answered."""
        if self.is_peer_stream(sid):
            if sid > self.last_peer_stream():
                return None
            return sid in self._reset_ids
        return True if sid < self.next_own_stream() else None

    def was_opened(self, sid: int) -> bool:
        """Whether the peer opened this stream id, below its latest (it may skip ids)."""
        return True

    def next_own_stream(self) -> int:
        return 0  # none opened; a side that opens streams overrides this

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionFault(F.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise ConnectionFault(F.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if flags & F.PADDED:
            payload = _unpad(payload)
        end_stream = bool(flags & F.END_STREAM)
        if not payload and not end_stream:
            self._control_frame()
        st = self.streams.get(sid)
        if st is None or not st.remote_open:
            self.consumed(None, size)  # discarded: the connection's credit comes back at once
            if st is not None:
                self.stream_error(st, F.STREAM_CLOSED)
                return
            discard = self._closed_or_idle(sid)
            if discard is None:
                raise ConnectionFault(F.PROTOCOL_ERROR, "DATA on an idle stream")
            if not discard:
                self.reset_unopened(sid, F.STREAM_CLOSED)
            return
        st.recv_window -= size
        if st.recv_window < 0:
            self.consumed(None, size)
            self.stream_error(st, F.FLOW_CONTROL_ERROR)
            return
        if st.length_left >= 0:
            st.length_left -= len(payload)
            if st.length_left < 0 or (end_stream and st.length_left):
                # RFC 9113 §8.1.1: a body that disagrees with its content-length is malformed
                self.consumed(None, size)
                self.stream_error(st, F.PROTOCOL_ERROR)
                return
        if end_stream:
            st.remote_open = False  # and it needs no more window
        padding = size - len(payload)
        if padding:
            self.consumed(None, padding)
        if st.paused:
            st.held += len(payload)
        elif payload:
            self.consumed(st, len(payload))
        st.on_data(payload, end_stream)
        if end_stream:
            self._maybe_forget(st)

    def consumed(self, st: Stream | None, size: int) -> None:
        """``size`` received bytes have been drained: give the credit back, in batches."""
        unacked = self.recv_unacked + size
        if unacked >= self.limits.window >> 1:
            self.out.append(F.window_update(0, unacked))
            self.recv_window += unacked
            unacked = 0
        self.recv_unacked = unacked
        if st is None or not st.remote_open:
            return  # a stream the peer has finished sending on needs no more window
        unacked = st.unacked + size
        if unacked >= self.limits.stream_window >> 1:
            self.out.append(F.window_update(st.id, unacked))
            st.recv_window += unacked
            unacked = 0
        st.unacked = unacked

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionFault(F.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & F.PADDED:
            payload = _unpad(payload)
        self_dependent = False
        if flags & F.PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionFault(F.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            # a stream error (RFC 9113 §5.3.1), but the block must still be decoded
            self_dependent = F.u32(payload) == sid
            payload = payload[5:]
        self._hb_end_stream = bool(flags & F.END_STREAM)
        self._hb_bad = self_dependent
        self._hb_bytes = len(payload) + 9
        if self._hb_bytes > self.limits.header_block_bytes:
            raise ConnectionFault(F.ENHANCE_YOUR_CALM, "header block too large", FLOOD_HEADER_BLOCK)
        if not flags & F.END_HEADERS:
            self.hb_sid = sid
            self.hb_started = self.clock()
            self._hb_parts = [payload]
            return
        self._complete_block(sid, payload)

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if not self.hb_sid or sid != self.hb_sid:
            raise ConnectionFault(F.PROTOCOL_ERROR, "CONTINUATION outside a header block")
        if not payload and not flags & F.END_HEADERS:
            self._control_frame()
        self._hb_bytes += len(payload) + 9
        if self._hb_bytes > self.limits.header_block_bytes:
            raise ConnectionFault(F.ENHANCE_YOUR_CALM, "header block too large", FLOOD_HEADER_BLOCK)
        self._hb_parts.append(payload)
        if flags & F.END_HEADERS:
            self.hb_sid = 0
            block = b"".join(self._hb_parts)
            self._hb_parts = []
            self._complete_block(sid, block)

    def _complete_block(self, sid: int, block: bytes) -> None:
        try:
            fields = decode(self.decoder, block)
        # One name per handler: compiled, a name bound by two handlers keeps the first's type.
        except HpackTooLarge as too_large:
            raise ConnectionFault(
                F.ENHANCE_YOUR_CALM, "header list too large", FLOOD_HEADER_LIST
            ) from too_large
        except HpackError as undecodable:
            raise ConnectionFault(F.COMPRESSION_ERROR, "undecodable header block") from undecodable
        end_stream = self._hb_end_stream
        self_dependent = self._hb_bad
        st = self.streams.get(sid)
        if st is None:
            if not self.is_peer_stream(sid):
                if self._closed_or_idle(sid):
                    # one of ours that is closed: the peer's answer crossed our RST_STREAM (a
                    # client cancelled its call) and is discarded, its HPACK state kept above
                    return
                raise ConnectionFault(F.PROTOCOL_ERROR, "HEADERS on a stream the peer cannot open")
            if sid <= self.last_peer_stream():
                if sid in self._reset_ids:
                    return  # we reset it; the peer had not seen that yet
                if not self.was_opened(sid):
                    raise ConnectionFault(F.PROTOCOL_ERROR, "stream id lower than an earlier one")
                raise ConnectionFault(F.STREAM_CLOSED, "HEADERS on a closed stream")
            if self_dependent:
                self.refuse(sid, F.PROTOCOL_ERROR)
                return
            self.new_peer_stream(sid, fields, end_stream)
            return
        if self_dependent:
            self.stream_error(st, F.PROTOCOL_ERROR)
            return
        if not st.remote_open:
            self.stream_error(st, F.STREAM_CLOSED)
            return
        if end_stream:
            st.remote_open = False
        st.on_headers(fields, end_stream)
        if end_stream:
            self._maybe_forget(st)

    def _priority(self, sid: int, payload: bytes) -> None:
        # RFC 9113 §5.3.2 deprecates the signals; a PRIORITY frame is validated and ignored
        if sid == 0:
            raise ConnectionFault(F.PROTOCOL_ERROR, "PRIORITY on stream 0")
        self._control_frame()
        if len(payload) != 5:
            self._reset_any(sid, F.FRAME_SIZE_ERROR)
        elif F.u32(payload) == sid:
            self._reset_any(sid, F.PROTOCOL_ERROR)

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionFault(F.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionFault(F.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        st = self.streams.get(sid)
        if st is None:
            if self._closed_or_idle(sid) is None:
                raise ConnectionFault(F.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            self.counts.reset(False, F.u32_full(payload))
            return
        self.counts.reset(False, F.u32_full(payload))
        self.count_reset()
        self.drop(st)
        st.on_reset(F.u32_full(payload))

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionFault(F.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & F.ACK:
            if payload:
                raise ConnectionFault(F.FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFault(F.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        self._control_frame()
        for key, value in F.parse_settings(payload):
            if key == F.INITIAL_WINDOW_SIZE:
                if value > F.MAX_WINDOW:
                    raise ConnectionFault(F.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > F.MAX_WINDOW:
                        raise ConnectionFault(F.FLOW_CONTROL_ERROR, "stream window too large")
            elif key == F.MAX_FRAME_SIZE:
                if not F.DEFAULT_FRAME_SIZE <= value <= F.MAX_FRAME_SIZE_LIMIT:
                    raise ConnectionFault(F.PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == F.HEADER_TABLE_SIZE:
                self.encoder.header_table_size = min(value, 65_536)
            elif key == F.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == F.ENABLE_PUSH and value > 1:
                raise ConnectionFault(F.PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
        self.out.append(F.SETTINGS_ACK)
        self.on_peer_settings()
        for st in list(self.streams.values()):
            if st.pending or st.end_pending:
                self.pump(st)

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionFault(F.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionFault(F.FRAME_SIZE_ERROR, "PING of the wrong size")
        if flags & F.ACK:
            if payload == _FENCE_PING and self._fenced:
                self._forget_fenced()
            else:
                self.on_ping_ack(payload)
            return
        self._control_frame()
        self.out.append(F.ping(payload, ack=True))

    def _goaway(self, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionFault(F.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionFault(F.FRAME_SIZE_ERROR, "GOAWAY too short")
        self.counts.goaway(False, F.u32_full(payload, 4))
        self.on_goaway(F.u32(payload), F.u32_full(payload, 4))

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFault(F.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = F.u32(payload)
        if sid == 0:
            if not increment:
                raise ConnectionFault(F.PROTOCOL_ERROR, "WINDOW_UPDATE of zero")
            self.send_window += increment
            if self.send_window > F.MAX_WINDOW:
                raise ConnectionFault(F.FLOW_CONTROL_ERROR, "connection window too large")
            for waiting in list(self.stalled.values()):
                self.pump(waiting)
            return
        st = self.streams.get(sid)
        if st is None:
            if self._closed_or_idle(sid) is None:
                raise ConnectionFault(F.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if not increment:
            self.stream_error(st, F.PROTOCOL_ERROR)
            return
        st.send_window += increment
        if st.send_window > F.MAX_WINDOW:
            self.stream_error(st, F.FLOW_CONTROL_ERROR)
            return
        if st.pending or st.end_pending:
            self.pump(st)

    # == stream errors and ends ====================================================================

    def stream_error(self, st: Stream, code: int) -> None:
        """Reset a stream because of the peer (RFC 9113 §5.4.2), and tell its leg."""
        if st.id not in self.streams:
            return
        self.reset(st, code)
        self.count_reset()
        st.on_reset(code)

    def reset(self, st: Stream, code: int) -> None:
        """Reset an open stream (the leg asked, or the peer misbehaved)."""
        sid = st.id
        if sid not in self.streams:
            return
        self.out.append(F.rst_stream(sid, code))
        self.counts.reset(True, code)
        peer_sending = st.remote_open
        self.drop(st)
        if peer_sending and self.is_peer_stream(sid):
            self._remember_reset(sid)

    def reset_unopened(self, sid: int, code: int) -> None:
        """Reset a stream that is not open (closed, or refused before it started)."""
        self.out.append(F.rst_stream(sid, code))
        self.counts.reset(True, code)
        if self.is_peer_stream(sid):
            self._remember_reset(sid)
        self.count_reset()

    def _remember_reset(self, sid: int) -> None:
        ids = self._reset_ids
        ids[sid] = None
        if len(ids) > _RESET_MEMORY:
            for old in list(islice(ids, _RESET_MEMORY // 2)):
                del ids[old]
            if self._fenced:
                self._fenced = max(1, self._fenced - _RESET_MEMORY // 2)
        if not self._fenced:
            self._fence()

    def _fence(self) -> None:
        """A PING whose answer means the peer has seen every reset remembered so far."""
        self.out.append(F.ping(_FENCE_PING))
        self._fenced = len(self._reset_ids)

    def _forget_fenced(self) -> None:
        ids = self._reset_ids
        for old in list(islice(ids, self._fenced)):
            del ids[old]
        self._fenced = 0
        if ids:
            self._fence()  # resets since the PING went out wait for the next one

    def _reset_any(self, sid: int, code: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            self.stream_error(st, code)
        else:
            self.reset_unopened(sid, code)

    def open_stream(self, st: Stream) -> None:
        self.streams[st.id] = st
        self.counts.stream_opened()

    def drop(self, st: Stream) -> None:
        if self.streams.pop(st.id, None) is None:
            return
        self.counts.stream_closed()
        self.stalled.pop(st.id, None)
        st.remote_open = st.local_open = False
        st.pending.clear()
        st.pending_bytes = 0
        if st.held:
            # received while paused and never to be drained: the connection's credit comes back
            self.consumed(None, st.held)
            st.held = 0
        if not self.streams:
            self.on_idle()

    def _maybe_forget(self, st: Stream) -> None:
        if not st.remote_open and not st.local_open:
            self.drop(st)

    # == bytes out =================================================================================

    def pump(self, st: Stream) -> None:
        """Frame what the stream has waiting, as far as the peer's windows allow."""
        out = self.out
        sid = st.id
        if st.head is not None:
            block = self.encoder.encode(st.head)
            st.head = None
            end = st.end_pending and not st.pending and st.trailers is None
            F.header_block(sid, block, end, self.peer_max_frame, out)
            if end:
                self._sent_end(st)
                return
        pending = st.pending
        while pending:
            window = min(st.send_window, self.send_window, self.peer_max_frame)
            if window <= 0:
                if not st.stalled_since:
                    st.stalled_since = self.clock()
                    self.stalled[sid] = st
                break
            data = pending[0]
            size = len(data)
            if size > window:
                pending[0] = data[window:]
                data = data[:window]
                size = window
            else:
                pending.popleft()
            st.send_window -= size
            self.send_window -= size
            st.pending_bytes -= size
            last = not pending and st.end_pending and st.trailers is None
            out.append(
                F.HEAD.pack(size >> 16, size & 0xFFFF, F.DATA, F.END_STREAM if last else 0, sid)
            )
            out.append(data)
            if last:
                self._sent_end(st)
                return
        if not pending:
            if st.stalled_since:
                st.stalled_since = 0.0
                self.stalled.pop(sid, None)
            if st.end_pending:
                if st.trailers is not None:
                    F.header_block(
                        sid, self.encoder.encode(st.trailers), True, self.peer_max_frame, out
                    )
                else:
                    out.append(F.frame(F.DATA, F.END_STREAM, sid))
                self._sent_end(st)
                return
        if st.reported_paused and st.pending_bytes <= _LOW:
            self._report_paused(st)

    def _sent_end(self, st: Stream) -> None:
        st.end_pending = False
        st.local_open = False
        st.trailers = None
        if st.stalled_since:
            st.stalled_since = 0.0
            self.stalled.pop(st.id, None)
        st.on_sent()
        self._maybe_forget(st)

    def queue_body(self, st: Stream, data: bytes) -> None:
        """Body to send; framed at the next pump, so a last chunk and the end share a frame."""
        st.pending.append(data)
        st.pending_bytes += len(data)
        if not st.reported_paused and st.pending_bytes > _HIGH:
            self.pump(st)
            if st.pending_bytes > _HIGH:
                self._report_paused(st)

    def _report_paused(self, st: Stream) -> None:
        paused = self.transport_paused or st.pending_bytes > _LOW
        if paused != st.reported_paused:
            st.reported_paused = paused
            st.on_write_paused(paused)

    def schedule_write(self) -> None:
        """Write what was gathered: now if no read is being handled, else at its end. Writes
        from other connections' events in one loop pass go out together."""
        if self.in_read or self._write_scheduled or not self.out:
            return
        self._write_scheduled = True
        self.loop.call_soon(self._scheduled_write)

    def _scheduled_write(self) -> None:
        self._write_scheduled = False
        self.write_out()

    def write_out(self) -> None:
        out = self.out
        if out:
            t = self.transport
            if t is not None and not self.closing:
                t.writelines(out)
            out.clear()

    # == deadlines =================================================================================

    def check_stalls(self, now: float) -> None:
        """Reset streams whose data has waited on a zero window for too long."""
        if not self.stalled:
            return
        limit = self.limits.send_stall
        for st in list(self.stalled.values()):
            if now - st.stalled_since >= limit:
                self.reset(st, F.CANCEL)
                st.on_reset(F.CANCEL)
        self.schedule_write()


def _unpad(payload: bytes) -> bytes:
    """The content of a PADDED frame (RFC 9113 §6.1): a length byte, content, padding."""
    if not payload:
        raise ConnectionFault(F.FRAME_SIZE_ERROR, "padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionFault(F.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


def as_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    # uvloop's transports implement asyncio.Transport without subclassing it
    return cast(asyncio.Transport, transport)
