"""Python hooks on a running proxy, over real sockets: what the app receives, what the client
gets back, and that no hook (raising, hanging, async, half-written) can hurt the proxy."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.calls import build, send
from support.client import connect, get, read_responses, request
from support.logpipe import read_log
from support.loop import LoopThread
from support.proxy import TEST_SETTINGS
from support.scrape import value, wait_until
from support.upstream import Received, Upstream, response

from sidecar_proxy.config import ConfigError, LoadedSettings, Settings
from sidecar_proxy.hooks.load import FILE_MODULE, HookLoadError
from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]
EXAMPLE = Path(__file__).parents[2] / "examples" / "hooks.py"


@pytest.fixture(autouse=True)
def forget_the_hooks_module() -> Iterator[None]:
    yield
    sys.modules.pop(FILE_MODULE, None)


def hooks_file(tmp_path: Path, text: str, name: str = "hooks.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def hook_errors(proxy: ProxyServer, hook: str) -> float:
    return value(proxy.metrics.registry, "sidecar_hook_errors_total", hook=hook)


def hook_module() -> Any:
    """The hooks file as the proxy loaded it, for what its hooks recorded."""
    return sys.modules[FILE_MODULE]


# --- the example file ---------------------------------------------------------------------


def test_the_example_hooks(
    start_upstream: StartUpstream, start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS", "key-one:acme, key-two")
    monkeypatch.setenv("CANARY_PERCENT", "0")
    up = start_upstream()
    proxy = start_proxy(up.port, hooks=str(EXAMPLE))

    refused = get(proxy.port, "/api/orders", "X-API-Key: wrong\r\n")
    assert refused.status == 401
    assert refused.header("WWW-Authenticate") == 'ApiKey realm="api"'
    assert refused.body == b"a valid X-API-Key is required\n"
    assert refused.header("X-Request-ID")  # the proxy's own fields are on local answers too
    assert get(proxy.port, "/api/orders").status == 401
    assert up.received == []  # the app never saw either

    ok = get(proxy.port, "/api/orders?page=2", "X-API-Key: key-one\r\nX-Canary: yes\r\n")
    assert ok.status == 200 and ok.body == b"GET /api/orders?page=2"
    seen = up.received[-1]
    assert seen.header("X-Tenant") == "acme" and seen.header("X-Edge") == "sidecar"
    assert seen.header("X-API-Key") is None  # the secret stops at the sidecar
    assert seen.header("X-Canary") is None  # not in the canary; the client's value dropped
    assert ok.header("X-Canary") is None

    get(proxy.port, "/api/x", "X-API-Key: key-two\r\n")
    assert up.received[-1].header("X-Tenant") == "default"

    canary = get(proxy.port, "/", "X-Canary: always\r\n")
    assert canary.status == 200 and canary.header("X-Canary") == "1"
    assert up.received[-1].header("X-Canary") == "1"
    assert hook_errors(proxy, "on_request") == hook_errors(proxy, "on_response") == 0


# --- what a hook may change, and what it may not --------------------------------------------

REWRITE = """
def on_request(request):
    request.path = "/v2" + request.path
    request.query = "rewritten=1"
    h = request.headers
    h["X-Added"] = "yes"
    h.add("X-Added", "twice")
    del h["host"]                       # the app still gets the client's Host
    del h["x-remove-me"]
    h["Content-Length"] = "999"         # the proxy owns framing ...
    h["Transfer-Encoding"] = "chunked"
    h["Connection"] = "close"
    h["X-Forwarded-For"] = "6.6.6.6"    # ... and its own fields
    h["X-Request-ID"] = "forged"

def on_response(request, response):
    response.headers["X-Via"] = "hook"
    del response.headers["server"]
    response.headers["Content-Length"] = "1"
    response.headers["Transfer-Encoding"] = "gzip"
