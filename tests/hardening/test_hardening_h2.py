"""HTTP/2 attacks and malformed frames against the client leg, socket-free (SECURITY.md, "HTTP/2").

Each flood is sent as raw frames, past the rate its setting allows, and must end in GOAWAY
ENHANCE_YOUR_CALM; each malformed frame must end in the connection or stream error RFC 9113
names; nothing may raise out of the connection or leave an exchange unfinished.
"""

from __future__ import annotations

import struct

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st
from support.h2peer import H2Pair, frames_of

from sidecar_proxy.http.h2 import frames as F

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"t")]


def goaway_code(pair: H2Pair) -> int | None:
    pair.loop.run_soon()
    for ftype, _, _, payload in frames_of(pair.transport.take()):
        if ftype == F.GOAWAY:
            return F.u32_full(payload, 4)
    return None


def tripped(pair: H2Pair) -> list[str]:
    """The flood protections counted in sidecar_h2_floods_total{leg="client"}."""
    return [reason for reason, n in pair.ctx.metrics.h2.client.floods.items() if n]


def ready(**overrides: object) -> H2Pair:
    pair = H2Pair(answer=False, **overrides)
    pair.exchange()
    pair.transport.take()
    return pair


def block(pair: H2Pair, fields: list[tuple[bytes, bytes]] = GET) -> bytes:
    encoded: bytes = pair.client.encoder.encode(fields)
    return encoded


def headers(sid: int, payload: bytes, end: bool = True) -> bytes:
    return F.frame(F.HEADERS, F.END_HEADERS | (F.END_STREAM if end else 0), sid, payload)


def test_rapid_reset_ends_in_enhance_your_calm() -> None:
    pair = ready(h2_max_reset_rate=50)
    data = b"".join(
        headers(sid, block(pair)) + F.rst_stream(sid, F.CANCEL) for sid in range(1, 201, 2)
    )
    pair.conn.data_received(data)
    assert goaway_code(pair) == F.ENHANCE_YOUR_CALM
    assert pair.transport.closed
    pair.conn.connection_lost(None)
    assert len(pair.exchanges) <= 52
    assert all(ex.finished for ex in pair.exchanges)
    counts = pair.ctx.metrics.h2.client
    assert tripped(pair) == ["rapid_reset"]
    assert counts.goaways == {(True, F.ENHANCE_YOUR_CALM): 1}
    assert counts.resets[(False, F.CANCEL)] == len(pair.exchanges)
    assert counts.streams_active == 0


def test_resets_within_the_rate_are_fine() -> None:
    pair = ready(h2_max_reset_rate=50)
    for sid in range(1, 81, 2):
        pair.conn.data_received(headers(sid, block(pair)) + F.rst_stream(sid, F.CANCEL))
        pair.tick(0.05)
    assert not pair.transport.closed


def test_refused_streams_count_as_resets() -> None:
    pair = ready(h2_max_concurrent_streams=1, h2_max_reset_rate=10)
    data = b"".join(headers(sid, block(pair)) for sid in range(1, 41, 2))
    pair.conn.data_received(data)
    assert goaway_code(pair) == F.ENHANCE_YOUR_CALM
    assert tripped(pair) == ["rapid_reset"]


def flood(frame: bytes, count: int, **overrides: object) -> H2Pair:
    pair = ready(h2_max_control_frame_rate=100, **overrides)
    pair.conn.data_received(frame * count)
    return pair


def test_ping_flood() -> None:
    pair = flood(F.ping(b"12345678"), 300)
    assert goaway_code(pair) == F.ENHANCE_YOUR_CALM
    assert tripped(pair) == ["control_frames"]


def test_settings_flood() -> None:
    assert goaway_code(flood(F.settings([]), 300)) == F.ENHANCE_YOUR_CALM


def test_priority_flood() -> None:
    priority = F.frame(F.PRIORITY, 0, 1, struct.pack(">LB", 0, 16))
    assert goaway_code(flood(priority, 300)) == F.ENHANCE_YOUR_CALM


def test_empty_data_flood() -> None:
    pair = ready(h2_max_control_frame_rate=100)
    pair.conn.data_received(headers(1, block(pair), end=False))
    pair.conn.data_received(F.frame(F.DATA, 0, 1) * 300)
    assert goaway_code(pair) == F.ENHANCE_YOUR_CALM
    pair.conn.connection_lost(None)
    assert pair.exchanges[0].gone


