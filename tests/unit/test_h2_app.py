"""The HTTP/2 app leg without sockets: our app connection against an ``h2`` server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from support.fakes import FakeLoop
from support.fakes import FakeTransport as LoopTransport
from support.h2peer import FakeTransport, frames_of, of

from sidecar_proxy.config import Settings
from sidecar_proxy.http.fields import RequestHead, ResponseHead
from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.app import H2AppConnection, H2AppPool, H2AppStream
from sidecar_proxy.http.legs import AppLeg, Trailers
from sidecar_proxy.observe.metrics import H2Counts


class Events:
    """An AppEvents that writes down what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.heads: list[ResponseHead] = []
        self.body = b""
        self.paused: list[bool] = []

    def response_head(self, app: AppLeg, resp: ResponseHead) -> None:
        self.heads.append(resp)
        self.seen.append(("head", resp.status))

    def response_body(self, data: bytes) -> None:
        self.body += data

    def response_end(self, app: AppLeg, trailers: Trailers | None) -> None:
        self.seen.append(("end", trailers))

    def read_done(self) -> None:
        self.seen.append(("read_done", None))

    def app_eof(self, app: AppLeg) -> None:
        self.seen.append(("eof", None))

    def app_lost(self, app: AppLeg, exc: BaseException | None) -> None:
        self.seen.append(("lost", None))

    def app_refused(self, app: AppLeg) -> None:
        self.seen.append(("refused", None))

    def app_protocol_error(self, app: AppLeg, reason: str) -> None:
        self.seen.append(("protocol_error", reason))

    def app_write_paused(self, paused: bool) -> None:
        self.paused.append(paused)

    def tunnel_data_from_app(self, data: bytes) -> None:
        raise AssertionError("no tunnel over HTTP/2")

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.seen if kind != "read_done"]


class AppPair:
    """Our app connection and an ``h2`` server as the app, wired by hand."""

    def __init__(self, loop: asyncio.AbstractEventLoop, **overrides: Any) -> None:
        self.loop = loop
        settings = dataclasses.replace(Settings(), **overrides)
        self.pool = H2AppPool(loop, settings, lambda reused: None, H2Counts())
        self.conn = H2AppConnection(self.pool)
        self.transport = FakeTransport()
        self.conn.connection_made(self.transport)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.app = h2.connection.H2Connection(config)
        self.app.initiate_connection()
        self.to_app()
        self.to_proxy()
        self.to_app()

    def to_app(self) -> list[h2.events.Event]:
        self.loop.run_until_complete(asyncio.sleep(0))  # scheduled writes
        events: list[h2.events.Event] = self.app.receive_data(self.transport.take())
        return events

    def to_proxy(self) -> None:
        data = self.app.data_to_send()
        if data:
            self.conn.data_received(data)

    def stream(self, events: Events) -> H2AppStream:
        st = self.conn.new_stream()
        st.bind(events)
        return st


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def post() -> RequestHead:
    head = RequestHead()
    head.method, head.target, head.version = b"POST", b"/rpc", "2.0"
    head.host, head.host_count, head.host_line = b"app.test", 1, 1
    head.lines = [b"content-type: application/grpc\r\n", b"host: app.test\r\n", b"te: trailers\r\n"]
    head.names = [b"content-type", b"host", b"te"]
    head.chunked = True
    return head


