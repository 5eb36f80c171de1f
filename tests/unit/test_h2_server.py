"""The HTTP/2 client leg without sockets: an ``h2`` client on one side, bytes by hand."""

from __future__ import annotations

import h2.errors
import h2.events
import h2.settings
from support.h2peer import H2Pair, frames_of, initial_window, of

from sidecar_proxy.http.fields import ResponseHead
from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.server import H2ClientStream


def test_get_is_answered_on_its_stream() -> None:
    pair = H2Pair()
    sid = pair.request(b"/a?b=1", extra=[(b"user-agent", b"t/1"), (b"cookie", b"a=1")])
    pair.client.send_headers(
        pair.client.get_next_available_stream_id(),
        [
            *[(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x")],
            *[(b"host", b"h.test"), (b"cookie", b"b=2"), (b"cookie", b"c=3")],
        ],
        end_stream=True,
    )
    events = pair.exchange()
    responses = of(events, h2.events.ResponseReceived)
    assert [r.stream_id for r in responses] == [sid, sid + 2]
    assert dict(responses[0].headers)[b":status"] == b"200"
    assert dict(responses[0].headers)[b"x-request-id"] == b"stub"
    data = of(events, h2.events.DataReceived)
    assert data[0].data == b"hello"
    assert len(of(events, h2.events.StreamEnded)) == 2
    head = pair.exchanges[0].head
    assert (head.method, head.target, head.version) == (b"GET", b"/a?b=1", "2.0")
    assert head.host == b"example.test"
    assert head.lines[head.host_line] == b"host: example.test\r\n"
    assert head.user_agent == b"t/1"
    assert b"cookie: a=1\r\n" in head.lines
    # Host stands in for a missing :authority; split cookie crumbs travel as one field
    second = pair.exchanges[1].head
    assert second.host == b"h.test"
    assert second.lines == [b"cookie: b=2; c=3\r\n", b"host: h.test\r\n"]
    assert not pair.conn.streams  # both streams closed and forgotten


def test_post_body_is_relayed_and_trailers_reach_the_exchange() -> None:
    pair = H2Pair()
    sid = pair.request(method=b"POST", body=b"x" * 1000, end=False)
    pair.client.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = pair.exchange()
    ex = pair.exchanges[0]
    assert ex.head.chunked  # no content-length: HTTP/1.1 will carry it chunked
    assert ex.trailers == [(b"grpc-status", b"0")]
    assert b"".join(d.data for d in of(events, h2.events.DataReceived)) == b"x" * 1000


def test_response_trailers_end_the_stream() -> None:
    pair = H2Pair(answer=False)
    sid = pair.request()
    pair.exchange()
    pair.exchanges[0].respond(trailers=[(b"Grpc-Status", b"0")])
    events = pair.receive()
    trailers = of(events, h2.events.TrailersReceived)
    assert trailers[0].stream_id == sid
    assert trailers[0].headers == [(b"grpc-status", b"0")]


def test_head_response_keeps_content_length_without_a_body() -> None:
    pair = H2Pair(answer=False)
    pair.request(method=b"HEAD")
    pair.exchange()
    pair.exchanges[0].reply_local(404, "nothing here")
    events = pair.receive()
    headers = dict(of(events, h2.events.ResponseReceived)[0].headers)
    assert headers[b":status"] == b"404"
    assert headers[b"content-length"] == b"12"
    assert not of(events, h2.events.DataReceived)
    assert of(events, h2.events.StreamEnded)


def test_retract_takes_back_a_head_not_yet_flushed() -> None:
    pair = H2Pair(answer=False)
    pair.request()
    pair.exchange()
    ex = pair.exchanges[0]
    leg = ex.leg
    resp = ResponseHead()
    leg.send_head(200, resp, [], True)
    assert leg.retract()
    ex.reply_local(502, "bad gateway")
    events = pair.receive()
    assert dict(of(events, h2.events.ResponseReceived)[0].headers)[b":status"] == b"502"
    leg.send_head(200, resp, [], True)
    leg.flush()
    assert not leg.retract()


def test_rst_stream_from_the_client_ends_the_exchange() -> None:
    pair = H2Pair(answer=False)
    sid = pair.request()
    pair.exchange()
    pair.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    pair.exchange()
    assert pair.exchanges[0].gone
    assert not pair.conn.streams


def test_streams_beyond_the_limit_are_refused() -> None:
    pair = H2Pair(answer=False, h2_max_concurrent_streams=2)
    pair.exchange()  # the client learns the limit...
    pair.client.local_settings.acknowledge()
    # ...but a client may still try; h2 would refuse to, so the frame is made by hand
    pair.request()
    pair.request()
    pair.exchange()
    block = pair.client.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
    )
    pair.conn.data_received(F.frame(F.HEADERS, F.END_HEADERS | F.END_STREAM, 5, block))
    raw = pair.transport.take()
    assert F.rst_stream(5, F.REFUSED_STREAM) in raw
    assert len(pair.exchanges) == 2


def test_malformed_requests_are_reset_without_an_exchange() -> None:
    cases = [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"Upper", b"x")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"connection", b"x")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"te", b"gzip")],
        [(b":method", b"GET"), (b":scheme", b"http")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":foo", b"x")],
        [(b":method", b"GET"), (b"a", b"b"), (b":scheme", b"http"), (b":path", b"/")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b"a\r\nb: c")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b" padded")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b"a\x00")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b"a\rb")],
        # whitespace at either end of a value, wherever the field is in the list
        *[
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", v), (b"y", b"z")]
            for v in (b" led", b"\tled", b"ended ", b"ended\t")
        ],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b"ended\t")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"a:b", b"x")],
        # what would break the request line towards an HTTP/1.1 app
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a HTTP/1.1")],
        [(b":method", b"G T"), (b":scheme", b"http"), (b":path", b"/")],
    ]
    pair = H2Pair()
    pair.exchange()
    sid = 1
    for fields in cases:
        block = pair.client.encoder.encode(fields)
        pair.conn.data_received(F.frame(F.HEADERS, F.END_HEADERS | F.END_STREAM, sid, block))
        assert F.rst_stream(sid, F.PROTOCOL_ERROR) in pair.transport.take(), fields
        sid += 2
    assert not pair.exchanges
    assert not pair.transport.closed