"""


def test_changes_reach_the_app_and_framing_stays_the_proxys(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    async def app(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(response(200, b"twelve bytes", [("Server", "app")]))

    up = start_upstream(app)
    proxy = start_proxy(up.port, hooks=hooks_file(tmp_path, REWRITE))
    raw = build("POST", "/orders?x=1", b"hello", "X-Remove-Me: 1\r\n", keep_alive=True)
    with connect(proxy.port) as sock:
        sock.sendall(raw + raw)  # two on one connection: the framing must hold for both
        responses, closed = read_responses(sock, 2)
    assert not closed and [r.status for r in responses] == [200, 200]
    for r in responses:
        assert r.body == b"twelve bytes" and r.header("Content-Length") == "12"
        assert r.header("X-Via") == "hook" and r.header("Server") is None
        assert r.header("Transfer-Encoding") is None
    assert len(up.received) == 2
    for seen in up.received:
        assert seen.target == "/v2/orders?rewritten=1" and seen.body == b"hello"
        assert seen.header_all("X-Added") == ["yes", "twice"]
        assert seen.header_all("Host") == ["test"] and seen.header("X-Remove-Me") is None
        assert seen.header_all("Content-Length") == ["5"]
        assert seen.header("Transfer-Encoding") is None and seen.header("Connection") is None
        assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.header_all("X-Request-ID") != ["forged"]
    assert up.connections == 1  # and the app connection was reused


LOCAL = """
from sidecar_proxy.hooks import Response

def on_request(request):
    if request.path == "/maintenance":
        return Response(
            503,
            '{"error": "maintenance"}',
            [("Content-Type", "application/json"), ("Retry-After", "30"),
             ("Content-Length", "999"), ("Connection", "close"), ("X-Request-ID", "mine")],
        )
    if request.path == "/preflight":
        return Response(204, headers={"Access-Control-Allow-Origin": "*"})
"""


def test_a_local_answer_is_framed_by_the_proxy(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, log_pipe: Any
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port, log_pipe[1], hooks=hooks_file(tmp_path, LOCAL))
    raw = (
        b"GET /maintenance HTTP/1.1\r\nHost: t\r\n\r\n"
        b"OPTIONS /preflight HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /app HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    body = b'{"error": "maintenance"}'
    got, preflight, passed = request(proxy.port, raw, count=3)
    assert (got.status, got.body, got.header("Content-Type")) == (503, body, "application/json")
    assert got.header("Retry-After") == "30"
    assert got.header_all("Content-Length") == [str(len(body))]
    assert got.header("Connection") is None  # the connection stays open for the rest
    assert len(got.header_all("X-Request-ID")) == 1 and got.header("X-Request-ID") != "mine"
    assert preflight.status == 204 and preflight.body == b""
    assert preflight.header("Content-Length") is None  # RFC 9110 §8.6: none on a 204
    assert preflight.header("Access-Control-Allow-Origin") == "*"
    assert passed.status == 200
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("HEAD", "/maintenance")
    head = conn.getresponse()
    assert (head.status, head.read(), head.getheader("Content-Length")) == (503, b"", "24")
    conn.close()
    assert [r.target for r in up.received] == ["/app"]
    lines = read_log(log_pipe[0], 4)
    assert [line["flags"] for line in lines] == ["HA", "HA", "", "HA"]
    assert [line["attempts"] for line in lines] == [0, 0, 1, 0]


# --- failures: counted, logged once, never fatal ---------------------------------------------

RAISING = """
def on_request(request):
    if request.path == "/boom":
        raise RuntimeError("boom for " + request.request_id)   # a new message every time
    if request.path == "/bad-return":
        return "not a response"
    if request.path == "/exit":
        raise SystemExit(1)

def on_response(request, response):
    if request.path == "/boom-later":
        {}["missing"]
    if request.path == "/bad-header":
        response.headers["X-Bad"] = "a\\r\\nSet-Cookie: stolen=1"
"""


def test_a_failing_hook_answers_500_or_leaves_the_response_alone(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    log_pipe: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port, log_pipe[1], hooks=hooks_file(tmp_path, RAISING))
    caplog.set_level(logging.ERROR, logger="sidecar_proxy.hooks")
    ids = []
    for _ in range(3):
        r = get(proxy.port, "/boom")
        assert r.status == 500 and b"the on_request hook failed" in r.body
        ids.append(r.header("X-Request-ID"))
    assert get(proxy.port, "/bad-return").status == 500
    assert get(proxy.port, "/exit").status == 500  # SystemExit in a hook exits nothing
    later = get(proxy.port, "/boom-later")
    assert later.status == 200 and later.body == b"GET /boom-later"
    bad = get(proxy.port, "/bad-header")
    assert bad.status == 200 and bad.header("X-Bad") is None and bad.header("Set-Cookie") is None
    assert get(proxy.port, "/fine").status == 200

    assert hook_errors(proxy, "on_request") == 5
    assert hook_errors(proxy, "on_response") == 2
    assert [r.target for r in up.received] == ["/boom-later", "/bad-header", "/fine"]
    # Logged once per distinct error (type and place), with the request id of the first.
    records = [r for r in caplog.records if r.name == "sidecar_proxy.hooks"]
    errors = [getattr(r, "error", "") for r in records]
    assert len(records) == 5, errors
    assert sum(e.startswith("RuntimeError: boom for ") for e in errors) == 1
    first = next(r for r in records if getattr(r, "error", "").startswith("RuntimeError"))
    assert getattr(first, "request_id", None) == ids[0] and first.exc_info is not None
    assert {getattr(r, "hook", None) for r in records} == {"on_request", "on_response"}
    flags = [line["flags"] for line in read_log(log_pipe[0], 8)]
    assert flags == ["HF", "HF", "HF", "HF", "HF", "HF", "HF", ""]


# --- async hooks --------------------------------------------------------------------------

ASYNC = """
import asyncio
EVENTS = []

