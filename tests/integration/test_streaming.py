"""Bodies streamed both ways, re-framed, never accumulated; flow control couples the legs."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

from support.client import connect, read_responses, request
from support.loop import LoopThread
from support.process import run_proxy
from support.upstream import Received, Upstream, response

from sidecar_proxy.server import ProxyServer


async def echo(req: Received, w: asyncio.StreamWriter) -> None:
    w.write(response(200, req.body, [("X-Got-TE", req.header("Transfer-Encoding") or "-")]))


def test_content_length_body_forwarded_with_content_length(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream(echo)
    proxy = start_proxy(up.port)
    body = os.urandom(200_000)
    raw = b"POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    (resp,) = request(proxy.port, raw)
    assert resp.body == body
    assert up.received[0].header("Content-Length") == str(len(body))
    assert up.received[0].header("Transfer-Encoding") is None


def test_chunked_body_reframed_chunked_with_trailers(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream(echo)
    proxy = start_proxy(up.port)
    raw = (
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"
    )
    (resp,) = request(proxy.port, raw)
    assert resp.body == b"abcde"
    assert up.received[0].header("Transfer-Encoding") == "chunked"
    assert up.received[0].header("Content-Length") is None
    # chunk extensions are not passed on; trailers are
    assert b"ext=1" not in bytes(up.raw[0])
    assert b"X-Sum: 5" in bytes(up.raw[0])


def test_close_delimited_response_becomes_chunked_for_http11(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def until_close(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await w.drain()
        w.close()

    up = start_upstream(until_close)
    proxy = start_proxy(up.port)
    with connect(proxy.port) as sock:
        for _ in range(2):  # and the client connection stays usable
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            (resp,), closed = read_responses(sock, 1)
            assert resp.complete and resp.body == b"all of it"
            assert resp.header("Transfer-Encoding") == "chunked"
            assert not closed


def test_large_bodies_stream_through_a_real_process_without_accumulating() -> None:
    """256 MiB up and 256 MiB down through the real command; its peak RSS stays small."""
    size = 256 * 1024 * 1024
    block = b"z" * (1024 * 1024)

    async def counting_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Reads the upload and discards it, then streams the download: the app holds nothing.
        await reader.readuntil(b"\r\n\r\n")
        seen = 0
        while seen < size:
            seen += len(await reader.read(1 << 20))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    app = LoopThread()
    server = app.run(asyncio.start_server(counting_app, "127.0.0.1", 0))
    try:
        with run_proxy(server.sockets[0].getsockname()[1], {"ACCESS_LOG": "false"}) as proc:
            with connect(proc.port, timeout=30) as sock:
                sock.sendall(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // len(block)):
                    sock.sendall(block)
                got = 0
                data = sock.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                got = len(rest)
                while got < size:
                    chunk = sock.recv(1 << 20)
                    assert chunk, "connection closed early"
                    got += len(chunk)
            peak_mib = proc.status_kib("VmHWM") / 1024
            assert peak_mib < 64, f"peak RSS {peak_mib:.1f} MiB for 512 MiB streamed"
    finally:
        app.run(_close(server))
        app.stop()


async def _close(server: asyncio.base_events.Server) -> None:
    server.close()


def test_slow_client_pauses_the_app(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    sent = {"bytes": 0}
    total = 256 * 1024 * 1024

    async def firehose(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"y" * (256 * 1024)
        try:
            while sent["bytes"] < total:
                w.write(block)
                await w.drain()  # blocks while the proxy has stopped reading from us
                sent["bytes"] += len(block)
        except ConnectionError:
            pass

    up = start_upstream(firehose)
    proxy = start_proxy(up.port)
    with connect(proxy.port, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /fire HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.recv(1024)  # read a little, then stop reading
        time.sleep(1.0)
        stalled_at = sent["bytes"]
        time.sleep(0.5)
        # the app is held back by flow control: only socket buffers and one read in flight
        assert sent["bytes"] == stalled_at
        assert stalled_at < 32 * 1024 * 1024, stalled_at
        # reading resumes the flow
        received = 0
        deadline = time.monotonic() + 10
        while received < 64 * 1024 * 1024 and time.monotonic() < deadline:
            received += len(sock.recv(1 << 20))
        assert sent["bytes"] > stalled_at


def test_head_204_304_have_no_body_and_keep_the_connection(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def nobody(req: Received, w: asyncio.StreamWriter) -> None:
        if req.method == "HEAD":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        elif req.target == "/204":
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == "/304":
            w.write(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n')
        else:
            w.write(response(200, b"after"))

    up = start_upstream(nobody)
    proxy = start_proxy(up.port)
    with connect(proxy.port) as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n")
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")
        assert b"Content-Length: 1234" in data  # HEAD keeps the representation's length
        for path, status in (("/204", 204), ("/304", 304)):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 %d" % status) and data.endswith(b"\r\n\r\n")
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,), _ = read_responses(sock, 1)
        assert resp.body == b"after"
    # the HEAD's connection went back to the pool with a fresh parser and served the rest
    assert {r.connection for r in up.received} == {1}
