"""The spooled replay inside the exchange, on the fake loop with real spool files: when a body
is copied to disk, how a replay is paced by the app's write buffer, when the copy is given back,
and what a copy that fails mid-way costs. The end-to-end retry over sockets is in
tests/resilience/test_spool.py; the spool files themselves in tests/unit/test_replay_spool.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from support.dataplane import Client, DataPath, chunked, phase, request, response
from support.fakes import App
from support.scrape import value

from sidecar_proxy.http.exchange import REPLAY_PIECE
from sidecar_proxy.http.phase import AWAITING_HEAD, DONE, STREAMING
from sidecar_proxy.replay.spool import SpoolArea

KIB = 1024
BUFFER = 64 * KIB  # RETRY_BUFFER_LIMIT
HIGH_WATER = 64 * KIB  # the app transport's write buffer
BODY = hashlib.shake_256(b"replay").digest(300 * KIB)  # a replay takes several pieces
CHUNKED_PUT = b"PUT /f HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"


def spooling(tmp_path: Path, **settings: Any) -> DataPath:
    dp = DataPath(
        **{
            "retry_buffer_limit": BUFFER,
            "retry_spool_limit": 1024 * KIB,
            "retry_spool_max_total": 4096 * KIB,
            "retry_spool_dir": str(tmp_path),
            "retry_backoff": 0.0,
            **settings,
        }
    )
    dp.pool.app_high_water = HIGH_WATER
    return dp


def area(dp: DataPath) -> SpoolArea:
    assert dp.ctx.spool is not None
    return dp.ctx.spool


def body_of(received: bytes) -> bytes:
    """The body of one Content-Length request, as the app read it."""
    return received.partition(b"\r\n\r\n")[2]


def drain(app: App) -> bytes:
    """Everything the app reads, taking it as fast as the proxy writes it."""
    out = b""
    while data := app.received():
        out += data
    return out


def upload(dp: DataPath) -> tuple[Client, App]:
    """A PUT of BODY on a warm app connection, the whole body sent and read by the app."""
    app = dp.pool.add_idle()
    c, _ = dp.begin(request("PUT", "/f", BODY))
    assert body_of(drain(app)) == BODY
    return c, app


def test_a_body_over_the_buffer_is_spooled_and_replayed_whole(tmp_path: Path) -> None:
    dp = spooling(tmp_path)
    c, first = upload(dp)
    ex = c.exchange
    assert ex.spool is not None and area(dp).in_use == len(BODY) and not ex.chunks
    second = dp.pool.add_idle()
    first.send(response(503))  # retried: the body comes back from the disk copy
    replayed = drain(second)
    assert body_of(replayed) == BODY
    assert replayed.startswith(b"PUT /f HTTP/1.1\r\n")
    second.send(response(body=b"stored"))
    assert c.response().body == b"stored"
    assert phase(ex) is DONE and ex.spool is None and area(dp).in_use == 0


def test_a_replay_waits_for_the_app_to_read(tmp_path: Path) -> None:
    dp = spooling(tmp_path)
    c, first = upload(dp)
    second = dp.pool.add_idle()
    first.send(response(503))
    # The replay stops once the app's write buffer is over its high-water mark, and goes on
    # each time the app reads: it never loads the whole body into memory.
    reads = []
    while data := second.received():
        reads.append(data)
    assert len(reads) > 1
    assert max(len(r) for r in reads) <= HIGH_WATER + REPLAY_PIECE + KIB  # + the head
    assert body_of(b"".join(reads)) == BODY
    second.send(response())
    assert c.response().status == 200


def test_the_rest_of_a_chunked_upload_follows_the_replay(tmp_path: Path) -> None:
    dp = spooling(tmp_path)
    first = dp.pool.add_idle()
    half = len(BODY) // 2
    c, ex = dp.begin(CHUNKED_PUT + b"%x\r\n%b\r\n" % (half, BODY[:half]))
    assert ex.spool is not None
    second = dp.pool.add_idle()
    first.send(response(503))  # mid-upload: the retry replays the first half from disk
    c.send(chunked(BODY[half:]))  # the rest, and the end, arrive while the replay is behind
    head, _, framed = drain(second).partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert dechunk(framed) == BODY  # every byte once, in order, and the last chunk
    second.send(response())
    assert c.response().status == 200 and area(dp).in_use == 0


def dechunk(framed: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, framed = framed.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert framed == b"\r\n", framed
            return out
        out += framed[:size]
        assert framed[size : size + 2] == b"\r\n"
        framed = framed[size + 2 :]


def test_the_copy_goes_back_as_soon_as_the_response_is_committed(tmp_path: Path) -> None:
    dp = spooling(tmp_path)
    c, app = upload(dp)
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert phase(c.exchange) is STREAMING  # no retry can come any more
    assert c.exchange.spool is None and area(dp).in_use == 0
    app.send(b"defghij")
    assert c.response().body == b"abcdefghij"
    assert app.leg in dp.pool.released  # the request went out whole: reusable


def test_an_answer_before_the_replay_caught_up_leaves_the_connection_unusable(
    tmp_path: Path,
) -> None:
    dp = spooling(tmp_path)
    c, first = upload(dp)
    ex = c.exchange
    second = dp.pool.add_idle()
    first.send(response(503))
    second.received()  # the app reads one buffer's worth, then answers at once
    second.send(response(body=b"early"))
    assert c.response().body == b"early" and phase(ex) is DONE
    assert second.leg not in dp.pool.released  # owed the rest of a body: never reused
    assert area(dp).in_use == 0


def test_a_known_length_over_the_spool_limit_is_never_spooled(tmp_path: Path) -> None:
    dp = spooling(tmp_path, retry_spool_limit=200 * KIB)
    c, first = upload(dp)
    assert c.exchange.spool is None and not c.exchange.replayable
    first.send(response(503))
    assert c.response().status == 503  # relayed: not replayable, as without a spool
    assert dp.pool.connects == 0


def test_a_copy_that_outgrows_the_limit_is_dropped_and_the_upload_goes_on(
    tmp_path: Path,
) -> None:
    dp = spooling(tmp_path, retry_spool_limit=200 * KIB)
    app = dp.pool.add_idle()
    c, ex = dp.begin(CHUNKED_PUT + chunked(BODY)[:-5])  # all but the last chunk's end
    assert ex.spool is None and not ex.replayable and area(dp).in_use == 0
    c.send(chunked(BODY)[-5:])
    assert dechunk(drain(app).partition(b"\r\n\r\n")[2]) == BODY
    app.send(response())
    assert c.response().status == 200


def test_the_spools_together_stay_under_their_total(tmp_path: Path) -> None:
    dp = spooling(tmp_path, retry_spool_limit=400 * KIB, retry_spool_max_total=400 * KIB)
    c1, _ = upload(dp)
    assert c1.exchange.spool is not None and area(dp).in_use == len(BODY)
    c2, _ = upload(dp)  # the second would exceed the total: no copy, streamed as before
    assert c2.exchange.spool is None and not c2.exchange.replayable
    assert area(dp).in_use == len(BODY)
    assert value(dp.metrics.registry, "sidecar_retry_spool_errors_total") == 0  # not an error


def test_a_copy_lost_while_a_replay_needs_it_ends_with_the_first_failure(
    tmp_path: Path,
) -> None:
    # The upload goes on during the retry's replay and outgrows the spool: the replay cannot
    # finish, so the client gets the 503 that caused the retry, as it would without a spool.
    dp = spooling(tmp_path, retry_spool_limit=200 * KIB)
    first = dp.pool.add_idle()
    part = 150 * KIB
    c, ex = dp.begin(CHUNKED_PUT + b"%x\r\n%b\r\n" % (part, BODY[:part]))
    assert ex.spool is not None
    second = dp.pool.add_idle()
    first.send(response(503))
    assert phase(ex) is AWAITING_HEAD and second.leg.write_paused  # the replay is behind
    c.send(b"%x\r\n%b\r\n" % (part, BODY[part : 2 * part]))
    got = c.response()
    assert got.status == 503 and b"the app answered 503" in got.body
    assert phase(ex) is DONE and area(dp).in_use == 0 and dp.pool.connects == 0


@pytest.mark.parametrize("spool_limit", [0, 1024 * KIB])
def test_a_small_body_never_touches_the_spool(tmp_path: Path, spool_limit: int) -> None:
    dp = spooling(tmp_path, retry_spool_limit=spool_limit)
    app = dp.pool.add_idle()
    c, ex = dp.begin(request("PUT", "/f", b"small"))
    assert ex.spool is None and ex.replayable and ex.chunks == [b"small"]
    app.send(response())
    assert c.response().status == 200 and list(tmp_path.iterdir()) == []