def test_continuation_flood_is_bounded_in_bytes() -> None:
    # CVE-2024-27316: a header block that never ends, one CONTINUATION after another
    pair = ready(max_header_bytes=4096)
    pair.conn.data_received(F.frame(F.HEADERS, 0, 1, block(pair)))
    part = F.frame(F.CONTINUATION, 0, 1, b"\x00" * 1000)
    pair.conn.data_received(part * 20)
    assert goaway_code(pair) == F.ENHANCE_YOUR_CALM
    assert tripped(pair) == ["header_block"]
    assert not pair.exchanges


def test_empty_continuation_flood() -> None:
    pair = ready(h2_max_control_frame_rate=100)
    pair.conn.data_received(F.frame(F.HEADERS, 0, 1, block(pair)))
    pair.conn.data_received(F.frame(F.CONTINUATION, 0, 1) * 300)
    assert goaway_code(pair) == F.ENHANCE_YOUR_CALM


def test_unfinished_header_block_times_out() -> None:
    pair = ready(client_header_timeout=2.0)
    # a stream open, so that the connection is not idle: only the header block's time is up
    pair.conn.data_received(headers(1, block(pair), end=False))
    pair.conn.data_received(F.frame(F.HEADERS, 0, 3, block(pair)))
    pair.tick(1.9)
    assert not pair.transport.closed
    pair.tick(0.2)
    assert pair.transport.closed
    assert tripped(pair) == ["header_time"]


def test_hpack_bomb_is_bounded() -> None:
    # one large field in the dynamic table, then referenced over and over: a small block that
    # would decode to 160 KB
    pair = ready(max_header_bytes=8192)
    encoder = hpack.Encoder()
    bomb = encoder.encode([*GET, *[(b"x-bomb", b"v" * 4000)] * 40])
    assert len(bomb) < 5000
    pair.conn.data_received(headers(1, bomb))
    assert goaway_code(pair) == F.ENHANCE_YOUR_CALM
    assert tripped(pair) == ["header_list"]
    assert not pair.exchanges


def test_malformed_frames_get_the_error_the_rfc_names() -> None:
    cases = [
        (F.frame(F.DATA, 0, 0, b"x"), F.PROTOCOL_ERROR),  # §6.1: DATA on stream 0
        (F.frame(F.DATA, 0, 7, b"x"), F.PROTOCOL_ERROR),  # §5.1: DATA on an idle stream
        (F.frame(F.PING, 0, 0, b"1234"), F.FRAME_SIZE_ERROR),  # §6.7
        (F.frame(F.PING, 0, 1, b"12345678"), F.PROTOCOL_ERROR),  # §6.7: PING on a stream
        (F.frame(F.SETTINGS, 0, 0, b"12345"), F.FRAME_SIZE_ERROR),  # §6.5
        (F.settings([(F.INITIAL_WINDOW_SIZE, 2**31)]), F.FLOW_CONTROL_ERROR),  # §6.5.2
        (F.settings([(F.MAX_FRAME_SIZE, 100)]), F.PROTOCOL_ERROR),  # §6.5.2
        (F.window_update(0, 0), F.PROTOCOL_ERROR),  # §6.9
        (F.frame(F.WINDOW_UPDATE, 0, 0, b"123"), F.FRAME_SIZE_ERROR),  # §6.9
        (F.window_update(0, 2**31 - 1), F.FLOW_CONTROL_ERROR),  # §6.9.1
        (F.frame(F.RST_STREAM, 0, 9, b"\x00\x00\x00\x08"), F.PROTOCOL_ERROR),  # §6.4: idle
        (F.frame(F.CONTINUATION, F.END_HEADERS, 1, b""), F.PROTOCOL_ERROR),  # §6.10
        (F.frame(F.PUSH_PROMISE, 0, 1, b"\x00\x00\x00\x02"), F.PROTOCOL_ERROR),  # §8.4
        (F.frame(F.DATA, 0, 1, b"x" * 16385), F.FRAME_SIZE_ERROR),  # §4.2
        (F.frame(F.GOAWAY, 0, 1, b"\x00" * 8), F.PROTOCOL_ERROR),  # §6.8
        (F.frame(F.HEADERS, F.END_HEADERS, 2, b"\x82"), F.PROTOCOL_ERROR),  # §5.1.1: even id
        (F.frame(F.HEADERS, F.END_HEADERS, 1, b"\xff\xff\xff"), F.COMPRESSION_ERROR),  # §4.3
        (F.frame(F.DATA, F.PADDED, 1, b"\x09abc"), F.PROTOCOL_ERROR),  # §6.1: bad padding
    ]
    for frame, code in cases:
        pair = ready()
        pair.conn.data_received(frame)
        assert goaway_code(pair) == code, frame
        assert pair.transport.closed


