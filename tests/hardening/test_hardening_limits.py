"""Size limits on requests: header section (431), field count (431), request target (414) and
body (413), each refused before the excess reaches the app, with small limits configured so the
tests stay fast.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from support.client import connect, read_responses, request
from support.hardening import (
    AppMark,
    RawApp,
    TrackingUpstream,
    assert_never_completed,
    assert_nothing_reached,
    assert_rejected,
    dribble,
    exchange,
    mark,
    parse_responses,
    proxy_to,
    raw_request,
    read_until_close,
    running,
    send_tolerant,
)
from support.loop import LoopThread
from support.upstream import Received, response

from sidecar_proxy.server import ProxyServer

MAX_HEADER_BYTES = 1024
MAX_HEADER_COUNT = 10
MAX_URL_BYTES = 256
MAX_BODY = 100
LIMITS = {
    "max_header_bytes": MAX_HEADER_BYTES,
    "max_header_count": MAX_HEADER_COUNT,
    "max_url_bytes": MAX_URL_BYTES,
    "max_request_body_bytes": MAX_BODY,
}


pytestmark = pytest.mark.usefixtures("no_crash")


@pytest.fixture(scope="module")
def pair(loop: LoopThread) -> Iterator[tuple[TrackingUpstream, ProxyServer]]:
    with running(loop, **LIMITS) as pair:
        yield pair


def fields(count: int, name: bytes = b"X-Field", size: int = 8) -> list[bytes]:
    return [name + b": " + (b"%d-" % i).ljust(size, b"v") for i in range(count)]


def get_with(*extra: bytes, target: bytes = b"/") -> bytes:
    return raw_request(b"GET " + target + b" HTTP/1.1", b"Host: test", *extra)


def chunked_post(*chunks: bytes, trailers: list[bytes] | None = None) -> bytes:
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks)
    body += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers or []) + b"\r\n"
    return raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Transfer-Encoding: chunked") + body


def ok_response(port: int, raw: bytes) -> bytes:
    responses = request(port, raw)
    assert [r.status for r in responses] == [200], responses
    return responses[0].body


# == header section ================================================================================


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(get_with(b"X-Big: " + b"a" * MAX_HEADER_BYTES), id="one-large-field"),
        pytest.param(get_with(*fields(8, size=150)), id="several-fields-adding-up"),
        pytest.param(
            get_with(b"X-Forwarded-For: " + b"1" * MAX_HEADER_BYTES), id="large-forwarding-field"
        ),
        pytest.param(
            get_with(b"X-Request-ID: " + b"r" * MAX_HEADER_BYTES), id="large-request-id-field"
        ),
    ],
)
def test_header_section_over_the_limit_is_431(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, raw: bytes
) -> None:
    assert_rejected(exchange(sidecar.port, raw), 431)
    assert_nothing_reached(app, warm)


def test_header_section_dribbled_over_many_reads_is_still_431(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark
) -> None:
    # A field value that never ends, arriving in small reads: the proxy must count what it
    # holds across reads rather than wait for the field to be complete.
    with connect(sidecar.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Endless: ")
        sent = dribble(sock, b"a" * 100, 80)
        cap = read_until_close(sock, 2.0)
    assert_rejected(cap, 431)
    assert sent < 4 * (MAX_HEADER_BYTES + MAX_URL_BYTES), "the proxy kept reading the field"
    assert_nothing_reached(app, warm)


def test_header_section_under_the_limit_passes(sidecar: ProxyServer) -> None:
    # the control: the same shape, a little smaller, is forwarded
    ok_response(sidecar.port, get_with(*fields(5, size=150)))


@pytest.mark.parametrize(
    "name",
    # the fields the proxy consumes itself (and re-adds) count like any other
    [b"X-Field", b"X-Forwarded-For", b"X-Request-ID", b"X-Forwarded-Proto", b"X-Forwarded-Host"],
)
def test_more_fields_than_max_header_count_is_431(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, name: bytes
) -> None:
    # Host plus MAX_HEADER_COUNT more: one field line too many, whatever its name.
    raw = get_with(*fields(MAX_HEADER_COUNT, name=name))
    assert_rejected(exchange(sidecar.port, raw), 431)
    assert_nothing_reached(app, warm)


def test_exactly_max_header_count_fields_pass(sidecar: ProxyServer) -> None:
    ok_response(sidecar.port, get_with(*fields(MAX_HEADER_COUNT - 1)))


# == request target ================================================================================


def test_target_of_exactly_max_url_bytes_passes(sidecar: ProxyServer) -> None:
    target = b"/" + b"t" * (MAX_URL_BYTES - 1)
    assert ok_response(sidecar.port, get_with(target=target)) == b"GET " + target


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/" + b"t" * MAX_URL_BYTES, id="one-byte-over"),
        pytest.param(b"/?" + b"q=1&" * MAX_URL_BYTES, id="long-query"),
        pytest.param(b"http://test/" + b"t" * MAX_URL_BYTES, id="absolute-form"),
    ],
)
def test_target_over_max_url_bytes_is_414(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, target: bytes
) -> None:
    assert_rejected(exchange(sidecar.port, get_with(target=target)), 414)
    assert_nothing_reached(app, warm)


# == body ==========================================================================================


@pytest.mark.parametrize(
    "extra",
    [pytest.param([], id="plain"), pytest.param([b"Expect: 100-continue"], id="expect-continue")],
)
def test_content_length_over_the_limit_is_413_before_the_body(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, extra: list[bytes]
) -> None:
    # Only the head is sent: the answer must come from the declared length alone, without
    # waiting for (or reading) a body the proxy would refuse anyway.
    raw = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Content-Length: 101", *extra)
    cap = exchange(sidecar.port, raw, timeout=1.0)
    assert_rejected(cap, 413)
    assert cap.elapsed < 0.5
    assert_nothing_reached(app, warm)


def test_content_length_at_the_limit_passes(sidecar: ProxyServer, app: TrackingUpstream) -> None:
    body = bytes(range(MAX_BODY))
    raw = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Content-Length: 100", body=body)
    ok_response(sidecar.port, raw)
    assert app.received[-1].body == body


def test_chunked_body_at_the_limit_passes(sidecar: ProxyServer, app: TrackingUpstream) -> None:
    ok_response(sidecar.port, chunked_post(b"a" * 40, b"b" * 40, b"c" * 20))
    assert app.received[-1].body == b"a" * 40 + b"b" * 40 + b"c" * 20


def test_chunked_body_growing_past_the_limit_is_413(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark
) -> None:
    # The head and the first chunk stream to the app; the chunk that crosses the limit is
    # refused, and the app must never see the request complete.
    head = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Transfer-Encoding: chunked")
    with connect(sidecar.port) as sock:
        sock.sendall(head + b"3c\r\n" + b"a" * 60 + b"\r\n")
        time.sleep(0.1)
        sock.sendall(b"3c\r\n" + b"b" * 60 + b"\r\n0\r\n\r\n")
        cap = read_until_close(sock, 2.0)
    assert_rejected(cap, 413)
    assert_never_completed(app, warm)
    assert all(b"b" * 60 not in raw for raw in app.raw), "bytes past the limit reached the app"


def test_chunked_body_past_the_limit_in_one_read_reaches_nothing(loop: LoopThread) -> None:
    with running(loop, **LIMITS) as (app, sidecar):
        before = mark(app)
        assert_rejected(exchange(sidecar.port, chunked_post(b"a" * 60, b"b" * 60)), 413)
        assert_nothing_reached(app, before, settle=0.1)


def test_body_past_the_limit_after_the_app_answered_closes(loop: LoopThread) -> None:
    # An app that answers as soon as it has the head: the answer is relayed, and since the
    # request can neither be finished nor refused any more, the connection closes after it.
    got = bytearray()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.extend(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        await writer.drain()
        while data := await reader.read(65536):
            got.extend(data)

    raw_app = RawApp(early)
    loop.run(raw_app.start())
    head = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Transfer-Encoding: chunked")
    try:
        with proxy_to(loop, raw_app.port, **LIMITS) as proxy, connect(proxy.port) as sock:
            sock.sendall(head + b"3c\r\n" + b"a" * 60 + b"\r\n")
            (resp,), _ = read_responses(sock, 1)
            assert resp.status == 200 and resp.body == b"early"
            send_tolerant(sock, b"3c\r\n" + b"b" * 60 + b"\r\n0\r\n\r\n")
            cap = read_until_close(sock, 2.0)
    finally:
        loop.run(raw_app.stop())
    assert cap.closed
    assert cap.data == b""
    assert b"b" * 60 not in got


# == trailers ======================================================================================


@pytest.mark.parametrize(
    "trailers",
    [
        pytest.param([b"X-Trailer: " + b"t" * 2 * MAX_HEADER_BYTES], id="large-trailer-section"),
        pytest.param(fields(5 * MAX_HEADER_COUNT, name=b"X-Trailer"), id="many-trailer-fields"),
    ],
)
def test_trailer_section_is_bounded_like_the_header_section(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, trailers: list[bytes]
) -> None:
    # Trailer fields are held until the body ends; unbounded, a client could make the proxy
    # hold any amount of memory for one request.
    cap = exchange(sidecar.port, chunked_post(b"abc", trailers=trailers))
    assert_rejected(cap, {400, 431})
    assert_never_completed(app, warm)
    assert parse_responses(cap.data).error is None


def test_unfinished_trailer_field_is_bounded_too(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark
) -> None:
    # Like the dribbled head above, but after the last chunk: a trailer field that never ends
    # must be cut off at the head limits, not held until the body timeout.
    head = raw_request(b"POST /up HTTP/1.1", b"Host: test", b"Transfer-Encoding: chunked")
    with connect(sidecar.port) as sock:
        sock.sendall(head + b"3\r\nabc\r\n0\r\nX-Endless: ")
        sent = dribble(sock, b"a" * 100, 80)
        cap = read_until_close(sock, 1.0)
    assert_rejected(cap, {400, 431})
    assert sent < 4 * (MAX_HEADER_BYTES + MAX_URL_BYTES), "the proxy kept reading the field"
    assert_never_completed(app, warm)


def test_pipelined_requests_do_not_multiply_memory(loop: LoopThread) -> None:
    # Requests pipelined behind one the app is still working on must wait as bytes, not as
    # thousands of parsed requests: a 28-byte GET costs about 2 KB once queued, so a few
    # connections doing this would take a small sidecar's memory.
    async def slow(req: Received, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        w.write(response(200, b"late"))

    one = raw_request(b"GET / HTTP/1.1", b"Host: test")
    burst = one * ((256 << 10) // len(one))
    with running(loop, slow) as (_, sidecar), connect(sidecar.port) as sock:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            sock.sendall(burst)
            time.sleep(0.3)  # the app is still on the first request
            grown = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert grown < 4 * len(burst), f"{grown / 1e6:.1f} MB held for {len(burst) >> 10} KiB sent"