def test_te_trailers_is_kept_and_content_length_checked() -> None:
    pair = H2Pair(answer=False)
    sid = pair.request(
        method=b"POST", extra=[(b"te", b"trailers"), (b"content-length", b"3")], end=False
    )
    pair.exchange()
    head = pair.exchanges[0].head
    assert b"te: trailers\r\n" in head.lines
    assert head.content_length == 3 and not head.chunked
    pair.conn.data_received(F.frame(F.DATA, F.END_STREAM, sid, b"four"))
    assert F.rst_stream(sid, F.PROTOCOL_ERROR) in pair.transport.take()
    assert pair.exchanges[0].gone


def test_large_header_list_is_answered_431() -> None:
    pair = H2Pair(max_header_bytes=1024)
    pair.request(extra=[(b"x-big", b"v" * 1500)])
    events = pair.exchange()
    assert dict(of(events, h2.events.ResponseReceived)[0].headers)[b":status"] == b"431"


def test_request_body_over_the_limit_is_answered_413() -> None:
    pair = H2Pair(answer=False, max_request_body_bytes=100)
    pair.request(method=b"POST", body=b"y" * 200, end=False)
    events = pair.exchange()
    assert dict(of(events, h2.events.ResponseReceived)[0].headers)[b":status"] == b"413"
    # the response is complete and the rest of the request not wanted (RFC 9113 §8.1)
    assert of(events, h2.events.StreamReset)[0].error_code == h2.errors.ErrorCodes.NO_ERROR


