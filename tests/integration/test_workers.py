"""WORKERS=2: real processes that must look like one sidecar from outside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.calls import build
from support.client import connect, get, read_responses
from support.misbehave import reset
from support.pod import alive, run_pod, wait_for
from support.tls import client_context, make_pki, tls_get
from support.upstream import Received, Upstream, response, upstream_thread

from sidecar_proxy.http.h2.frames import PREFACE, SETTINGS
from sidecar_proxy.http.h2.frames import settings as settings_frame

PER_WORKER = {"METRICS_PER_WORKER": "true"}


@pytest.fixture(scope="module")
def app() -> Iterator[Upstream]:
    """/fail answers 500, /slow takes 2.5 s, anything else 200 at once."""

    async def handle(req: Received, w: asyncio.StreamWriter) -> None:
        if req.target.startswith("/fail"):
            w.write(response(500, b"broken"))
            return
        if req.target.startswith("/slow"):
            await asyncio.sleep(2.5)  # still running when the drain delay ends
        w.write(response(200, b"fine"))

    with upstream_thread(handle) as up:
        yield up


@contextlib.contextmanager
def read_pipe() -> Iterator[tuple[int, list[bytes]]]:
    """A pipe for a pod's output: its write end (the test closes its own copy once the pod has
    it), and the lines read from it, whole once every writer has closed it."""
    read_fd, write_fd = os.pipe()
    lines: list[bytes] = []

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            lines.extend(pipe.read().splitlines())

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        yield write_fd, lines
    finally:
        reader.join(10)


def send(sock: socket.socket, path: str) -> int:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    (resp,), _ = read_responses(sock, 1)
    return resp.status


def test_breaker_opened_by_failures_spread_over_workers_then_every_worker_refuses(
    app: Upstream,
) -> None:
    env = {
        **PER_WORKER,
        "CIRCUIT_BREAKER_THRESHOLD": "4",
        "CIRCUIT_BREAKER_TIMEOUT": "60s",
        "MAX_RETRIES": "0",
    }
    with run_pod(app.port, env) as pod:
        conns = pod.connections_by_worker(each=2)
        reached = len(app.received)
        # Four consecutive failures, alternating between the workers: two each. Breakers of
        # their own would each have seen two, under the threshold, and stayed closed.
        for i in range(4):
            assert send(conns[str(i % 2)][0], "/fail") == 500
        started = time.monotonic()
        for socks in conns.values():
            for sock in socks:  # every worker, at once: no request of these reaches the app
                assert send(sock, "/ok") == 503
        assert time.monotonic() - started < 1.0
        assert len(app.received) == reached + 4
        assert pod.per_worker("sidecar_upstream_errors_total", type="5xx_error") == {
            "0": 2.0,
            "1": 2.0,
        }
        assert pod.total("sidecar_circuit_breaker_state") == 1.0
        assert pod.total("sidecar_circuit_breaker_transitions_total", to="open") == 1.0
        rejected = pod.per_worker("sidecar_requests_rejected_total", reason="circuit_open")
        assert all(count >= 2 for count in rejected.values()) and len(rejected) == 2


@pytest.mark.parametrize("per_worker", [False, True], ids=["summed", "per-worker"])
def test_metrics_after_traffic_over_many_connections_are_one_view(
    app: Upstream, per_worker: bool
) -> None:
    connections, each = 20, 10
    with run_pod(app.port, PER_WORKER if per_worker else {}) as pod:

        def client() -> None:
            with connect(pod.port) as sock:
                for _ in range(each):
                    assert send(sock, "/items/1") == 200

        threads = [threading.Thread(target=client) for _ in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        want = float(connections * each)
        path = {"method": "GET", "path": "/items/:id"}
        samples = pod.samples()
        assert pod.total("sidecar_requests_total", **path, status="200") == want
        assert pod.total("sidecar_request_duration_seconds_count", **path) == want
        assert pod.total("sidecar_response_bytes_total") == want * len(b"fine")
        if per_worker:
            served = pod.per_worker("sidecar_requests_total", **path)
            assert set(served) == {"0", "1"} and all(served.values())
        else:
            assert not any("worker" in dict(labels) for _, labels in samples)
            assert sum(1 for name, _ in samples if name == "sidecar_build_info") == 1


def test_a_killed_worker_is_restarted_and_its_counts_are_kept(app: Upstream) -> None:
    with run_pod(app.port, {}) as pod:
        for _ in range(10):
            assert get(pod.port, "/items/1").status == 200
        before = pod.total("sidecar_requests_total")  # a fresh snapshot of both workers
        victim, survivor = pod.workers()
        os.kill(victim, signal.SIGKILL)
        # Not every worker serves while it is replaced: the pod says so, then recovers.
        assert wait_for(lambda: pod.ready() == 503, 2.0, step=0.002)
        assert wait_for(lambda: len(pod.workers()) == 2 and victim not in pod.workers(), 10)
        assert wait_for(lambda: pod.ready() == 200, 10)
        assert survivor in pod.workers()
        for _ in range(10):
            assert get(pod.port, "/items/1").status == 200
        # Nothing the dead worker had counted is lost; the counter never went down.
        assert pod.total("sidecar_requests_total") == before + 10
        (exited,) = [e for e in pod.log() if e["message"] == "worker exited, restarting"]
        assert exited["signal"] == "SIGKILL" and 0 <= exited["restart_in_s"] <= 0.1
        assert exited["reason"] == "exited"
        assert pod.total("sidecar_worker_restarts_total", reason="exited") == 1.0
        assert pod.total("sidecar_worker_restarts_total", reason="hung") == 0.0


def test_a_worker_whose_loop_stopped_is_killed_and_replaced(app: Upstream) -> None:
    timeout = 2.0
    with run_pod(app.port, {"WORKER_HEARTBEAT_TIMEOUT": f"{timeout:g}s"}) as pod:
        time.sleep(3 * timeout)  # beating workers are left alone, however long they idle
        assert pod.total("sidecar_worker_restarts_total") == 0.0
        victim, survivor = pod.workers()
        os.kill(victim, signal.SIGSTOP)  # alive, its loop frozen: what a blocking hook does
        stopped = time.monotonic()
        assert wait_for(lambda: victim not in pod.workers(), 4 * timeout, step=0.02)
        assert time.monotonic() - stopped >= timeout - 0.5  # not before its beat grew old
        assert wait_for(lambda: len(pod.workers()) == 2 and pod.ready() == 200, 10)
        assert survivor in pod.workers()
        # New connections, hashed over both sockets: each is answered, the stopped worker's
        # socket by its replacement.
        for _ in range(16):
            assert get(pod.port, "/items/1").status == 200
        log = pod.log()
        (hung,) = [e for e in log if e["message"] == "worker hung, killed it"]
        assert hung["pid"] == victim and hung["silent_s"] > timeout
        (exited,) = [e for e in log if e["message"] == "worker exited, restarting"]
        assert exited["reason"] == "hung" and exited["signal"] == "SIGKILL"
        assert pod.total("sidecar_worker_restarts_total", reason="hung") == 1.0
        assert pod.total("sidecar_worker_restarts_total", reason="exited") == 0.0


def test_sigterm_drains_every_worker_with_traffic_on_each(app: Upstream) -> None:
    drain = 1.5
    env = {**PER_WORKER, "DRAIN_DELAY": f"{drain}s", "SHUTDOWN_GRACE_PERIOD": "5s"}
    with run_pod(app.port, env) as pod:
        conns = pod.connections_by_worker(each=1)
        busy = [socks[0] for socks in conns.values()]  # one request in flight on each worker
        for sock in busy:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        workers = pod.workers()
        sent = time.monotonic()
        pod.proc.send_signal(signal.SIGTERM)

        # /ready turns 503 at once on the admin port and on the proxy port of every worker.
        assert wait_for(lambda: pod.ready() == 503, 0.5)
        for _ in range(8):
            assert get(pod.port, "/ready").status == 503
        assert get(pod.port, "/during-drain").status == 200  # still serving
        assert time.monotonic() - sent < drain, "too slow to test inside the drain delay"

        time.sleep(drain - (time.monotonic() - sent) + 0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", pod.port), timeout=1).close()
        for sock in busy:  # each worker finished its request, with Connection: close
            (resp,), _ = read_responses(sock, 1)
            assert resp.status == 200 and resp.header("Connection") == "close"
        assert pod.proc.wait(5) == 0
        assert not any(alive(pid) for pid in workers)
        assert [e["message"] for e in pod.log()].count("stopped") == 3  # two workers, the parent


def test_workers_do_not_outlive_a_killed_parent(app: Upstream) -> None:
    with run_pod(app.port, {}) as pod:
        workers = pod.workers()
        pod.proc.kill()
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", pod.port), timeout=1).close()


def mapped(pid: int, library: str) -> bool:
    """Whether process ``pid`` has loaded the native library whose path contains ``library``:
    a process's own memory map shows what it imported, without its cooperation."""
    return library in Path(f"/proc/{pid}/maps").read_text()


