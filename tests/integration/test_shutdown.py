"""Graceful shutdown of the real process: drain as Kubernetes needs it."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support.client import closed_by_peer, connect, get, read_responses
from support.pod import alive, run_pod, wait_for
from support.process import run_proxy
from support.upstream import Received, Upstream, response, upstream_thread


@pytest.fixture
def slow_app() -> Iterator[Upstream]:
    async def slow(req: Received, w: asyncio.StreamWriter) -> None:
        if req.target.startswith("/slower"):
            await asyncio.sleep(2.5)  # still running when the drain delay ends
        elif req.target.startswith("/slow"):
            await asyncio.sleep(1.0)
        w.write(response(200, req.target.encode()))

    with upstream_thread(slow) as up:
        yield up


def test_sigterm_drains_in_flight_requests_and_exits_zero(slow_app: Upstream) -> None:
    drain = 1.5  # long enough that the checks below fit inside it on a loaded machine
    env = {"DRAIN_DELAY": f"{drain}s", "SHUTDOWN_GRACE_PERIOD": "5s"}
    with run_proxy(slow_app.port, env) as proc:
        results: list[int] = []

        def slow_request() -> None:
            results.append(get(proc.port, "/slow").status)

        idle = connect(proc.port)  # a keep-alive connection with nothing in flight
        idle.sendall(b"GET /warm HTTP/1.1\r\nHost: t\r\n\r\n")
        read_responses(idle, 1)
        busy = connect(proc.port)  # a keep-alive connection that will be mid-request
        busy.sendall(b"GET /slower HTTP/1.1\r\nHost: t\r\n\r\n")
        threads = [threading.Thread(target=slow_request) for _ in range(5)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)

        # /ready turns 503 at once, while the listener is still open and serving
        deadline = time.monotonic() + 0.5
        while proc.ready() != 503:
            assert time.monotonic() < deadline, "/ready did not turn 503 promptly"
            time.sleep(0.01)
        assert get(proc.port, "/during-drain").status == 200  # new requests are still served
        assert time.monotonic() - sent < drain, "too slow to test inside the drain delay"

        # after the drain delay the listener is closed
        time.sleep(drain - (time.monotonic() - sent) + 0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()

        # the idle keep-alive connection was closed; the busy one finishes with Connection: close
        assert idle.recv(1) == b""
        (resp,), _ = read_responses(busy, 1)
        assert resp.status == 200 and resp.header("Connection") == "close"
        for t in threads:
            t.join(5)
        assert results == [200] * 5
        assert proc.proc.wait(5) == 0
        idle.close()
        busy.close()


def test_grace_period_cuts_what_is_left(slow_app: Upstream) -> None:
    env = {"DRAIN_DELAY": "0s", "SHUTDOWN_GRACE_PERIOD": "0.2s"}
    with run_proxy(slow_app.port, env) as proc, connect(proc.port) as sock:
        sock.sendall(b"GET /slower HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(5) == 0
        assert time.monotonic() - started < 2.0  # 0.2 s: it did not wait for the 2.5 s request
        assert sock.recv(100) == b""


@pytest.mark.parametrize("workers", [1, 2])
def test_second_signal_exits_at_once(slow_app: Upstream, workers: int) -> None:
    with run_pod(slow_app.port, {"DRAIN_DELAY": "10s"}, workers=workers) as pod:
        children = pod.workers()
        assert len(children) == (workers if workers > 1 else 0)
        pod.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        started = time.monotonic()
        pod.proc.send_signal(signal.SIGINT)
        assert pod.proc.wait(3) == 1
        assert time.monotonic() - started < 1
        assert wait_for(lambda: not any(alive(pid) for pid in children), 2)


def test_drain_says_goodbye_on_every_response_and_loses_nothing(slow_app: Upstream) -> None:
    """A client that keeps sending on its connection through the whole shutdown.

    Before the signal it reuses one keep-alive connection. From the signal on, every response
    carries Connection: close and its connection is closed after it, while the listener keeps
    accepting the client's new connections for the drain delay: no request is sent on a
    connection the proxy is about to close, so none is lost and none meets a reset.
    """
    drain = 1.0
    env = {"DRAIN_DELAY": f"{drain}s", "SHUTDOWN_GRACE_PERIOD": "2s"}
    with run_proxy(slow_app.port, env) as proc:
        sock = connect(proc.port)
        connections = 1
        answered: list[str] = []
        goodbyes = 0
        signalled = False
        for n in range(10_000):
            if n == 10:
                proc.proc.send_signal(signal.SIGTERM)
                while proc.ready() != 503:  # set in the same step as the goodbye
                    time.sleep(0.005)
                signalled = True
                assert connections == 1, "keep-alive was not kept before the signal"
            target = f"/n/{n}"
            if n % 2:
                body = target.encode()
                head = f"POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
                raw = head.encode() + body
            else:
                raw = f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
            try:
                sock.sendall(raw)
                responses, closed = read_responses(sock, 1)
            except (BrokenPipeError, ConnectionResetError):
                responses, closed = [], True
            if not responses and closed and connections > 1:
                # The fresh connection raced the listener's close at the end of the drain
                # delay: the kernel had completed its handshake, and reset it with the
                # listening socket (any server closing its listener does). The request never
                # reached the app, which the ledger check below proves.
                sock.close()
                break
            assert responses and responses[0].complete, f"request {n} lost (closed={closed})"
            resp = responses[0]
            assert (resp.status, resp.body) == (200, target.encode())
            answered.append(target)
            if not signalled:
                assert resp.header("Connection") is None
                continue
            assert resp.header("Connection") == "close", f"response {n} did not say goodbye"
            goodbyes += 1
            assert closed_by_peer(sock), "the connection stayed open after Connection: close"
            sock.close()
            try:
                sock = connect(proc.port)
            except ConnectionRefusedError:
                break  # the drain delay is over: the listener is closed
            connections += 1
            time.sleep(0.01)
        assert proc.proc.wait(5) == 0
    # The app saw every answered request once, and nothing else.
    assert [r.target for r in slow_app.received] == answered
    assert connections >= 5, "new connections were not accepted during the drain delay"
    assert goodbyes == connections - 1 or goodbyes == connections
