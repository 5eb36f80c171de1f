"""Graceful shutdown of the real process: drain as Kubernetes needs it."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support.client import connect, get, read_responses
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
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(5) == 0
        assert time.monotonic() - started < 0.9  # did not wait for the 1 s request
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