# Each native library's path as /proc/PID/maps shows it.
UVLOOP = "/uvloop/loop."
HTTPTOOLS = "/httptools/parser/"
JH2 = "/jh2/_hazmat"  # HPACK, what the HTTP/2 leg needs first
LIBYAML = "/yaml/_yaml"


def test_each_process_loads_only_what_it_uses(app: Upstream) -> None:
    """The parent serves the admin port and supervises: it never loads the data path's event
    loop or parsers. No process loads the HTTP/2 leg's HPACK (jh2) or PyYAML until it needs
    them: a worker's first HTTP/2 connection loads it (docs/benchmarks.md, "Memory")."""
    with run_pod(app.port, {}) as pod:
        workers = pod.workers()
        assert len(workers) == 2
        assert not any(mapped(pod.proc.pid, lib) for lib in (UVLOOP, HTTPTOOLS, JH2, LIBYAML))
        for pid in workers:
            assert mapped(pid, UVLOOP) and mapped(pid, HTTPTOOLS)
            assert not mapped(pid, JH2) and not mapped(pid, LIBYAML)
        with socket.create_connection(("127.0.0.1", pod.port), timeout=5) as sock:
            sock.sendall(PREFACE + settings_frame([]))
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                assert chunk, "closed before the server's SETTINGS"
                head += chunk
            assert head[3] == SETTINGS  # the HTTP/2 leg answered (RFC 9113 §3.4)
            assert [mapped(pid, JH2) for pid in workers].count(True) == 1