async def on_request(request):
    EVENTS.append(("request", request.path))
    try:
        await asyncio.sleep(float(request.headers.get("x-hook-delay", "0.02")))
    except asyncio.CancelledError:
        EVENTS.append(("cancelled", request.path))
        raise
    request.headers["X-Checked"] = "async"

async def on_response(request, response):
    await asyncio.sleep(float(request.headers.get("x-response-delay", "0.02")))
    response.headers["X-Stamped"] = str(response.status)
"""

BIG = bytes(range(256)) * 4096  # 1 MiB, every byte value, so a reordering would show


async def body_app(req: Received, w: asyncio.StreamWriter) -> None:
    """Responses of every framing: Content-Length, chunked with trailers, none, to the close."""
    if req.target.endswith("/big"):
        w.write(response(200, BIG))
    elif req.target.endswith("/chunked"):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"one ", b"two ", b"three"):
            w.write(b"%x\r\n%b\r\n" % (len(part), part))
        w.write(b"0\r\nX-Trailer: t\r\n\r\n")
    elif req.target.endswith("/no-content"):
        w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    elif req.target.endswith("/until-close"):
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        w.close()
    else:
        w.write(response(200, b"small"))


@pytest.mark.parametrize(
    "case",
    [
        ("/big", 200, BIG),
        ("/chunked", 200, b"one two three"),
        ("/no-content", 204, b""),
        ("/until-close", 200, b"until the end"),
        ("/small", 200, b"small"),
    ],
    ids=lambda case: case[0],
)
def test_async_hooks_hold_the_response_until_its_head_may_go(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    case: tuple[str, int, bytes],
) -> None:
    path, status, body = case
    up = start_upstream(body_app)
    proxy = start_proxy(up.port, hooks=hooks_file(tmp_path, ASYNC))
    # The response hook waits 50 ms: the app's whole response has arrived meanwhile, and must
    # come out after the head, complete and in order.
    out = send(proxy.port, build("GET", path, headers="X-Response-Delay: 0.05\r\n"))
    assert out.status == status and out.response is not None
    assert out.response.body == body and out.response.complete
    assert out.header("X-Stamped") == str(status)
    assert up.received[0].header("X-Checked") == "async"
    assert hook_errors(proxy, "on_request") == hook_errors(proxy, "on_response") == 0


def test_async_hooks_past_the_timeout(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port, hooks=hooks_file(tmp_path, ASYNC), hook_timeout=0.1)
    caplog.set_level(logging.WARNING, logger="sidecar_proxy.hooks")
    slow = send(proxy.port, build("GET", "/slow", headers="X-Hook-Delay: 5\r\n"))
    assert slow.status == 504 and slow.elapsed < 2 and slow.response is not None
    assert b"the on_request hook did not finish in time" in slow.response.body
    assert up.received == []
    late = send(proxy.port, build("GET", "/late", headers="X-Response-Delay: 5\r\n"))
    assert late.status == 200 and late.elapsed < 2
    assert late.header("X-Stamped") is None  # unchanged
    assert late.response is not None and late.response.body == b"GET /late"
    send(proxy.port, build("GET", "/slow2", headers="X-Hook-Delay: 5\r\n"))
    assert hook_errors(proxy, "on_request") == 2 and hook_errors(proxy, "on_response") == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "sidecar_proxy.hooks"]
    assert len(warnings) == 2, warnings  # one per hook: a timeout is one distinct error
    assert ("cancelled", "/slow") in hook_module().EVENTS


def test_the_in_flight_limit_covers_an_async_hooks_wait(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port, hooks=hooks_file(tmp_path, ASYNC), max_in_flight=1)
    with connect(proxy.port) as first:
        first.sendall(build("GET", "/first", headers="X-Hook-Delay: 0.5\r\n"))
        assert wait_until(lambda: ("request", "/first") in hook_module().EVENTS)
        shed = send(proxy.port, build("GET", "/second"))
        assert shed.status == 503 and shed.header("Retry-After") == "1"
        responses, _ = read_responses(first, 1)
    assert responses[0].status == 200
    assert [r.target for r in up.received] == ["/first"]


def test_a_client_gone_during_an_async_hook_cancels_it(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, log_pipe: Any
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port, log_pipe[1], hooks=hooks_file(tmp_path, ASYNC))
    sock = connect(proxy.port)
    sock.sendall(build("GET", "/gone", headers="X-Hook-Delay: 5\r\n"))
    assert wait_until(lambda: ("request", "/gone") in hook_module().EVENTS)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset, at once
    assert wait_until(lambda: ("cancelled", "/gone") in hook_module().EVENTS)
    [line] = read_log(log_pipe[0], 1)
    assert (line["status"], line["flags"]) == (499, "DC")
    assert up.received == [] and get(proxy.port, "/after").status == 200
    assert hook_errors(proxy, "on_request") == 0  # the client's leaving is not the hook's fault


def test_a_post_body_waits_for_an_async_hook(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    up = start_upstream()
    proxy = start_proxy(up.port, hooks=hooks_file(tmp_path, ASYNC))
    body = b"x" * 300_000  # more than one read: the client is paused while the hook runs
    out = send(proxy.port, build("POST", "/upload", body, "X-Hook-Delay: 0.1\r\n", chunked=True))
    assert out.status == 200
    assert up.received[0].body == body and up.received[0].header("X-Checked") == "async"


# --- SIGHUP ---------------------------------------------------------------------------------

VERSION = """
def on_request(request):
    request.headers["X-Hooks-Version"] = "{version}"