def test_stream_errors_reset_only_the_stream() -> None:
    pair = ready()
    pair.conn.data_received(headers(1, block(pair), end=False))
    pair.conn.data_received(F.window_update(1, 0))  # §6.9: a stream error
    sent = frames_of(pair.transport.take())
    assert (F.RST_STREAM, F.rst_stream(1, F.PROTOCOL_ERROR)[9:]) in [(f[0], f[3]) for f in sent]
    assert pair.exchanges[0].gone
    assert not pair.transport.closed
    # a PRIORITY frame making a stream depend on itself is a stream error too (§5.3.1)
    pair.conn.data_received(F.frame(F.PRIORITY, 0, 3, struct.pack(">LB", 3, 16)))
    assert F.rst_stream(3, F.PROTOCOL_ERROR) in pair.transport.take()
    assert not pair.transport.closed


def test_invalid_preface_closes() -> None:
    pair = H2Pair()
    pair.transport.take()
    pair.conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    assert pair.transport.closed


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=30))
def test_garbage_after_the_preface_never_crashes(chunks: list[bytes]) -> None:
    pair = ready()
    pair.conn.data_received(headers(1, block(pair), end=False))
    for chunk in chunks:
        pair.conn.data_received(chunk)  # must not raise
    pair.loop.run_soon()
    if pair.transport.closed:
        pair.conn.connection_lost(None)
    # every exchange either goes on with its stream or has finished
    for ex in pair.exchanges:
        assert ex.finished or id(ex.leg) in {id(s) for s in pair.conn.streams.values()}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10), st.integers(0, 255), st.integers(0, 9), st.binary(max_size=30)
        ),
        max_size=25,
    )
)
def test_random_frames_never_crash(frames: list[tuple[int, int, int, bytes]]) -> None:
    pair = ready()
    for ftype, flags, sid, payload in frames:
        pair.conn.data_received(F.frame(ftype, flags, sid, payload))
    pair.loop.run_soon()
    pair.conn.connection_lost(None)
    assert all(ex.finished for ex in pair.exchanges)


def test_headers_on_a_lower_stream_id() -> None:
    # §5.1.1: an id the client skipped is a connection error PROTOCOL_ERROR; §5.1: one it used
    # and closed is STREAM_CLOSED; one we reset is ignored (the client had not seen the reset)
    for first, second, code in ((5, 3, F.PROTOCOL_ERROR), (1, 1, F.STREAM_CLOSED)):
        pair = ready()
        pair.conn.data_received(headers(first, block(pair)))
        pair.exchanges[-1].respond()
        pair.conn.data_received(headers(second, block(pair)))
        assert goaway_code(pair) == code, (first, second)
    pair = ready(h2_max_concurrent_streams=1)
    pair.conn.data_received(headers(1, block(pair), end=False) + headers(3, block(pair)))
    assert F.rst_stream(3, F.REFUSED_STREAM) in pair.transport.take()
    pair.conn.data_received(F.frame(F.DATA, F.END_STREAM, 3, b"late"))
    assert goaway_code(pair) is None and not pair.transport.closed


def test_a_client_that_never_answers_pings_cannot_grow_the_reset_memory() -> None:
    # Streams the proxy resets while the client still sends are remembered until the client
    # answers a PING (see test_h2_server.py); a client that never does has the oldest ones
    # forgotten past 1,024, after which its late DATA on them is answered STREAM_CLOSED again.
    pair = ready()
    sid = 1
    for _ in range(12):  # 1,200 streams, 100 open at a time, each answered mid-upload
        first = sid
        for _ in range(100):
            pair.conn.data_received(headers(sid, block(pair), end=False))
            sid += 2
        for ex in pair.exchanges[(first - 1) // 2 :]:
            ex.respond()  # complete response: the rest of the request is not wanted (NO_ERROR)
        pair.loop.run_soon()
    sent = frames_of(pair.transport.take())
    assert sum(1 for f in sent if f[0] == F.RST_STREAM) == 1_200
    assert sum(1 for f in sent if f[0] == F.PING) == 1  # the one unanswered PING
    pair.conn.data_received(F.frame(F.DATA, 0, sid - 2, b"late"))  # the newest: discarded
    pair.conn.data_received(F.frame(F.DATA, 0, 1, b"late"))  # the oldest: forgotten
    pair.loop.run_soon()
    resets = [f[2] for f in frames_of(pair.transport.take()) if f[0] == F.RST_STREAM]
    assert resets == [1]
    assert not pair.transport.closed