def test_request_and_response_with_trailers_both_ways(loop: asyncio.AbstractEventLoop) -> None:
    pair = AppPair(loop)
    ev = Events()
    st = pair.stream(ev)
    st.send_request(post(), [b"X-Request-ID: r1\r\n"], [b"abc"], None)
    st.send_body(b"def")
    st.send_end([(b"grpc-status", b"0")])
    events = pair.to_app()
    request = of(events, h2.events.RequestReceived)[0]
    fields = dict(request.headers)
    assert fields[b":authority"] == b"app.test" and b"host" not in fields
    assert fields[b":method"] == b"POST" and fields[b":path"] == b"/rpc"
    assert fields[b"te"] == b"trailers" and fields[b"x-request-id"] == b"r1"
    assert b"".join(d.data for d in of(events, h2.events.DataReceived)) == b"abcdef"
    assert of(events, h2.events.TrailersReceived)[0].headers == [(b"grpc-status", b"0")]
    sid = request.stream_id
    pair.app.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    pair.app.send_data(sid, b"reply")
    pair.app.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    pair.to_proxy()
    assert ev.kinds() == ["head", "end"]
    assert ev.heads[0].lines == [b"content-type: application/grpc\r\n"]
    assert ev.heads[0].framed
    assert ev.body == b"reply"
    assert ev.seen[-2] == ("end", [(b"grpc-status", b"0")])
    assert ev.seen[-1] == ("read_done", None)
    st.release(True)
    assert not of(pair.to_app(), h2.events.StreamReset)  # a finished stream is not reset
    assert pair.pool.idle_count == 0  # the pool holds no connections it did not open


def test_interim_response_then_the_final_one(loop: asyncio.AbstractEventLoop) -> None:
    pair = AppPair(loop)
    ev = Events()
    st = pair.stream(ev)
    st.send_request(post(), [], [], [])
    sid = of(pair.to_app(), h2.events.RequestReceived)[0].stream_id
    pair.app.send_headers(sid, [(b":status", b"103"), (b"link", b"</a>")])
    pair.app.send_headers(sid, [(b":status", b"204")], end_stream=True)
    pair.to_proxy()
    assert [(k, v) for k, v in ev.seen if k != "read_done"] == [
        ("head", 103),
        ("end", None),
        ("head", 204),
        ("end", None),
    ]


def test_refused_and_reset_streams(loop: asyncio.AbstractEventLoop) -> None:
    pair = AppPair(loop)
    refused, reset = Events(), Events()
    a, b = pair.stream(refused), pair.stream(reset)
    a.send_request(post(), [], [], [])
    b.send_request(post(), [], [], [])
    first, second = (e.stream_id for e in of(pair.to_app(), h2.events.RequestReceived))
    pair.app.reset_stream(first, h2.errors.ErrorCodes.REFUSED_STREAM)
    pair.app.reset_stream(second, h2.errors.ErrorCodes.INTERNAL_ERROR)
    pair.to_proxy()
    assert refused.kinds() == ["refused"]  # never processed: retried whatever the method
    assert reset.kinds() == ["lost"]
    assert pair.pool.counts.resets == {(False, 7): 1, (False, 2): 1}  # received, by code


