"""Timeouts against slow peers on real sockets: a client that dribbles its head (slowloris), a
byte per TCP segment, is cut off on time, and slow clients do not hold up the others.

An upload toward an app that stops reading it is the app's stall (504), not the client's (408).

The timeouts are set small and distinct, so a test also notices the wrong timer firing. The other
deadlines (a silent connection, a stalled body, a slow but live upload, the idle keep-alive
timeout, stale pooled app connections) are logic, checked at their exact boundaries on the fake
clock in tests/dataplane/test_client_deadlines.py and test_pool.py.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support.client import connect, read_responses
from support.hardening import (
    Capture,
    RawApp,
    TrackingUpstream,
    assert_nothing_reached,
    assert_rejected,
    mark,
    proxy_to,
    raw_request,
    read_until_close,
    running,
    send_tolerant,
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


def upload_until_answered(sock: socket.socket, limit: float) -> Capture:
    """Send body bytes as fast as the proxy takes them until it answers, closes or ``limit``
    passes; then collect what it wrote."""
    start = time.monotonic()
    piece = b"u" * 65536
    sock.setblocking(False)
    try:
        while time.monotonic() - start < limit:
            readable, writable, _ = select.select([sock], [sock], [], 0.05)
            if readable:
                break
            if writable:
                try:
                    sock.send(piece)
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break
    finally:
        sock.setblocking(True)
    cap = read_until_close(sock, 3.0)
    return Capture(cap.data, cap.closed, time.monotonic() - start)


def test_an_upload_the_app_stops_reading_is_504_not_408(loop: LoopThread) -> None:
    # The app reads the head and nothing more: once the buffers between it and the client are
    # full the client cannot send, through no fault of its own. The body timeout (shorter) must
    # not fire; the app's stall limit (REQUEST_TIMEOUT) does.
    async def stops_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)  # never reads again, never answers; cancelled at stop

    raw_app = RawApp(stops_reading)
    loop.run(raw_app.start())
    settings = {**TIMEOUTS, "request_timeout": 1.0, "max_retries": 0}
    head = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Content-Length: %d" % (1 << 30))
    try:
        with proxy_to(loop, raw_app.port, **settings) as proxy, connect(proxy.port) as sock:
            sock.sendall(head)
            cap = upload_until_answered(sock, limit=10.0)
    finally:
        loop.run(raw_app.stop())
    resp = assert_rejected(cap, 504)
    assert resp.body == b"504 Gateway Timeout: the app stopped reading the request\n"
    assert cap.elapsed > 1.0  # not before the app's stall limit
