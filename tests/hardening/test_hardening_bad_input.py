"""Bad input to the process: bytes that are not HTTP, or barely, sent to the proxy port and the
admin port. Each gets a 4xx or a close, never reaches the app, never escapes a protocol
callback as an exception, and the process keeps serving.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Iterator

import pytest
from support.client import connect, get, request
from support.hardening import (
    Capture,
    TrackingUpstream,
    assert_nothing_reached,
    exchange,
    loop_errors,
    mark,
    parse_responses,
    read_until_close,
    running,
    send_tolerant,
)
from support.loop import LoopThread
from support.upstream import ok

from sidecar_proxy.server import ProxyServer


@pytest.fixture(scope="module")
def pair(loop: LoopThread) -> Iterator[tuple[TrackingUpstream, ProxyServer]]:
    # default size limits: the inputs below are judged against what production runs with
    with running(loop, ok) as pair:
        yield pair


def client_hello() -> bytes:
    """A TLS 1.2/1.3 ClientHello record, as a browser sends it first on an https:// URL."""
    random_bytes = bytes(range(32))
    ciphers = bytes.fromhex("130113021303c02bc02fc02cc030")
    sni_name = b"example.test"
    sni = b"\x00\x00" + (len(sni_name) + 5).to_bytes(2, "big")
    sni += (len(sni_name) + 3).to_bytes(2, "big") + b"\x00" + len(sni_name).to_bytes(2, "big")
    sni += sni_name
    body = b"\x03\x03" + random_bytes + b"\x00" + len(ciphers).to_bytes(2, "big") + ciphers
    body += b"\x01\x00" + len(sni).to_bytes(2, "big") + sni
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


GARBAGE = [
    pytest.param(b"FOO / HTTP/1.1\r\nHost: test\r\n\r\n", id="unknown-method"),
    pytest.param(b"G@T / HTTP/1.1\r\nHost: test\r\n\r\n", id="malformed-method"),
    pytest.param(b"get / HTTP/1.1\r\nHost: test\r\n\r\n", id="lowercase-method"),
    pytest.param(b"GET\x00/ HTTP/1.1\r\nHost: test\r\n\r\n", id="nul-in-request-line"),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: test\r\nX-Huge: " + b"h" * (1 << 20) + b"\r\n\r\n",
        id="1MiB-header-line",
    ),
    pytest.param(
        b"GET /" + b"u" * (1 << 20) + b" HTTP/1.1\r\nHost: test\r\n\r\n", id="1MiB-target"
    ),
    pytest.param(random_bytes(64 << 10, seed=1), id="64KiB-random-binary"),
    pytest.param(random_bytes(64 << 10, seed=2), id="64KiB-random-binary-2"),
    pytest.param(b"\x00" * 4096, id="nul-bytes"),
    pytest.param(client_hello(), id="tls-client-hello"),
    # the HTTP/2 preface is not garbage any more: tests/hardening/test_hardening_h2.py
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh-banner"),
]


def assert_refused_or_closed(cap: Capture, allowed: range | set[int] = range(400, 500)) -> None:
    """Either one well-formed refusal in ``allowed`` followed by the close, or just the close."""
    assert cap.closed, f"the connection was left open: {cap.data[:200]!r}"
    if not cap.data:
        return
    parsed = parse_responses(cap.data)
    assert parsed.error is None and parsed.partial is None, cap.data[:300]
    assert len(parsed.statuses) == 1 and parsed.statuses[0] in allowed, cap.data[:300]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_is_refused_and_the_proxy_keeps_serving(
    loop: LoopThread, pair: tuple[TrackingUpstream, ProxyServer], garbage: bytes
) -> None:
    app, sidecar = pair
    before = mark(app)
    with loop_errors(loop) as errors:
        cap = exchange(sidecar.port, garbage, timeout=3.0)
        assert_refused_or_closed(cap)
        assert_nothing_reached(app, before)
        assert get(sidecar.port).status == 200
    assert errors == [], errors


def test_connect_method_is_501(
    loop: LoopThread, pair: tuple[TrackingUpstream, ProxyServer]
) -> None:
    # not garbage, but not something a reverse proxy forwards either
    app, sidecar = pair
    before = mark(app)
    raw = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
    assert_refused_or_closed(exchange(sidecar.port, raw), {501})
    assert_nothing_reached(app, before)


def test_many_garbage_connections_at_once(
    loop: LoopThread, pair: tuple[TrackingUpstream, ProxyServer]
) -> None:
    app, sidecar = pair
    before = mark(app)
    inputs = [random_bytes(4096, seed=i) for i in range(40)] + [client_hello()] * 10
    captures: list[Capture] = []

    def send(data: bytes) -> None:
        captures.append(exchange(sidecar.port, data, timeout=3.0))

    with loop_errors(loop) as errors:
        threads = [threading.Thread(target=send, args=(data,)) for data in inputs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(captures) == len(inputs)
        for cap in captures:
            assert_refused_or_closed(cap)
        assert_nothing_reached(app, before)
        assert get(sidecar.port).status == 200
    assert errors == [], errors


def admin_get(port: int, path: str) -> int:
    responses = request(port, f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
    assert responses, "no answer from the admin server"
    return responses[0].status


ADMIN_TLS = client_hello()
ADMIN_RANDOM = random_bytes(64 << 10, seed=3)
ADMIN_HUGE_LINE = b"GET /metrics HTTP/1.1\r\nX: " + b"h" * (1 << 20) + b"\r\n\r\n"
ADMIN_GARBAGE = [
    pytest.param(ADMIN_TLS, id="tls-client-hello"),
    pytest.param(ADMIN_RANDOM, id="64KiB-random-binary"),
    pytest.param(ADMIN_HUGE_LINE, id="1MiB-header-line"),
]


def send_to_admin(port: int, garbage: bytes) -> Capture:
    # The end of input is part of the garbage: the admin server reads a line at a time, and
    # a request line without a newline is judged when the client stops sending.
    with connect(port, 3.0) as sock:
        if send_tolerant(sock, garbage):
            with contextlib.suppress(OSError):  # it may have answered and closed already
                sock.shutdown(socket.SHUT_WR)
        return read_until_close(sock, 3.0)


@pytest.mark.parametrize("garbage", ADMIN_GARBAGE)
def test_garbage_on_the_admin_port_leaves_probes_working(
    pair: tuple[TrackingUpstream, ProxyServer], garbage: bytes
) -> None:
    _, sidecar = pair
    assert send_to_admin(sidecar.admin_port, garbage).closed
    assert admin_get(sidecar.admin_port, "/health") == 200
    assert admin_get(sidecar.admin_port, "/ready") == 200


@pytest.mark.parametrize("garbage", ADMIN_GARBAGE)
def test_garbage_on_the_admin_port_gets_an_http1_refusal_or_a_close(
    pair: tuple[TrackingUpstream, ProxyServer], garbage: bytes
) -> None:
    # Left to itself the stdlib server answers a request line it cannot parse the HTTP/0.9
    # way: a bare body echoing the input, no status line, which no HTTP/1.x client can read.
    _, sidecar = pair
    assert_refused_or_closed(send_to_admin(sidecar.admin_port, garbage))
