"""Upgrade (WebSocket) relayed as bytes both ways after the app's 101."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import web
from support.client import connect, read_responses
from support.loop import LoopThread
from support.upstream import Received, Upstream, response

from sidecar_proxy.server import ProxyServer


def test_websocket_echo_through_the_proxy(
    loop: LoopThread, start_proxy: Callable[..., ProxyServer]
) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async def start_app() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/ws", ws_echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return runner, port

    runner, app_port = loop.run(start_app())
    proxy = start_proxy(app_port)

    async def client() -> list[object]:
        got: list[object] = []
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{proxy.port}/ws") as ws,
        ):
            await ws.send_str("hi")
            got.append((await ws.receive()).data)
            big = bytes(range(256)) * 1000
            await ws.send_bytes(big)
            got.append((await ws.receive()).data == big[::-1])
            await ws.close()
        return got

    try:
        assert asyncio.run(client()) == ["echo:hi", True]
    finally:
        loop.run(runner.cleanup())


def test_upgrade_refused_by_app_is_a_normal_response_then_close(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def refuse(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(response(426, b"no", [("Upgrade", "websocket")], reason="Upgrade Required"))

    up = start_upstream(refuse)
    proxy = start_proxy(up.port)
    with connect(proxy.port) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        (resp,), _closed = read_responses(sock, 1)
        assert resp.status == 426 and resp.body == b"no"
        assert resp.header("Connection") == "close"
    # the app was asked for the upgrade
    assert up.received[0].header("Upgrade") == "websocket"
    assert (up.received[0].header("Connection") or "").lower() == "upgrade"


def test_an_upgrade_to_h2c_is_answered_over_http1(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    # An app that takes the h2c upgrade whenever it is offered. The proxy never offers it
    # (RFC 9113 §3.1 deprecates it; a 101 would tunnel the client's HTTP/2 to the app past the
    # proxy's HTTP/2 checks), so the request is answered over HTTP/1.1, and an offer that
    # names other protocols too reaches the app without h2c.
    async def takes_h2c(req: Received, w: asyncio.StreamWriter) -> None:
        if "h2c" in (req.header("Upgrade") or "").lower():
            w.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
            )
        else:
            w.write(response(200, b"over HTTP/1.1"))

    up = start_upstream(takes_h2c)
    proxy = start_proxy(up.port)
    with connect(proxy.port) as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket, H2C\r\n\r\n"
        )
        (first, second), _closed = read_responses(sock, 2)
    assert (first.status, first.body) == (200, b"over HTTP/1.1")
    assert second.status == 200 and second.header("Connection") == "close"  # upgrade refused
    plain, offered = up.received
    assert plain.header("Upgrade") is None and plain.header("HTTP2-Settings") is None
    assert offered.header("Upgrade") == "websocket"
