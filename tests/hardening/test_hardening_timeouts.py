"""Timeouts against slow peers: a client that dribbles its head (slowloris), stalls its body or
idles on a kept-alive connection is cut off on time, a slow but live upload is not, one slow
client does not hold up the others, and stale pooled app connections are not reused.

The timeouts are set small and distinct, so a test also notices the wrong timer firing.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support.client import closed_by_peer, connect, get, read_responses
from support.hardening import (
    Capture,
    TrackingUpstream,
    assert_never_completed,
    assert_nothing_reached,
    assert_rejected,
    mark,
    parse_responses,
    raw_request,
    read_until_close,
    running,
    send_tolerant,
    wait_for,
)
from support.loop import LoopThread
from support.upstream import Received, ok, response

from sidecar_proxy.server import ProxyServer

HEADER_TIMEOUT = 0.4
BODY_TIMEOUT = 0.4
IDLE_TIMEOUT = 1.0
MARGIN = 0.3  # scheduling slack; below IDLE_TIMEOUT - HEADER_TIMEOUT, so a wrong timer shows
TIMEOUTS = {
    "client_header_timeout": HEADER_TIMEOUT,
    "client_body_timeout": BODY_TIMEOUT,
    "client_idle_timeout": IDLE_TIMEOUT,
}


pytestmark = pytest.mark.usefixtures("no_crash")


@pytest.fixture
def pair(loop: LoopThread) -> Iterator[tuple[TrackingUpstream, ProxyServer]]:
    with running(loop, ok, **TIMEOUTS) as pair:
        yield pair


def dribble_until_answered(sock: socket.socket, data: bytes, gap: float, limit: float) -> Capture:
    """Send ``data`` a byte at a time, ``gap`` seconds apart, until the proxy answers or closes;
    then collect the rest. ``elapsed`` counts from the first byte."""
    start = time.monotonic()
    for i in range(len(data)):
        if not send_tolerant(sock, data[i : i + 1]):
            break
        readable, _, _ = select.select([sock], [], [], gap)
        if readable or time.monotonic() - start > limit:
            break
    cap = read_until_close(sock, 2.0)
    return Capture(cap.data, cap.closed, time.monotonic() - start)


SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200


@pytest.mark.parametrize("after_a_request", [False, True], ids=["first-request", "kept-alive"])
def test_slowloris_head_gets_408_within_the_header_timeout(
    pair: tuple[TrackingUpstream, ProxyServer], after_a_request: bool
) -> None:
    # A byte every 50 ms keeps the connection busy forever if each byte reset the clock: the
    # header timeout must count from the request's first byte.
    app, sidecar = pair
    with connect(sidecar.port) as sock:
        if after_a_request:
            sock.sendall(raw_request(b"GET /first HTTP/1.1", b"Host: test"))
            (first,), _ = read_responses(sock, 1)
            assert first.status == 200
        before = mark(app)
        cap = dribble_until_answered(sock, SLOW_HEAD, gap=0.05, limit=3.0)
    assert_rejected(cap, 408)
    assert HEADER_TIMEOUT - 0.05 <= cap.elapsed <= HEADER_TIMEOUT + MARGIN, cap.elapsed
    assert_nothing_reached(app, before)


def test_silent_connection_is_closed_after_the_header_timeout(
    pair: tuple[TrackingUpstream, ProxyServer],
) -> None:
    _, sidecar = pair
    with connect(sidecar.port) as sock:
        cap = read_until_close(sock, 3.0)
    assert cap.closed
    assert HEADER_TIMEOUT - 0.05 <= cap.elapsed <= HEADER_TIMEOUT + MARGIN, cap.elapsed
    # closing silently or with a 408 are both fine; anything else is not
    assert cap.data == b"" or parse_responses(cap.data).statuses == [408], cap.data


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    pair: tuple[TrackingUpstream, ProxyServer],
) -> None:
    _, sidecar = pair
    with connect(sidecar.port) as sock:
        sock.sendall(raw_request(b"GET / HTTP/1.1", b"Host: test"))
        (resp,), _ = read_responses(sock, 1)
        assert resp.status == 200 and resp.header("Connection") is None
        start = time.monotonic()
        assert closed_by_peer(sock, 3.0)
        elapsed = time.monotonic() - start
    # not the header timeout (shorter), not never
    assert IDLE_TIMEOUT - 0.1 <= elapsed <= IDLE_TIMEOUT + MARGIN, elapsed


def test_kept_alive_connection_serves_a_request_after_a_pause_shorter_than_idle(
    pair: tuple[TrackingUpstream, ProxyServer],
) -> None:
    _, sidecar = pair
    with connect(sidecar.port) as sock:
        for _ in range(2):
            sock.sendall(raw_request(b"GET / HTTP/1.1", b"Host: test"))
            (resp,), closed = read_responses(sock, 1)
            assert resp.status == 200 and not closed
            time.sleep(HEADER_TIMEOUT + 0.1)  # longer than the header timeout, shorter than idle


def test_stalled_body_gets_408_within_the_body_timeout(
    pair: tuple[TrackingUpstream, ProxyServer],
) -> None:
    app, sidecar = pair
    assert get(sidecar.port).status == 200  # warm: the head streams to the app at once
    before = mark(app)
    with connect(sidecar.port) as sock:
        head = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Content-Length: 10")
        sock.sendall(head + b"abc")
        start = time.monotonic()
        cap = read_until_close(sock, 3.0)
    elapsed = time.monotonic() - start
    assert_rejected(cap, 408)
    assert BODY_TIMEOUT - 0.05 <= elapsed <= BODY_TIMEOUT + MARGIN, elapsed
    assert_never_completed(app, before)


def trickle_upload(port: int, body: bytes, gap: float, out: list[tuple[int, bytes]]) -> None:
    with connect(port) as sock:
        head = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Content-Length: %d" % len(body))
        sock.sendall(head)
        for i in range(len(body)):
            time.sleep(gap)
            sock.sendall(body[i : i + 1])
        responses, _ = read_responses(sock, 1)
    out.extend((r.status, r.body) for r in responses)


def test_slow_but_live_upload_is_neither_cut_off_nor_blamed_on_the_app(loop: LoopThread) -> None:
    # Each byte comes well within the body timeout, the whole upload outlasts both the body
    # timeout and request_timeout. The upload is the client's time: the app must get the
    # request, and the breaker must not count three slow clients as three app failures.
    async def echo(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(response(200, req.body))

    settings = {
        **TIMEOUTS,
        "request_timeout": 0.5,
        "circuit_breaker_threshold": 2,
        "max_retries": 0,
    }
    with running(loop, echo, **settings) as (_, sidecar):
        out: list[tuple[int, bytes]] = []
        threads = [
            threading.Thread(target=trickle_upload, args=(sidecar.port, b"0123456789", 0.1, out))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert out == [(200, b"0123456789")] * 3
        assert get(sidecar.port).status == 200  # the breaker is still closed


def test_slow_clients_do_not_hold_up_the_others(loop: LoopThread) -> None:
    # While some connections dribble a head, stall a body, or refuse to read a large
    # response, plenty of ordinary requests on other connections complete promptly.
    big = b"x" * (8 << 20)

    async def handler(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(response(200, big if req.target == "/big" else b"fine"))

    settings = {**TIMEOUTS, "client_header_timeout": 10.0, "client_body_timeout": 10.0}
    with running(loop, handler, **settings) as (_, sidecar):
        slow: list[socket.socket] = []
        try:
            for _ in range(5):  # heads that never end
                s = connect(sidecar.port)
                s.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: a")
                slow.append(s)
            for _ in range(3):  # bodies that never end
                s = connect(sidecar.port)
                s.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nab")
                slow.append(s)
            for _ in range(2):  # large responses nobody reads
                s = connect(sidecar.port)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
                slow.append(s)
            time.sleep(0.1)

            latencies: list[float] = []
            failures: list[str] = []

            def client() -> None:
                with connect(sidecar.port) as sock:
                    for _ in range(10):
                        t0 = time.monotonic()
                        sock.sendall(b"GET /n HTTP/1.1\r\nHost: test\r\n\r\n")
                        responses, _ = read_responses(sock, 1, timeout=3.0)
                        latencies.append(time.monotonic() - t0)
                        if [(r.status, r.body) for r in responses] != [(200, b"fine")]:
                            failures.append(repr(responses))

            start = time.monotonic()
            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            total = time.monotonic() - start
        finally:
            for s in slow:
                s.close()
    assert failures == []
    assert len(latencies) == 80
    assert max(latencies) < 0.5, max(latencies)
    assert total < 3.0, total


def test_pooled_app_connection_idle_too_long_is_not_reused(loop: LoopThread) -> None:
    with running(loop, ok, upstream_idle_timeout=0.3) as (app, sidecar):
        assert get(sidecar.port).status == 200
        assert get(sidecar.port).status == 200
        assert [r.connection for r in app.received] == [1, 1]  # fresh enough: reused
        time.sleep(0.5)
        # the proxy closed the stale one itself rather than waiting for a request to find it
        assert wait_for(lambda: 1 in app.ended, timeout=1.0)
        assert get(sidecar.port).status == 200
        assert [r.connection for r in app.received] == [1, 1, 2]