def test_slow_client_stream_does_not_stall_another() -> None:
    pair = H2Pair(answer=False)
    initial_window(pair, 10)
    slow = pair.request()
    fast = pair.request()
    pair.exchange()
    big, small = pair.exchanges
    big.body = b"b" * 100_000
    big.start_response()  # a long response: the exchange is still streaming
    small.respond()
    events = pair.receive()
    got: dict[int, int] = {}
    for d in of(events, h2.events.DataReceived):
        got[d.stream_id] = got.get(d.stream_id, 0) + len(d.data)
    assert got[slow] == 10  # all its window allows
    assert got[fast] == 5  # "hello", whole, though it came after
    assert [e.stream_id for e in of(events, h2.events.StreamEnded)] == [fast]
    assert big.paused == [True]  # told to stop reading from the app
    # the window opens: the rest follows and the exchange may read on
    pair.client.increment_flow_control_window(200_000, slow)
    pair.client.increment_flow_control_window(200_000)
    events = pair.exchange()
    total = sum(len(d.data) for d in of(events, h2.events.DataReceived))
    assert total == 100_000 - 10
    assert big.paused == [True, False]


def test_request_window_opens_only_as_the_exchange_drains() -> None:
    pair = H2Pair(answer=False, h2_stream_window=65_535, h2_connection_window=1 << 20)
    sid = pair.request(method=b"POST", end=False)
    pair.exchange()
    leg = pair.exchanges[0].leg
    leg.pause_request_body()
    for _ in range(4):
        pair.client.send_data(sid, b"z" * 15_000)
    events = pair.exchange()
    assert not [e for e in of(events, h2.events.WindowUpdated) if e.stream_id == sid]
    assert pair.client.local_flow_control_window(sid) == 65_535 - 60_000
    leg.resume_request_body()
    events = pair.receive()
    updates = [e for e in of(events, h2.events.WindowUpdated) if e.stream_id == sid]
    assert updates and updates[0].delta == 60_000


def test_zero_window_stall_resets_the_stream() -> None:
    pair = H2Pair(answer=False, h2_send_stall_timeout=5.0)
    initial_window(pair, 0)
    sid = pair.request()
    pair.exchange()
    ex = pair.exchanges[0]
    ex.start_response()
    pair.receive()
    pair.tick(4.9)
    assert not ex.gone
    pair.tick(0.2)
    events = pair.receive()
    assert of(events, h2.events.StreamReset)[0].stream_id == sid
    assert ex.gone


def test_idle_connection_is_closed() -> None:
    pair = H2Pair(client_idle_timeout=3.0, client_header_timeout=1.0)
    pair.request()
    pair.exchange()
    pair.tick(2.9)
    assert not pair.transport.closed
    pair.tick(0.2)
    assert pair.transport.closed
    assert of(pair.receive(), h2.events.ConnectionTerminated)


def test_no_preface_in_time_closes() -> None:
    pair = H2Pair(client_header_timeout=1.0)
    pair.tick(1.1)
    assert pair.transport.closed


def test_stream_ticks_reach_their_exchange_and_body_timeout_answers_408() -> None:
    pair = H2Pair(answer=False, client_body_timeout=2.0)
    pair.request(method=b"POST", end=False)
    pair.exchange()
    pair.tick(1.0)
    assert pair.exchanges[0].ticks == 1
    pair.tick(1.5)
    events = pair.receive()
    assert dict(of(events, h2.events.ResponseReceived)[0].headers)[b":status"] == b"408"


def test_no_408_while_the_exchange_holds_the_body_back_and_the_timeout_restarts_after() -> None:
    # Held back (the app does not read): the body cannot come, so its stall is not the client's.
    pair = H2Pair(answer=False, client_body_timeout=2.0)
    sid = pair.request(method=b"POST", end=False)
    pair.exchange()
    leg = pair.conn.streams[sid]
    assert isinstance(leg, H2ClientStream)
    leg.pause_request_body()
    pair.tick(5.0)
    assert not of(pair.receive(), h2.events.ResponseReceived)
    leg.resume_request_body()
    pair.tick(1.9)  # counted from the resume, not from the head 6.9 s ago
    assert not of(pair.receive(), h2.events.ResponseReceived)
    pair.tick(0.2)
    events = pair.receive()
    assert dict(of(events, h2.events.ResponseReceived)[0].headers)[b":status"] == b"408"


