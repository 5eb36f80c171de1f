"""Faults from the app: malformed, truncated or overlong responses, and bytes where none belong.

The app is trusted but possibly buggy. Whatever it sends, the client gets either a well-formed
response or a connection closed without a clean end (so it can tell the response is broken),
and an app connection that misbehaved is closed, never reused for the next request.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator

import pytest
from support.client import connect, read_responses, request
from support.hardening import (
    CLOSE,
    TrackingUpstream,
    exchange,
    parse_responses,
    raw_request,
    read_until_close,
    running,
    script,
    split_head,
    wait_for,
)
from support.loop import LoopThread
from support.upstream import Received, ok

from sidecar_proxy.server import ProxyServer

# No retries (a fault is seen once) and no breaker (faults from earlier cases must not open it).
SETTINGS = {"max_retries": 0, "circuit_breaker_threshold": 0}
# The request each test's app answers badly, and the one after it that must be answered well.
REQUEST = raw_request(b"GET / HTTP/1.1", b"Host: test")
NEXT = raw_request(b"GET /next HTTP/1.1", b"Host: test")


pytestmark = pytest.mark.usefixtures("no_crash")


@pytest.fixture(scope="module")
def pair(loop: LoopThread) -> Iterator[tuple[TrackingUpstream, ProxyServer]]:
    with running(loop, ok, **SETTINGS) as pair:
        yield pair


@pytest.fixture
def app(app: TrackingUpstream) -> Iterator[TrackingUpstream]:
    """The shared app, its handler put back after each test (every test here scripts its own)."""
    yield app
    app.handler = ok


def faulty_connection(app: TrackingUpstream) -> int:
    """The app connection that carried the last request."""
    assert app.received, "the request never reached the app"
    return app.received[-1].connection


def assert_discarded(app: TrackingUpstream, conn: int) -> None:
    """The proxy closed the misbehaving connection (the scripted handlers never close it)."""
    assert wait_for(lambda: conn in app.ended), f"app connection {conn} was kept after a fault"


def assert_next_request_is_clean(sidecar: ProxyServer, app: TrackingUpstream, bad: int) -> None:
    """A following request is answered correctly, on another app connection."""
    app.handler = ok
    responses = request(sidecar.port, NEXT)
    assert [(r.status, r.body) for r in responses] == [(200, b"GET /next")]
    assert app.received[-1].connection != bad


HEAD = b"HTTP/1.1 200 OK\r\n"

MALFORMED_HEADS = [
    pytest.param(
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        id="content-length-and-chunked",
    ),
    pytest.param(HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nokk", id="two-lengths"),
    pytest.param(HEAD + b"Content-Length: two\r\n\r\nok", id="length-not-a-number"),
    pytest.param(HEAD + b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", id="obs-fold"),
    pytest.param(HEAD + b"X-A: a\rb\r\nContent-Length: 2\r\n\r\nok", id="cr-in-value"),
    pytest.param(HEAD + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", id="nul-in-value"),
    pytest.param(HEAD + b"X-A : a\r\nContent-Length: 2\r\n\r\nok", id="space-before-colon"),
    pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", id="bad-status-code"),
    pytest.param(b"hello, this is not HTTP\r\n\r\n", id="not-http"),
    pytest.param(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
        id="unasked-101",
    ),
]


@pytest.mark.parametrize("reply", MALFORMED_HEADS)
def test_malformed_response_head_is_502_and_the_connection_discarded(
    sidecar: ProxyServer, app: TrackingUpstream, reply: bytes
) -> None:
    app.handler = script(reply)
    cap = exchange(sidecar.port, REQUEST, responses=1)
    parsed = parse_responses(cap.data)
    assert parsed.error is None and parsed.partial is None, cap.data
    assert parsed.statuses == [502], cap.data
    bad = faulty_connection(app)
    assert_discarded(app, bad)
    assert_next_request_is_clean(sidecar, app, bad)


def test_app_closing_without_an_answer_is_502(sidecar: ProxyServer, app: TrackingUpstream) -> None:
    app.handler = script(CLOSE)
    cap = exchange(sidecar.port, REQUEST, responses=1)
    assert parse_responses(cap.data).statuses == [502], cap.data
    assert_next_request_is_clean(sidecar, app, faulty_connection(app))


CHUNKED_HEAD = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


def test_invalid_chunk_before_anything_reached_the_client_is_502(
    sidecar: ProxyServer, app: TrackingUpstream
) -> None:
    app.handler = script(CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n")
    cap = exchange(sidecar.port, REQUEST)
    parsed = parse_responses(cap.data)
    assert parsed.error is None and parsed.partial is None, cap.data
    assert parsed.statuses == [502], cap.data
    assert_discarded(app, faulty_connection(app))


def assert_aborted(data: bytes, closed: bool, body_so_far: bytes) -> None:
    """The client got the head and part of the body, then a close without a clean end."""
    parsed = parse_responses(data)
    assert parsed.error is None, data
    assert parsed.responses == [], f"a broken response was completed: {data!r}"
    assert parsed.partial is not None and parsed.partial.status == 200, data
    assert parsed.partial.body == body_so_far
    assert closed
    assert not data.endswith(b"0\r\n\r\n"), "the client was given a clean end"


@pytest.mark.parametrize(
    "rest",
    [
        pytest.param(b"zz\r\nmore\r\n", id="chunk-size-zz"),
        pytest.param(b"5\r\nworldXX", id="no-crlf-after-data"),
        pytest.param(b"fffffffffffffffffff\r\n", id="chunk-size-overflow"),
    ],
)
def test_invalid_chunk_after_the_head_was_sent_aborts_the_client(
    sidecar: ProxyServer, app: TrackingUpstream, rest: bytes
) -> None:
    app.handler = script(CHUNKED_HEAD + b"5\r\nhello\r\n", 0.1, rest)
    cap = exchange(sidecar.port, REQUEST)
    assert_aborted(cap.data, cap.closed, b"hello")
    bad = faulty_connection(app)
    assert_discarded(app, bad)
    assert_next_request_is_clean(sidecar, app, bad)


@pytest.mark.parametrize(
    ("reply", "so_far"),
    [
        pytest.param(HEAD + b"Content-Length: 100\r\n\r\n0123456789", b"0123456789", id="length"),
        pytest.param(CHUNKED_HEAD + b"5\r\nhello\r\n", b"hello", id="chunked"),
    ],
)
def test_response_cut_short_closes_the_client_without_a_clean_end(
    sidecar: ProxyServer, app: TrackingUpstream, reply: bytes, so_far: bytes
) -> None:
    app.handler = script(reply, 0.05, CLOSE)
    cap = exchange(sidecar.port, REQUEST)
    assert_aborted(cap.data, cap.closed, so_far)
    assert_next_request_is_clean(sidecar, app, faulty_connection(app))


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"EXTRA", id="garbage"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!", id="second-response"),
        pytest.param(b"H", id="one-byte"),
    ],
)
def test_bytes_after_a_complete_response_never_reach_the_next_request(
    sidecar: ProxyServer, app: TrackingUpstream, extra: bytes
) -> None:
    app.handler = script(HEAD + b"Content-Length: 2\r\n\r\nok" + extra)
    with connect(sidecar.port) as sock:
        sock.sendall(REQUEST)
        (resp,), _ = read_responses(sock, 1)
        assert (resp.status, resp.body) == (200, b"ok")
        bad = faulty_connection(app)
        app.handler = ok
        # the next request on the same client connection gets its own answer
        sock.sendall(NEXT)
        responses, _ = read_responses(sock, 1)
    assert [(r.status, r.body) for r in responses] == [(200, b"GET /next")]
    assert app.received[-1].connection != bad
    assert_discarded(app, bad)


NO_BODY = [
    pytest.param((b"HEAD", HEAD + b"Content-Length: 5\r\n\r\n", b"hello"), id="HEAD"),
    pytest.param(
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"hello"), id="204"
    ),
    pytest.param(
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", b"hello"), id="304"
    ),
    pytest.param(
        (
            b"GET",
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        id="204-chunked",
    ),
]


@pytest.mark.parametrize("late", [False, True], ids=["same-write", "late-write"])
@pytest.mark.parametrize("case", NO_BODY)
def test_body_on_a_response_that_has_none_is_dropped(
    sidecar: ProxyServer, app: TrackingUpstream, case: tuple[bytes, bytes, bytes], late: bool
) -> None:
    method, head, body = case
    # RFC 9110 §6.4.1: no content in responses to HEAD, nor in 204 and 304. The stray bytes
    # must neither reach this client nor be taken for the answer to the next request.
    app.handler = script(head, 0.05, body) if late else script(head + body)
    with connect(sidecar.port) as sock:
        sock.sendall(raw_request(method + b" / HTTP/1.1", b"Host: test"))
        cap = read_until_close(sock, 1.0, linger=0.2)
        got_head, after = split_head(cap.data)
        assert after == b"", f"body bytes reached the client: {after!r}"
        assert not cap.closed
        assert got_head.startswith(head.split(b"\r\n")[0])
        time.sleep(0.1)  # a late body has arrived at the proxy by now
        app.handler = ok
        sock.sendall(NEXT)
        responses, _ = read_responses(sock, 1)
    assert [(r.status, r.body) for r in responses] == [(200, b"GET /next")]


def test_oversized_response_head_is_refused_promptly(loop: LoopThread) -> None:
    # A response head that never ends: the proxy must stop buffering it at some bound and
    # answer 502, not hold megabytes until request_timeout.
    endless = script(HEAD + b"X-Big: " + b"a" * (2 << 20), 5.0)
    with running(loop, endless, request_timeout=3.0, **SETTINGS) as (_, sidecar):
        start = time.monotonic()
        cap = exchange(sidecar.port, REQUEST, timeout=4.0)
        elapsed = time.monotonic() - start
    assert parse_responses(cap.data).statuses == [502], cap.data[:200]
    assert elapsed < 2.0, elapsed  # at the bound, well before the 3 s request timeout


def test_response_trailer_section_is_bounded(loop: LoopThread) -> None:
    # Trailer fields after the last chunk, without end: the head is out, so the client's
    # connection must be cut without a clean end, promptly, not after megabytes and a timeout.
    async def endless_trailers(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n")
        for i in range(2000):
            if w.is_closing():  # the proxy (or the test's end) hung up
                return
            w.write(b"X-T%d: %b\r\n" % (i, b"t" * 1000))
            await w.drain()
            await asyncio.sleep(0.001)

    with running(loop, endless_trailers, request_timeout=3.0, **SETTINGS) as (_, sidecar):
        start = time.monotonic()
        cap = exchange(sidecar.port, REQUEST, timeout=5.0)
        elapsed = time.monotonic() - start
    assert_aborted(cap.data, cap.closed, b"hello")
    assert elapsed < 1.5, elapsed  # the app's trailers would take 2 s or more


def test_response_with_a_transfer_coding_the_proxy_does_not_decode(
    sidecar: ProxyServer, app: TrackingUpstream
) -> None:
    # RFC 9112 §6.3: a response whose final coding is not chunked is delimited by the close.
    # The proxy does not decode gzip, so it must either refuse (502) or keep the coding
    # labelled and end the relayed body cleanly; never pass gzip bytes off as the content.
    encoded = gzip.compress(b"hello world")
    app.handler = script(HEAD + b"Transfer-Encoding: gzip\r\n\r\n" + encoded, CLOSE)
    cap = exchange(sidecar.port, REQUEST)
    parsed = parse_responses(cap.data)
    assert parsed.error is None, cap.data
    if parsed.statuses == [502]:
        return
    assert len(parsed.responses) == 1, f"no clean end: {cap.data!r}"
    (resp,) = parsed.responses
    assert "gzip" in (resp.header("Transfer-Encoding") or "").lower(), cap.data