def test_a_response_to_a_stream_we_reset_is_ignored(loop: asyncio.AbstractEventLoop) -> None:
    # A client cancels its call while the app is answering it: the app's response head crosses
    # our RST_STREAM on the wire. RFC 9113 §5.1 (closed): frames the peer sent before it saw the
    # reset are ignored; the other calls on the connection go on.
    pair = AppPair(loop)
    cancelled, kept = Events(), Events()
    a, b = pair.stream(cancelled), pair.stream(kept)
    a.send_request(post(), [], [], [])
    b.send_request(post(), [], [], [])
    first, second = (e.stream_id for e in of(pair.to_app(), h2.events.RequestReceived))
    pair.app.send_headers(first, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    a.abandon()  # RST_STREAM CANCEL goes out; the app's HEADERS are already on their way
    pair.to_proxy()
    pair.app.send_headers(second, [(b":status", b"200")])
    pair.app.send_headers(second, [(b"grpc-status", b"0")], end_stream=True)
    pair.to_proxy()
    assert cancelled.kinds() == []
    assert kept.kinds() == ["head", "end"]
    events = pair.to_app()
    assert [e.stream_id for e in of(events, h2.events.StreamReset)] == [first]
    assert of(events, h2.events.ConnectionTerminated) == []


def test_goaway_refuses_the_streams_above_its_last_id(loop: asyncio.AbstractEventLoop) -> None:
    pair = AppPair(loop)
    kept, gone = Events(), Events()
    a, b = pair.stream(kept), pair.stream(gone)
    a.send_request(post(), [], [], [])
    b.send_request(post(), [], [], [])
    first = of(pair.to_app(), h2.events.RequestReceived)[0].stream_id
    pair.app.close_connection(last_stream_id=first)
    pair.to_proxy()
    assert gone.kinds() == ["refused"]
    assert kept.kinds() == []  # still served
    assert pair.pool.counts.goaways == {(False, 0): 1}  # NO_ERROR, received
    assert not pair.conn.has_room()  # new streams go to another connection
    late = pair.stream(Events())
    late.send_request(post(), [], [], [])  # handed out before the GOAWAY arrived
    loop.run_until_complete(asyncio.sleep(0))
    assert late.events is not None
    assert isinstance(late.events, Events) and late.events.kinds() == ["refused"]


def test_malformed_response_is_a_protocol_error(loop: asyncio.AbstractEventLoop) -> None:
    pair = AppPair(loop)
    ev = Events()
    st = pair.stream(ev)
    st.send_request(post(), [], [], [])
    sid = of(pair.to_app(), h2.events.RequestReceived)[0].stream_id
    # the h2 library checks its own output, so the bad head is encoded by hand
    block = pair.app.encoder.encode([(b":status", b"200"), (b"connection", b"close")])
    pair.conn.data_received(b"\x00\x00" + bytes([len(block), 1, 5, 0, 0, 0, sid]) + block)
    assert ev.kinds() == ["protocol_error"]
    reset = of(pair.to_app(), h2.events.StreamReset)[0]
    assert reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_response_window_opens_only_as_the_client_reads(loop: asyncio.AbstractEventLoop) -> None:
    pair = AppPair(loop, h2_stream_window=65_535)
    ev = Events()
    st = pair.stream(ev)
    st.send_request(post(), [], [], [])
    sid = of(pair.to_app(), h2.events.RequestReceived)[0].stream_id
    pair.app.send_headers(sid, [(b":status", b"200")])
    st.pause_reading()  # the client reads slower than the app sends
    for _ in range(4):
        pair.app.send_data(sid, b"x" * 15_000)
    pair.to_proxy()
    assert len(ev.body) == 60_000  # handed on, but not credited
    assert not [e for e in of(pair.to_app(), h2.events.WindowUpdated) if e.stream_id == sid]
    st.resume_reading()
    updates = [e for e in of(pair.to_app(), h2.events.WindowUpdated) if e.stream_id == sid]
    assert updates and updates[0].delta == 60_000


def test_request_body_past_the_apps_window_pauses_the_client(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pair = AppPair(loop)
    ev = Events()
    st = pair.stream(ev)
    st.send_request(post(), [], [], None)
    st.send_body(b"y" * 200_000)  # the app's window is 65,535
    assert ev.paused == [True]
    events = pair.to_app()
    got = sum(len(d.data) for d in of(events, h2.events.DataReceived))
    assert got == 65_535
    sid = of(events, h2.events.RequestReceived)[0].stream_id
    pair.app.increment_flow_control_window(200_000, sid)
    pair.app.increment_flow_control_window(200_000)
    pair.to_proxy()
    assert ev.paused == [True, False]
    got = sum(len(d.data) for d in of(pair.to_app(), h2.events.DataReceived))
    assert got == 200_000 - 65_535


def test_a_thousand_cancelled_calls_cost_the_other_calls_nothing(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # Clients cancel 1,200 calls on one app connection, in two bursts of 600, each call while
    # the app's answer is streaming. Every answer crosses our RST_STREAM and is discarded
    # (RFC 9113 §5.1), however many there are: a closed stream of ours is known by its id
    # alone, not by a bounded list of the streams we reset, so none is ever forgotten into a
    # connection error, and the discarded DATA gives the connection window back (the second
    # burst needs it). The call that was not cancelled is answered in full.
    pair = AppPair(loop)
    pair.app.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1_000})
    pair.to_proxy()
    pair.to_app()
    kept = Events()
    survivor = pair.stream(kept)
    survivor.send_request(post(), [], [], [])
    kept_id = of(pair.to_app(), h2.events.RequestReceived)[0].stream_id
    answer = b"x" * 1_000  # 600 kB a burst: the two need more than our 1 MiB window
    for _ in range(2):
        cancelled = [pair.stream(Events()) for _ in range(600)]
        for st in cancelled:
            st.send_request(post(), [], [], [])
        for event in of(pair.to_app(), h2.events.RequestReceived):
            pair.app.send_headers(event.stream_id, [(b":status", b"200")])
            pair.app.send_data(event.stream_id, answer)  # a response under way
        for st in cancelled:
            st.abandon()  # RST_STREAM CANCEL; the answer is already on the wire
        pair.to_proxy()
        events = pair.to_app()
        assert len(of(events, h2.events.StreamReset)) == 600
        assert not of(events, h2.events.ConnectionTerminated)
        pair.to_proxy()
    assert list(pair.conn.streams) == [kept_id]
    assert pair.pool.counts.resets == {(True, 8): 1_200}  # CANCEL, sent
    assert pair.pool.counts.streams_active == 1
    pair.app.send_headers(kept_id, [(b":status", b"200")])
    pair.app.send_data(kept_id, b"still here", end_stream=True)
    pair.to_proxy()
    assert kept.kinds() == ["head", "end"] and kept.body == b"still here"
    assert not pair.conn.closing
    assert pair.pool.counts.streams_active == 0


class FutureLoop(FakeLoop):
    """A fake clock that can also make the futures a connection keeps (its ``ready``)."""

    def __init__(self, futures: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.futures = futures

    def create_future(self) -> asyncio.Future[Any]:
        return self.futures.create_future()


def test_keepalive_pings_a_silent_app_and_closes_when_it_stays_silent(
    loop: asyncio.AbstractEventLoop,
) -> None:
    fake = FutureLoop(loop)
    settings = dataclasses.replace(Settings(), h2_keepalive_interval=10.0, h2_keepalive_timeout=4.0)
    pool = H2AppPool(fake.as_loop(), settings, lambda reused: None, H2Counts())
    conn = H2AppConnection(pool)
    transport = LoopTransport(fake)
    transport.connect(conn)
    app = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    app.initiate_connection()
    app.receive_data(transport.take())
    conn.data_received(app.data_to_send())
    pool.add(conn)
    ev = Events()
    st = conn.new_stream()
    st.bind(ev)
    st.send_request(post(), [], [], [])  # a call the app is slow to answer: nothing comes back
    fake.run_ready()
    app.receive_data(transport.take())

    def next_ping() -> tuple[bytes, float]:
        """Waits a second at a time for our next PING: its payload, and the time it took."""
        for waited in range(1, 30):
            fake.advance(1.0)
            sent = [f[3] for f in frames_of(transport.take()) if f[0] == F.PING and not f[1]]
            if sent:
                return sent[0], waited
        raise AssertionError("no PING")

    # Checked every 2 s (half the shorter setting): a PING 10 to 14 s after the last frame
    # heard, a close 4 to 6 s after a PING that is not answered.
    for _ in range(3):
        payload, waited = next_ping()
        assert 10 <= waited <= 14
        app.receive_data(F.ping(payload))
        conn.data_received(app.data_to_send())  # the answer; any frame would do
    assert not conn.closing and pool.counts.keepalive_timeouts == 0
    next_ping()  # and this one is not answered
    fake.advance(3.0)
    assert not conn.closing
    fake.advance(3.0)
    assert conn.closing and transport.closed
    assert pool.counts.keepalive_timeouts == 1
    assert ev.kinds() == ["lost"]  # the call fails now, not at its deadline
    assert pool.counts.goaways == {}  # cut: a peer that does not answer would not read one
    assert not fake.timers_for(pool._check_alive)  # no connections left: the timer stops