def test_access_log_lines_from_both_workers_never_interleave(app: Upstream) -> None:
    # Lines longer than PIPE_BUF (4 KiB), from many connections on both workers, into one pipe.
    agent = "x" * 6000
    with (
        read_pipe() as (write_fd, lines),
        run_pod(app.port, {"ACCESS_LOG": "true"}, stdout=write_fd) as pod,
    ):
        os.close(write_fd)

        def client() -> None:
            with connect(pod.port) as sock:
                for _ in range(25):
                    sock.sendall(
                        f"GET /log HTTP/1.1\r\nHost: t\r\nUser-Agent: {agent}\r\n\r\n".encode()
                    )
                    read_responses(sock, 1)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(10) == 0
    entries = [json.loads(line) for line in lines]  # every line is one whole JSON object
    assert [e["path"] for e in entries].count("/log") == 200
    assert all(e["user_agent"] == agent for e in entries if e["path"] == "/log")


def test_long_error_log_lines_from_every_process_never_interleave(
    app: Upstream, tmp_path: Path
) -> None:
    # Each line is longer than the pipe holds (64 KiB), so every write of one goes in pieces
    # as the reader drains it: without a pod-wide lock, another worker's line lands between.
    hooks = tmp_path / "hooks.py"
    hooks.write_text(
        "import logging\n"
        "def on_request(request):\n"
        '    logging.getLogger("hooks").warning("long", extra={"pad": "y" * 100_000})\n'
    )
    with (
        read_pipe() as (write_fd, lines),
        run_pod(app.port, {**PER_WORKER, "HOOKS": str(hooks)}, stderr_to=write_fd) as pod,
    ):
        os.close(write_fd)
        conns = pod.connections_by_worker(each=3)

        def client(sock: socket.socket) -> None:
            for _ in range(10):
                assert send(sock, "/log") == 200

        threads = [
            threading.Thread(target=client, args=(sock,))
            for socks in conns.values()
            for sock in socks
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        requests = pod.total("sidecar_requests_total")  # each logged one long line
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(10) == 0
    entries = [json.loads(line) for line in lines]  # every line is one whole JSON object
    long = [e for e in entries if e["message"] == "long"]
    assert len(long) == requests and all(e["pad"] == "y" * 100_000 for e in long)
    assert {e["worker"] for e in long} == {0, 1}


def test_the_spool_total_bounds_both_workers_together(tmp_path: Path) -> None:
    # Two 200 KiB PUTs, one on each worker, each spooled (RETRY_SPOOL_LIMIT) while it streams.
    # The app holds both first attempts until it has both bodies, then resets them: a request
    # whose copy is whole is retried (200), one whose copy was dropped is not (502). Under a
    # total of 300 KiB for the pod only one copy fits; a total per worker would fit both.
    bodies = [bytes([n]) * (200 * 1024) for n in (1, 2)]
    first_attempts: list[bytes] = []
    both_arrived = asyncio.Event()

    async def handle(req: Received, w: asyncio.StreamWriter) -> None:
        if req.method != "PUT":
            w.write(response(200, b"fine"))
        elif req.body in first_attempts:
            w.write(response(200, b"replayed"))
        else:
            first_attempts.append(req.body)
            if len(first_attempts) == len(bodies):
                both_arrived.set()
            await asyncio.wait_for(both_arrived.wait(), 10)
            await reset(req, w)

    env = {
        **PER_WORKER,
        "RETRY_SPOOL_LIMIT": "256KiB",
        "RETRY_SPOOL_MAX_TOTAL": "300KiB",
        "RETRY_SPOOL_DIR": str(tmp_path),
    }
    with upstream_thread(handle) as up, run_pod(up.port, env) as pod:
        conns = pod.connections_by_worker(each=1)
        statuses: list[int] = []

        def upload(sock: socket.socket, body: bytes) -> None:
            sock.sendall(build("PUT", "/objects/1", body))
            (resp,), _ = read_responses(sock, 1, 20)
            statuses.append(resp.status)

        threads = [
            threading.Thread(target=upload, args=(socks[0], body))
            for socks, body in zip(conns.values(), bodies, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(statuses) == [200, 502]
        assert sorted(first_attempts) == bodies
        # Both copies went with their requests: the whole total is free again, on each worker
        # (the app resets each new body's first attempt at once now). New connections: the one
        # answered 502 was closed.
        for n, socks in enumerate(pod.connections_by_worker(each=1).values(), start=3):
            upload(socks[0], bytes([n]) * (200 * 1024))
        assert statuses[2:] == [200, 200]


def test_a_reload_reaches_every_worker_and_is_counted_once(app: Upstream, tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("attempts_header: false\n")
    with run_pod(app.port, {**PER_WORKER, "SIDECAR_CONFIG": str(config)}) as pod:
        conns = pod.connections_by_worker(each=1)

        def attempts_headers() -> list[str | None]:
            out = []
            for (sock,) in (socks[:1] for socks in conns.values()):
                sock.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
                (resp,), _ = read_responses(sock, 1)
                out.append(resp.header("X-Sidecar-Attempts"))
            return out

        assert attempts_headers() == [None, None]
        config.write_text("attempts_header: true\n")
        pod.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: attempts_headers() == ["1", "1"], 5)  # both workers
        config.write_text("attempts_header: maybe\n")  # refused: the running settings stay
        pod.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: pod.total("sidecar_config_reloads_total", result="failure"), 5)
        assert attempts_headers() == ["1", "1"]
        # Counted once for the pod, by the parent, however many workers applied it.
        assert pod.total("sidecar_config_reloads_total", result="success") == 1.0
        assert pod.total("sidecar_config_reloads_total", result="failure") == 1.0
        assert pod.proc.poll() is None and len(pod.workers()) == 2
        messages = [e["message"] for e in pod.log()]
        assert messages.count("configuration reloaded") == 1


def test_a_reload_loads_every_workers_hooks_again_and_a_broken_file_keeps_them(
    app: Upstream, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks.py"
    version = 'def on_request(request):\n    request.headers["X-Hooks-Version"] = "{}"\n'
    hooks.write_text(version.format(1))
    with run_pod(app.port, {**PER_WORKER, "HOOKS": str(hooks)}) as pod:
        conns = pod.connections_by_worker(each=1)

        def versions() -> list[str | None]:
            out = []
            for (sock,) in (socks[:1] for socks in conns.values()):
                assert send(sock, "/ok") == 200
                out.append(app.received[-1].header("X-Hooks-Version"))
            return out

        assert versions() == ["1", "1"]  # each worker loaded the file at start
        hooks.write_text(version.format(2))
        pod.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: versions() == ["2", "2"], 5)  # both workers, again
        hooks.write_text("def on_request(request):\n    return (\n")  # half-written
        pod.proc.send_signal(signal.SIGHUP)
        assert wait_for(
            lambda: sum("hooks error" in e["message"] for e in pod.log()) == 2, 5
        )  # one line from each worker, which alone runs the hooks' code
        assert versions() == ["2", "2"]
        assert pod.proc.poll() is None and len(pod.workers()) == 2


def test_app_ready_check_runs_once_for_the_whole_pod(app: Upstream) -> None:
    env = {"APP_READY_CHECK": "http:/fail", "APP_READY_INTERVAL": "100ms"}
    with run_pod(app.port, env, started="/health") as pod:
        # Every worker serves, but the app fails its check: the pod is not ready anywhere.
        assert wait_for(lambda: len(pod.workers()) == 2, 5)
        time.sleep(0.5)
        assert pod.ready() == 503
        assert all(get(pod.port, "/ready").status == 503 for _ in range(6))
        assert get(pod.port, "/items/1").status == 200  # traffic is still served
        assert pod.total("sidecar_app_ready") == 0.0  # the parent's verdict, not a sum
        checks = [r.target for r in app.received if r.target == "/fail"]
        assert checks, "the parent never checked the app"


def test_quitquitquit_on_the_admin_port_drains_the_pod(app: Upstream) -> None:
    with run_pod(app.port, {}) as pod:
        workers = pod.workers()
        request = urllib.request.Request(
            f"http://127.0.0.1:{pod.admin_port}/quitquitquit", method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        assert pod.proc.wait(10) == 0
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 3)


def test_tls_with_workers_each_worker_loads_the_files(app: Upstream, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    env = {**PER_WORKER, "TLS_CERT_FILE": str(pki.cert_file), "TLS_KEY_FILE": str(pki.key_file)}
    with run_pod(app.port, env) as pod:
        ctx = client_context(pki.ca)
        for _ in range(16):  # new connections: the kernel spreads them over both workers
            resp, sock = tls_get(pod.port, ctx, path="/items/1")
            sock.close()
            assert resp.status == 200
        served = pod.per_worker("sidecar_requests_total", path="/items/:id")
        assert set(served) == {"0", "1"}
        expiry = pki.server.cert.not_valid_after_utc.timestamp()
        got = pod.per_worker("sidecar_tls_certificate_expiry_timestamp_seconds")
        assert got == {"0": expiry, "1": expiry}
