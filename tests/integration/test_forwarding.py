"""Forwarding semantics: keep-alive, pipelining, HTTP/1.0, header rules, request ids, errors."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable

from support.client import closed_by_peer, connect, get, read_responses, request
from support.upstream import Received, Upstream, response

from sidecar_proxy.server import ProxyServer

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_keep_alive_serves_many_requests_on_one_connection(
    proxy: ProxyServer, upstream: Upstream
) -> None:
    with connect(proxy.port) as sock:
        for i in range(5):
            sock.sendall(f"GET /n/{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            (resp,), closed = read_responses(sock, 1)
            assert resp.status == 200 and resp.body == f"GET /n/{i}".encode()
            assert not closed
    # the app saw them all on one pooled connection
    assert [r.target for r in upstream.received] == [f"/n/{i}" for i in range(5)]
    assert upstream.connections == 1


def test_http10_client_gets_close_delimited_or_keep_alive(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def chunked(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    up = start_upstream(chunked)
    proxy = start_proxy(up.port)
    with connect(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()  # a 1.0 client cannot read chunked
    assert body == b"hello world"
    # the app still got a valid HTTP/1.1 request with a Host
    assert up.received[0].version == "1.1"
    assert up.received[0].header("Host") == f"127.0.0.1:{up.port}"


def test_http10_keep_alive_with_content_length(proxy: ProxyServer) -> None:
    with connect(proxy.port) as sock:
        for _ in range(2):
            sock.sendall(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            (resp,), closed = read_responses(sock, 1)
            assert resp.status == 200 and resp.header("Connection") == "keep-alive"
            assert not closed


def test_connection_close_from_client_is_honoured(proxy: ProxyServer) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        (resp,), _ = read_responses(sock, 1)
        assert resp.header("Connection") == "close"
        assert closed_by_peer(sock)


def test_hop_by_hop_headers_removed_both_ways(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def hop(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(
            response(
                200,
                b"ok",
                [
                    ("Connection", "X-App-Hop"),
                    ("X-App-Hop", "secret"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Authenticate", "Basic"),
                    ("X-End", "kept"),
                ],
            )
        )

    up = start_upstream(hop)
    proxy = start_proxy(up.port)
    raw = (
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-Client-Hop\r\n"
        b"X-Client-Hop: gone\r\nKeep-Alive: 300\r\nTE: trailers\r\nProxy-Authorization: x\r\n"
        b"Proxy-Connection: keep-alive\r\nX-Keep: yes\r\n\r\n"
    )
    (resp,) = request(proxy.port, raw)
    got = {n.lower() for n, _ in up.received[0].headers}
    for name in ("x-client-hop", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert name not in got
    assert "connection" not in got  # HTTP/1.1 to the app is keep-alive by default
    assert up.received[0].header("X-Keep") == "yes"
    names = {n.lower() for n, _ in resp.headers}
    assert {"x-app-hop", "keep-alive", "proxy-authenticate"}.isdisjoint(names)
    assert resp.header("X-End") == "kept"


def test_forwarded_headers(proxy: ProxyServer, upstream: Upstream) -> None:
    get(proxy.port, "/", "X-Forwarded-For: 203.0.113.7\r\n")
    get(proxy.port, "/")
    first, second = upstream.received
    assert first.header_all("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert second.header("X-Forwarded-For") == "127.0.0.1"
    assert second.header("X-Forwarded-Proto") == "http"
    assert second.header("X-Forwarded-Host") == "test"


def test_forwarded_proto_and_host_trust_setting(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream
) -> None:
    hdrs = "X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"
    trusting = start_proxy(upstream.port)
    get(trusting.port, "/", hdrs)
    strict = start_proxy(upstream.port, trust_forwarded_headers=False)
    get(strict.port, "/", hdrs)
    kept, overwritten = upstream.received
    assert (kept.header("X-Forwarded-Proto"), kept.header("X-Forwarded-Host")) == (
        "https",
        "shop.example",
    )
    assert overwritten.header_all("X-Forwarded-Proto") == ["http"]
    assert overwritten.header_all("X-Forwarded-Host") == ["test"]


def test_request_id_generated_kept_and_echoed(proxy: ProxyServer, upstream: Upstream) -> None:
    generated = get(proxy.port, "/")
    rid = generated.header("X-Request-ID")
    assert rid is not None and UUID.match(rid)
    assert upstream.received[0].header_all("X-Request-ID") == [rid]

    kept = get(proxy.port, "/", "X-Request-ID: abc-123\r\n")
    assert kept.header("X-Request-ID") == "abc-123"
    assert upstream.received[1].header_all("X-Request-ID") == ["abc-123"]

    # an id that could forge log lines or headers is replaced, never copied
    replaced = get(proxy.port, "/", 'X-Request-ID: a b"c\r\n')
    new = replaced.header("X-Request-ID")
    assert new is not None and UUID.match(new)


def test_absolute_form_target_becomes_origin_form(proxy: ProxyServer, upstream: Upstream) -> None:
    raw = b"GET http://example.test:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    (resp,) = request(proxy.port, raw)
    assert resp.status == 200
    assert upstream.received[0].target == "/p?q=1"
    assert upstream.received[0].header("Host") == "example.test:8080"


def test_unreachable_app_is_502(start_proxy: Callable[..., ProxyServer], free_port: int) -> None:
    proxy = start_proxy(free_port, max_retries=0)
    resp = get(proxy.port, "/")
    assert resp.status == 502
    assert b"unreachable" in resp.body
    assert resp.header("X-Request-ID")


def test_slow_app_is_504_within_request_timeout(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def hang(req: Received, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    up = start_upstream(hang)
    proxy = start_proxy(up.port, request_timeout=0.3, max_retries=0)
    started = time.monotonic()
    resp = get(proxy.port, "/")
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert 0.25 < elapsed < 1.5


def test_pool_reuses_connections_and_respects_app_close(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def closing(req: Received, w: asyncio.StreamWriter) -> None:
        if req.target == "/close":
            w.write(response(200, b"bye", [("Connection", "close")]))
            await w.drain()
            w.close()
        else:
            w.write(response(200, b"hi"))

    up = start_upstream(closing)
    proxy = start_proxy(up.port)
    for path in ("/a", "/b", "/close", "/c", "/d"):
        assert get(proxy.port, path).status == 200
    assert [r.connection for r in up.received] == [1, 1, 1, 2, 2]


def test_tcp_peer_address_is_the_client(proxy: ProxyServer, upstream: Upstream) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        read_responses(sock, 1)
    assert upstream.received[0].header("X-Forwarded-For") == "127.0.0.1"


def test_connection_is_read_again_after_a_local_answer_to_a_request_with_a_body(
    start_proxy: Callable[..., ProxyServer], free_port: int
) -> None:
    # The body arrives while the proxy is still trying to connect, which pauses reading; the
    # refused connection is answered 502 with keep-alive, and the next request must be read.
    proxy = start_proxy(free_port, max_retries=0, circuit_breaker_threshold=0)
    with connect(proxy.port) as sock:
        for raw in (
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
            b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n",
        ):
            sock.sendall(raw)
            (resp,), closed = read_responses(sock, 1, timeout=3)
            assert resp.status == 502 and not closed


def test_early_answer_reaches_a_client_still_sending_its_body(
    start_proxy: Callable[..., ProxyServer], free_port: int
) -> None:
    # The breaker answers 503 before the body is read. Closing at once with the body unread
    # would make the kernel reset the connection and could destroy the 503 already sent; the
    # proxy half-closes and reads on for a while instead (RFC 9112 §9.6).
    proxy = start_proxy(free_port, max_retries=0, circuit_breaker_threshold=1)
    assert get(proxy.port, "/").status == 502  # opens the breaker
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 4194304\r\n\r\n")
        for _ in range(16):
            sock.sendall(b"x" * 65536)  # the client keeps sending after the answer is out
        time.sleep(0.2)
        (resp,), _ = read_responses(sock, 1, timeout=3)
    assert resp.status == 503 and resp.header("Retry-After")
