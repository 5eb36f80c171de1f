"""APP_READY_CHECK over real sockets: /ready on both ports follows the app, with hysteresis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from support.client import get
from support.loop import LoopThread
from support.process import http_get
from support.scrape import value, wait_until
from support.upstream import Listener, Received, Upstream, response

from sidecar_proxy.lifecycle.appcheck import probe
from sidecar_proxy.server import ProxyServer

FAST = {"app_ready_interval": 0.05, "app_ready_failures": 2}


def ready(proxy: ProxyServer) -> tuple[int, int]:
    """/ready's status on the proxy port and on the admin port."""
    admin = http_get(proxy.admin_port, "/ready")[0]
    return get(proxy.port, "/ready").status, admin


def test_tcp_check_follows_the_apps_port(
    loop: LoopThread,
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., ProxyServer],
    free_port: int,
) -> None:
    proxy = start_proxy(free_port, app_ready_check="tcp", **FAST)
    assert ready(proxy) == (503, 503)  # not ready until the app first passes
    assert get(proxy.port, "/health").status == 200  # alive all the same
    assert value(proxy.metrics.registry, "sidecar_app_ready") == 0
    app = start_upstream(port=free_port)
    assert wait_until(lambda: ready(proxy) == (200, 200))
    assert value(proxy.metrics.registry, "sidecar_app_ready") == 1
    loop.run(app.stop())
    assert wait_until(lambda: ready(proxy) == (503, 503))
    assert value(proxy.metrics.registry, "sidecar_app_ready") == 0


def test_http_check_needs_a_2xx_and_one_bad_answer_is_not_enough(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    answers: list[int] = []  # what /healthz answers next; the last one repeats
    seen: list[Received] = []

    async def app(req: Received, w: asyncio.StreamWriter) -> None:
        if req.target == "/healthz":
            seen.append(req)
            status = answers.pop(0) if len(answers) > 1 else answers[0]
            w.write(response(status, b"", reason="X"))
        else:
            w.write(response(200, b"app"))

    answers.append(503)
    up = start_upstream(app)
    proxy = start_proxy(up.port, app_ready_check="http:/healthz", **FAST)
    assert wait_until(lambda: len(seen) >= 3)
    assert ready(proxy) == (503, 503)
    assert seen[0].header("Host") == f"127.0.0.1:{up.port}"
    answers[:] = [301]  # a redirect is not ready either
    assert not wait_until(lambda: ready(proxy)[0] == 200, timeout=0.3)
    answers[:] = [200]
    assert wait_until(lambda: ready(proxy) == (200, 200))
    # One failure (fewer than APP_READY_FAILURES) keeps it ready; two in a row do not.
    checks = len(seen)
    answers[:] = [503, 200]
    assert wait_until(lambda: len(seen) >= checks + 3)
    assert ready(proxy) == (200, 200)
    answers[:] = [503]
    assert wait_until(lambda: ready(proxy) == (503, 503))
    assert get(proxy.port, "/other").status == 200  # traffic still flows; /ready only advises


def test_without_a_check_ready_does_not_look_at_the_app(
    start_proxy: Callable[..., ProxyServer], free_port: int
) -> None:
    proxy = start_proxy(free_port)  # nothing listens there
    assert ready(proxy) == (200, 200)


# --- one probe ---------------------------------------------------------------------------------


class Scripted(Listener):
    """Accepts, reads the request, then answers ``reply`` (or nothing when it is None)."""

    def __init__(self, reply: bytes | None) -> None:
        super().__init__()
        self.reply = reply

    def stop(self) -> None:
        self._stop_accepting()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if self.reply is None:
            await reader.read()  # until the prober gives up and hangs up
        else:
            writer.write(self.reply)
            await writer.drain()
        writer.close()


@pytest.mark.parametrize(
    ("reply", "ok"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 299 Whatever\r\n\r\n", True),
        (b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", False),
        (b"HTTP/1.1 500 Internal Server Error\r\n\r\n", False),
        (b"SSH-2.0-OpenSSH_9.2\r\n", False),
        (b"HTTP/1.1 200", False),  # cut short
        (b"", False),
        (None, False),  # never answers: the timeout
    ],
)
def test_http_probe(loop: LoopThread, reply: bytes | None, ok: bool) -> None:
    async def scenario() -> bool:
        server = Scripted(reply)
        port = await server.start()
        try:
            return await probe("http:/healthz?full=1", "127.0.0.1", port, timeout=0.2)
        finally:
            server.stop()

    assert loop.run(scenario()) is ok


def test_tcp_probe(loop: LoopThread, free_port: int) -> None:
    async def scenario() -> tuple[bool, bool]:
        refused = await probe("tcp", "127.0.0.1", free_port, timeout=0.2)
        server = Scripted(b"")
        port = await server.start()
        try:
            return refused, await probe("tcp", "127.0.0.1", port, timeout=0.2)
        finally:
            server.stop()

    assert loop.run(scenario()) == (False, True)