def test_drain_is_two_goaways_a_round_trip_apart() -> None:
    # read as raw frames: the h2 library takes any GOAWAY as the end of the connection
    pair = H2Pair(answer=False)
    first = pair.request()
    pair.exchange()
    pair.conn.drain()
    pair.loop.run_soon()
    sent = frames_of(pair.transport.take())
    assert sent[0][0] == F.GOAWAY and sent[0][3][:8] == F.goaway(F.MAX_STREAM_ID, 0)[9:17]
    assert sent[1][0] == F.PING
    # a stream opened before the client saw the GOAWAY is still served
    block = pair.client.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
    )
    pair.conn.data_received(F.frame(F.HEADERS, F.END_HEADERS | F.END_STREAM, 3, block))
    pair.conn.data_received(F.ping(sent[1][3], ack=True))
    sent = frames_of(pair.transport.take())
    assert (sent[-1][0], sent[-1][3][:8]) == (F.GOAWAY, F.goaway(3, 0)[9:17])
    assert not pair.transport.closed  # the streams in flight finish
    # a stream opened after the last GOAWAY is ignored: no exchange
    pair.conn.data_received(F.frame(F.HEADERS, F.END_HEADERS | F.END_STREAM, 5, block))
    assert len(pair.exchanges) == 2
    assert first == 1
    for ex in pair.exchanges:
        ex.respond()
    pair.loop.run_soon()
    assert pair.transport.closed


def test_drain_without_the_ping_answer_goes_on_after_a_second() -> None:
    pair = H2Pair(answer=False)
    pair.request()
    pair.exchange()
    pair.conn.drain()
    pair.loop.run_soon()
    pair.transport.take()
    pair.tick(1.1)
    sent = frames_of(pair.transport.take())
    assert (sent[-1][0], sent[-1][3][:8]) == (F.GOAWAY, F.goaway(1, 0)[9:17])


def test_connection_lost_ends_every_exchange() -> None:
    pair = H2Pair(answer=False)
    pair.request()
    pair.request()
    pair.exchange()
    pair.conn.connection_lost(None)
    assert all(ex.gone for ex in pair.exchanges)
    assert not pair.ctx.connections


def test_settings_change_of_initial_window_applies_to_open_streams() -> None:
    pair = H2Pair(answer=False)
    initial_window(pair, 0)
    pair.request()
    pair.exchange()
    pair.exchanges[0].respond()
    assert not of(pair.receive(), h2.events.DataReceived)
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65_535})
    events = pair.exchange()
    assert of(events, h2.events.DataReceived)[0].data == b"hello"


def test_body_held_for_an_exchange_that_ends_gives_the_connection_its_credit_back() -> None:
    pair = H2Pair(answer=False, h2_connection_window=65_535, h2_stream_window=65_535)
    sid = pair.request(method=b"POST", end=False)
    pair.exchange()
    ex = pair.exchanges[0]
    ex.leg.pause_request_body()  # no app connection yet, say
    for _ in range(3):
        pair.client.send_data(sid, b"w" * 15_000)
    pair.exchange()
    assert pair.client.local_flow_control_window(sid) == 65_535 - 45_000
    ex.reply_local(503, "shed")  # the exchange ends without taking the body
    events = pair.receive()
    credited = sum(e.delta for e in of(events, h2.events.WindowUpdated) if e.stream_id == 0)
    assert credited == 45_000