"""


def test_sighup_loads_the_hooks_again_and_a_broken_file_keeps_the_old_ones(
    loop: LoopThread,
    start_upstream: StartUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = start_upstream()
    path = hooks_file(tmp_path, VERSION.format(version=1))
    settings = dataclasses.replace(
        Settings(), **{**TEST_SETTINGS, "upstream_port": up.port, "hooks": path}
    )
    current: list[Settings | ConfigError] = [settings]

    def source() -> LoadedSettings:
        loaded = current[0]
        if isinstance(loaded, ConfigError):
            raise loaded
        return LoadedSettings(loaded, {})

    server = ProxyServer(settings, reload_from=source)
    loop.run(server.start())

    async def sighup() -> None:
        server.reload()

    def version() -> str | None:
        get(server.port, "/")
        return up.received[-1].header("X-Hooks-Version")

    try:
        assert version() == "1"
        hooks_file(tmp_path, VERSION.format(version=2))
        loop.run(sighup())
        assert version() == "2"
        caplog.set_level(logging.ERROR, logger="sidecar_proxy.server")
        hooks_file(tmp_path, "def on_request(request):\n    return (\n")  # half-written
        loop.run(sighup())
        assert version() == "2"
        [record] = [r for r in caplog.records if r.name == "sidecar_proxy.server"]
        assert "SyntaxError" in record.getMessage() and path in record.getMessage()
        registry = server.metrics.registry
        assert value(registry, "sidecar_config_reloads_total", result="failure") == 1
        current[0] = dataclasses.replace(settings, hooks="")
        loop.run(sighup())
        assert version() is None  # hooks off
        assert value(registry, "sidecar_config_reloads_total", result="success") == 2
    finally:
        loop.run(server.close())


def test_unusable_hooks_stop_the_start(loop: LoopThread, tmp_path: Path) -> None:
    path = hooks_file(tmp_path, "raise ImportError('no such thing')\n")
    settings = dataclasses.replace(Settings(), **{**TEST_SETTINGS, "hooks": path})
    server = ProxyServer(settings)
    started = time.monotonic()
    with pytest.raises(HookLoadError, match="ImportError: no such thing"):
        loop.run(server.start())
    loop.run(server.close())
    assert time.monotonic() - started < 5 and server.port == 0
