"""HTTP/2 on the wire: real clients (curl, nghttp, h2load) through the proxy, to an HTTP/1.1 app
and to an h2c app (``UPSTREAM_PROTOCOL=h2c``)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.h2app import H2App
from support.logpipe import read_log
from support.loop import LoopThread
from support.upstream import Upstream

from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.hpack import new_encoder
from sidecar_proxy.server import ProxyServer

EXAMPLE_HOOKS = Path(__file__).parents[2] / "examples" / "hooks.py"

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("nghttp") and shutil.which("h2load")),
    reason="curl, nghttp and h2load are needed (scripts/install-test-tools.sh installs them)",
)


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def curl(port: int, path: str, *args: str, h2: bool = True) -> subprocess.CompletedProcess[str]:
    flags = ["--http2-prior-knowledge"] if h2 else []
    return run("curl", "-s", "-S", *flags, *args, f"http://127.0.0.1:{port}{path}")


def test_curl_h2_to_an_http1_app(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port)
    got = curl(proxy.port, "/hello?x=1", "-w", "%{http_version} %{http_code}")
    assert got.stdout == "GET /hello?x=12 200", got.stderr
    got = curl(proxy.port, "/post", "-d", "payload")
    assert got.stdout == "POST /post"
    req = up.received[-1]
    assert req.body == b"payload"
    assert req.header("host") == f"127.0.0.1:{proxy.port}"
    assert req.header("x-forwarded-for") == "127.0.0.1"
    # HTTP/1.1 on the same port is untouched
    got = curl(proxy.port, "/h1", "-w", " %{http_version}", h2=False)
    assert got.stdout == "GET /h1 1.1"


def test_nghttp_and_h2load_get_every_answer(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port)
    urls = [f"http://127.0.0.1:{proxy.port}/n{i}" for i in range(8)]
    got = run("nghttp", "-n", "--stat", *urls)
    assert got.returncode == 0, got.stderr
    assert got.stdout.count(" 200 ") == 8, got.stdout
    got = run("h2load", "-n", "400", "-c", "2", "-m", "8", f"http://127.0.0.1:{proxy.port}/")
    assert "400 succeeded, 0 failed" in got.stdout, got.stdout
    assert "status codes: 400 2xx" in got.stdout


def test_access_log_says_http2(
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., ProxyServer],
    log_pipe: tuple[int, int],
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port, access_log_fd=log_pipe[1])
    assert curl(proxy.port, "/logged").returncode == 0
    assert curl(proxy.port, "/logged-h1", h2=False).returncode == 0
    first, second = read_log(log_pipe[0], 2)
    assert (first["protocol"], first["path"], first["status"]) == ("HTTP/2.0", "/logged", 200)
    assert second["protocol"] == "HTTP/1.1"


def test_both_legs_h2c(
    start_h2app: Callable[..., H2App], start_proxy: Callable[..., ProxyServer]
) -> None:
    app = start_h2app()
    proxy = start_proxy(app.port, upstream_protocol="h2c")
    got = curl(proxy.port, "/both?y=2")
    assert got.stdout == "h2 GET /both?y=2", got.stderr
    got = curl(proxy.port, "/echo", "-d", "x" * 5000)
    assert got.stdout == "x" * 5000
    # an HTTP/1.1 client meets an HTTP/2 app
    got = curl(proxy.port, "/from-h1", h2=False)
    assert got.stdout == "h2 GET /from-h1"
    head = app.requests[0]
    assert head[b":authority"] == f"127.0.0.1:{proxy.port}".encode()
    assert head[b"x-forwarded-for"] == b"127.0.0.1"
    assert b"host" not in head
    # trailers pass from the app to an HTTP/2 client
    got = run("nghttp", "-v", f"http://127.0.0.1:{proxy.port}/trailers")
    assert "grpc-status: 0" in got.stdout, got.stdout


def test_a_stream_the_app_resets_mid_body_is_cut_for_the_client(
    start_h2app: Callable[..., H2App], start_proxy: Callable[..., ProxyServer]
) -> None:
    app = start_h2app()
    proxy = start_proxy(app.port, upstream_protocol="h2c")
    got = curl(proxy.port, "/cut")
    assert got.returncode != 0  # curl reports the reset stream, not a complete response
    got = curl(proxy.port, "/cut", h2=False)
    assert got.returncode != 0  # HTTP/1.1: the connection closes before the last chunk


def test_full_app_connections_open_another(
    start_h2app: Callable[..., H2App], start_proxy: Callable[..., ProxyServer]
) -> None:
    app = start_h2app(max_streams=2)
    proxy = start_proxy(app.port, upstream_protocol="h2c")
    got = run("h2load", "-n", "60", "-c", "1", "-m", "6", f"http://127.0.0.1:{proxy.port}/")
    assert "60 succeeded, 0 failed" in got.stdout, got.stdout
    assert 2 <= app.connections <= 6


def test_refused_stream_is_retried_even_for_a_post(
    start_h2app: Callable[..., H2App], start_proxy: Callable[..., ProxyServer]
) -> None:
    app = start_h2app(refuse=1)
    proxy = start_proxy(app.port, upstream_protocol="h2c", retry_on=frozenset({"connect-failure"}))
    got = curl(proxy.port, "/once", "-d", "the body")
    assert got.stdout == "the body"  # the app's echo, from the second attempt
    assert len(app.requests) == 1  # the refused stream was never processed
    # a body past RETRY_BUFFER_LIMIT is not kept, so a refused POST with one cannot go again;
    # refused once the whole body has passed (a refusal at the head, with the body's first
    # bytes still held, may rightly be retried)
    app.refuse, app.refuse_late = 1, True
    big = start_proxy(app.port, upstream_protocol="h2c", retry_buffer_limit=1024)
    got = curl(big.port, "/big", "-d", "x" * 5000, "-w", "%{http_code}")
    assert got.stdout.endswith("502")


def test_streams_past_goaway_are_retried_on_a_new_connection(
    start_h2app: Callable[..., H2App], start_proxy: Callable[..., ProxyServer]
) -> None:
    app = start_h2app(goaway_after=1)
    proxy = start_proxy(app.port, upstream_protocol="h2c")
    got = run("h2load", "-n", "6", "-c", "1", "-m", "3", f"http://127.0.0.1:{proxy.port}/")
    assert "6 succeeded, 0 failed" in got.stdout, got.stdout
    assert app.connections >= 2


def read_frames(sock: socket.socket, until: Callable[[int, int, int, bytes], bool]) -> list[Any]:
    """Frames from ``sock`` (type, flags, stream id, payload) up to the first ``until`` accepts."""
    got: list[Any] = []
    buf = b""
    while True:
        while len(buf) >= 9:
            hi, lo, ftype, flags, sid = F.HEAD.unpack_from(buf)
            size = (hi << 16) | lo
            if len(buf) < 9 + size:
                break
            frame = (ftype, flags, sid & 0x7FFFFFFF, buf[9 : 9 + size])
            buf = buf[9 + size :]
            got.append(frame)
            if until(*frame):
                return got
        data = sock.recv(65536)
        assert data, f"closed; frames so far: {got}"
        buf += data


def test_shutdown_drains_http2_with_two_goaways(
    loop: LoopThread,
    start_h2app: Callable[..., H2App],
    start_proxy: Callable[..., ProxyServer],
) -> None:
    app = start_h2app(hold=True)
    proxy = start_proxy(app.port, upstream_protocol="h2c", shutdown_grace_period=5.0)
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/held")]
    block = new_encoder().encode([(name, value, False) for name, value in fields])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(F.PREFACE + F.settings([]) + F.frame(F.HEADERS, 5, 1, block))
        for _ in range(100):
            if app.held:
                break
            time.sleep(0.02)
        assert app.held, "the request never reached the app"
        stopping = asyncio.run_coroutine_threadsafe(proxy.shutdown(), loop.loop)
        # first GOAWAY: the largest stream id, and a PING to time the round trip
        got = read_frames(sock, lambda t, f, s, p: t == F.PING and not f & F.ACK)
        first = [p for t, _, _, p in got if t == F.GOAWAY]
        assert first and F.u32(first[0]) == F.MAX_STREAM_ID
        sock.sendall(F.ping(got[-1][3], ack=True))
        got = read_frames(sock, lambda t, f, s, p: t == F.GOAWAY)
        assert F.u32(got[-1][3]) == 1  # the real last stream: ours is served
        loop.call(app.release)
        got = read_frames(sock, lambda t, f, s, p: s == 1 and bool(f & F.END_STREAM))
        assert any(t == F.DATA and p == b"h2 GET /held" for t, _, s, p in got)
        stopping.result(10)


def test_hooks_see_an_http2_request_as_any_other(
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., ProxyServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hooks are a step of the exchange, which does not know the client's protocol: the
    # example's API-key check and header injection work the same over HTTP/2.
    monkeypatch.setenv("API_KEYS", "key-one:acme")
    up = start_upstream()
    proxy = start_proxy(up.port, hooks=str(EXAMPLE_HOOKS))
    refused = curl(proxy.port, "/api/orders", "-w", " %{http_version} %{http_code}")
    assert refused.stdout == "a valid X-API-Key is required\n 2 401", refused.stderr
    assert up.received == []
    passed = curl(proxy.port, "/api/orders", "-H", "X-API-Key: key-one", "-w", " %{http_code}")
    assert passed.stdout == "GET /api/orders 200", passed.stderr
    assert up.received[-1].header("x-tenant") == "acme"
    assert up.received[-1].header("x-api-key") is None