def test_frames_crossing_our_reset_are_discarded_until_a_ping_shows_it_seen() -> None:
    # The app answers while the client is still sending: the stream is reset (NO_ERROR, RFC
    # 9113 §8.1) and DATA the client sent meanwhile is discarded, not answered. A PING goes
    # with the reset; once it is answered the client has seen the reset, the id is forgotten,
    # and DATA on the stream is the client's error again (STREAM_CLOSED). One PING covers the
    # resets made before it; those made while it is out wait for the next.
    pair = H2Pair(answer=False)
    a, b, c = (pair.request(b"/up", method=b"POST", body=b"part", end=False) for _ in range(3))
    pair.send()
    first, second, third = pair.exchanges

    def late(sid: int) -> list[tuple[int, int, int, bytes]]:
        pair.conn.data_received(F.frame(F.DATA, 0, sid, b"late"))
        pair.loop.run_soon()
        return [f for f in frames_of(pair.transport.take()) if f[0] in (F.RST_STREAM, F.PING)]

    first.respond()
    second.respond()
    pair.loop.run_soon()
    out = pair.transport.take()
    sent = [(f[0], f[2], f[3]) for f in frames_of(out) if f[0] in (F.RST_STREAM, F.PING)]
    ping = [payload for kind, _, payload in sent if kind == F.PING]
    assert [(kind, sid) for kind, sid, _ in sent if kind == F.RST_STREAM] == [
        (F.RST_STREAM, a),
        (F.RST_STREAM, b),
    ]
    assert len(ping) == 1
    assert late(a) == [] and late(b) == []
    third.respond()  # reset while the PING is out: it waits for the next one
    pair.loop.run_soon()
    assert [f[0] for f in frames_of(pair.transport.take()) if f[0] == F.PING] == []
    pair.client.receive_data(out)  # the client sees the first two resets, and answers the PING
    pair.send()
    pair.loop.run_soon()
    assert [(f[0], f[3]) for f in frames_of(pair.transport.take())] == [(F.PING, ping[0])]
    assert late(a) == [(F.RST_STREAM, 0, a, F.STREAM_CLOSED.to_bytes(4, "big"))]
    assert late(c) == []
    assert pair.ctx.metrics.h2.client.resets == {(True, F.NO_ERROR): 3, (True, F.STREAM_CLOSED): 1}


def test_extended_connect_is_refused_since_it_is_never_enabled() -> None:
    # RFC 8441: a client may send :protocol (WebSocket over HTTP/2) only to a server that
    # advertised SETTINGS_ENABLE_CONNECT_PROTOCOL. The proxy never does, so :protocol is an
    # unknown pseudo-header field and the request malformed (RFC 9113 §8.3): RST_STREAM
    # PROTOCOL_ERROR, no exchange. A plain CONNECT is answered 501, as over HTTP/1.1.
    pair = H2Pair()
    pair.send()
    ours = pair.transport.take()
    settings = [f[3] for f in frames_of(ours) if f[0] == F.SETTINGS and not f[1] & F.ACK]
    advertised = {
        int.from_bytes(p[i : i + 2], "big") for p in settings for i in range(0, len(p), 6)
    }
    assert F.MAX_CONCURRENT_STREAMS in advertised
    assert 0x8 not in advertised  # SETTINGS_ENABLE_CONNECT_PROTOCOL
    pair.client.receive_data(ours)
    pair.send()
    websocket = [
        *[(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http")],
        *[(b":path", b"/chat"), (b":authority", b"t"), (b"sec-websocket-version", b"13")],
    ]
    block = pair.client.encoder.encode(websocket)
    pair.conn.data_received(F.frame(F.HEADERS, F.END_HEADERS, 1, block))
    assert F.rst_stream(1, F.PROTOCOL_ERROR) in pair.transport.take()
    assert not pair.exchanges
    block = pair.client.encoder.encode([(b":method", b"CONNECT"), (b":authority", b"t:443")])
    pair.conn.data_received(F.frame(F.HEADERS, F.END_HEADERS | F.END_STREAM, 3, block))
    assert pair.exchanges[0].rejected == (501, "CONNECT is not supported by a reverse proxy")
    assert not pair.transport.closed
