"""The client leg's deadlines on the fake clock: a head that does not finish, a body that stalls,
a kept-alive connection left idle, and the lingering close after an early answer.

The timeouts are distinct, so a test also notices the wrong one firing; each is checked just
before its boundary and at the first tick after it.
"""

from __future__ import annotations

from support.dataplane import NOT_YET, TICKED, Client, DataPath, phase, request, response

from sidecar_proxy.http.phase import CONNECTING

HEADER, BODY, IDLE = 0.4, 0.6, 1.0
LINGER = 2.0  # how long a closing connection reads and discards (h1/client.py)


def proxy(**settings: float) -> DataPath:
    return DataPath(
        client_header_timeout=HEADER,
        client_body_timeout=BODY,
        client_idle_timeout=IDLE,
        **settings,
    )


def assert_408_and_lingering(dp: DataPath, c: Client, detail: bytes) -> None:
    out = c.response()
    assert (out.status, out.header("Connection")) == (408, "close")
    assert detail in out.body
    assert dp.records[-1].flags == ["DT"]
    # RFC 9112 §9.6: half-close and read on, so what the client still sends does not make the
    # kernel reset the connection under the 408
    assert c.transport.eof_written and c.transport.reading and not c.closed
    c.send(b"more of what it was sending")
    dp.advance(LINGER + TICKED)
    assert c.closed


def test_a_head_dribbled_byte_by_byte_gets_408_when_the_header_timeout_runs_out() -> None:
    # Each byte does not reset the clock: the header timeout counts from the head's first byte.
    dp = proxy()
    c = dp.client()
    start = dp.loop.now
    c.send(b"GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: ")
    for _ in range(7):  # a byte every 50 ms, the last one 50 ms before the deadline
        dp.advance(0.05)
        c.send(b"a")
    dp.loop.advance_to(start + HEADER - NOT_YET)
    assert c.received() == b""
    dp.loop.advance_to(start + HEADER + TICKED)
    assert_408_and_lingering(dp, c, b"request header timeout")
    assert dp.pool.connects == 0  # nothing reached the app


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    dp = proxy()
    c = dp.client()
    dp.advance(HEADER - NOT_YET)
    assert not c.closed
    dp.advance(TICKED)
    assert c.closed and c.received() == b"" and dp.records == []


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout_not_before() -> None:
    dp = proxy()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(response())
    assert c.response().status == 200
    answered = dp.loop.now

    dp.loop.advance_to(answered + HEADER + 0.1)  # longer than the header timeout: still open
    c.send(request(rid="rid-2"))
    app.send(response())
    assert c.response().status == 200
    answered = dp.loop.now

    dp.loop.advance_to(answered + IDLE - NOT_YET)
    assert not c.closed
    dp.loop.advance_to(answered + IDLE + TICKED)
    assert c.closed and c.received() == b""  # closed quietly: there was no request to answer


def test_a_stalled_body_gets_408_body_timeout_after_its_last_byte() -> None:
    dp = proxy(max_retries=0)
    app = dp.pool.add_idle()
    c, _ = dp.begin(request("POST", "/up", b"0123456789")[:-7])
    dp.advance(0.3)
    c.send(b"345")  # the clock counts from here
    last = dp.loop.now

    dp.loop.advance_to(last + BODY - NOT_YET)
    assert c.received() == b""
    dp.loop.advance_to(last + BODY + TICKED)
    assert_408_and_lingering(dp, c, b"request body timeout")
    assert app.transport.closed  # the app never gets the end of it, and its leg is not reused
    assert dp.records[-1].upstream_errors == []  # the client's fault, not the app's


def test_a_slow_but_live_upload_is_neither_cut_nor_blamed_on_the_app() -> None:
    # Each byte comes within the body timeout; the whole upload outlasts the body timeout and
    # request_timeout together. The upload is the client's time.
    dp = proxy(request_timeout=0.5, circuit_breaker_threshold=1, max_retries=0)
    app = dp.pool.add_idle()
    body = b"0123456789"
    c, _ = dp.begin(request("POST", "/up", body)[: -len(body)])
    for i in range(len(body)):
        dp.advance(BODY - 0.1)
        c.send(body[i : i + 1])
    assert app.received().endswith(b"\r\n\r\n" + body)
    app.send(response(body=b"got it"))
    assert c.response().body == b"got it"
    assert dp.record.flags == [] and dp.ctx.breaker.allow()


# -- who stalled an upload: the client stops sending, or the app stops reading -------------------

APP_STALL = 2.0  # request_timeout: also how long the app may leave the request body unread


def test_an_upload_the_app_stops_reading_is_504_for_the_app_not_408_for_the_client() -> None:
    # The app's write buffer fills and the client is paused: its bytes wait in our buffer, so
    # the body timeout (shorter) must not fire; the app's time runs out instead.
    dp = proxy(request_timeout=APP_STALL, max_retries=0, circuit_breaker_threshold=1)
    app = dp.pool.add_idle()
    c, ex = dp.begin(request("POST", "/up", b"0123456789")[:-6])
    app.leg.pause_writing()
    stalled = dp.loop.now
    assert not c.transport.reading

    dp.loop.advance_to(stalled + APP_STALL - NOT_YET)  # many body timeouts: no 408
    assert c.received() == b"" and not ex.finished
    dp.loop.advance_to(stalled + APP_STALL + TICKED)
    out = c.response()
    assert (
        out.status == 504
        and out.body == b"504 Gateway Timeout: the app stopped reading the request\n"
    )
    assert (dp.record.flags, dp.record.upstream_errors) == (["UT"], ["timeout"])
    assert app.transport.closed  # owed the rest of a body: never reused
    assert not dp.ctx.breaker.allow()  # the app's failure, counted as one
    assert c.transport.eof_written  # the body is unread: lingering close, as after a 408


def test_an_app_that_reads_again_restarts_the_clients_body_timeout() -> None:
    # Paused for longer than the body timeout, then the app reads again: the client's silence
    # counts from then, not from its last byte, and is the client's (408) once it runs out.
    dp = proxy(request_timeout=APP_STALL, max_retries=0)
    app = dp.pool.add_idle()
    c, _ = dp.begin(request("POST", "/up", b"0123456789")[:-6])
    app.leg.pause_writing()
    dp.advance(APP_STALL - 0.5)  # past the body timeout, within the app's stall limit
    app.leg.resume_writing()
    resumed = dp.loop.now
    assert c.transport.reading

    dp.loop.advance_to(resumed + BODY - NOT_YET)
    assert c.received() == b""
    dp.loop.advance_to(resumed + BODY + TICKED)
    assert_408_and_lingering(dp, c, b"request body timeout")
    assert dp.record.upstream_errors == []


def test_an_app_that_reads_in_fits_and_starts_is_not_cut() -> None:
    # Each pause is shorter than the stall limit; together they outlast it and the body timeout.
    dp = proxy(request_timeout=APP_STALL, max_retries=0)
    app = dp.pool.add_idle()
    body = b"0123456789"
    c, _ = dp.begin(request("POST", "/up", body)[: -len(body)])
    for i in range(len(body)):
        app.leg.pause_writing()
        dp.advance(APP_STALL - 0.2)
        app.leg.resume_writing()
        c.send(body[i : i + 1])
    assert app.received().endswith(b"\r\n\r\n" + body)
    app.send(response(body=b"got it"))
    assert c.response().body == b"got it" and dp.record.flags == []


def test_an_app_stuck_writing_to_a_client_that_does_not_read_is_not_blamed() -> None:
    # The app answered early and streams; the client reads none of it, so the app is paused,
    # and may stop reading the upload for that. Its stall clock starts when the client reads.
    dp = proxy(request_timeout=APP_STALL, max_retries=0)
    app = dp.pool.add_idle()
    c, ex = dp.begin(request("POST", "/up", b"0123456789")[:-6])
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    c.conn.pause_writing()
    app.leg.pause_writing()
    dp.advance(3 * APP_STALL)
    assert not ex.finished
    c.conn.resume_writing()
    reading = dp.loop.now
    dp.loop.advance_to(reading + APP_STALL - NOT_YET)
    assert not ex.finished
    dp.loop.advance_to(reading + APP_STALL + TICKED)
    # the head is out: the response is cut, and the unread body makes it a lingering close
    assert ex.finished and dp.record.flags == ["UT"] and c.transport.eof_written
    assert c.response().complete is False


def test_a_pipelined_upload_waiting_its_turn_is_not_timed_until_it_is_read() -> None:
    dp = proxy(request_timeout=APP_STALL, max_retries=0)
    app = dp.pool.add_idle()
    c = dp.client()
    c.send(request(target="/slow") + request("POST", "/up", b"0123456789", rid="rid-2")[:-6])
    dp.advance(BODY + 0.3)  # the app takes its time over the first: the upload waits unread
    assert c.received() == b""
    app.send(response())
    dp.loop.run_ready()
    turn = dp.loop.now
    assert c.response().status == 200 and c.transport.reading

    dp.loop.advance_to(turn + BODY - NOT_YET)
    assert c.received() == b""
    dp.loop.advance_to(turn + BODY + TICKED)
    out = c.response()
    assert out.status == 408 and dp.records[-1].flags == ["DT"]


def test_a_stall_of_an_abandoned_attempt_is_not_held_against_the_next() -> None:
    # The app stopped reading, then reset: the retry is still connecting when that stall would
    # have run out, and nothing is charged for it; the new attempt takes the body from the start.
    dp = proxy(request_timeout=APP_STALL, retry_backoff=0.0)
    app = dp.pool.add_idle()
    c, ex = dp.begin(request("PUT", "/f", b"0123456789")[:-6])
    app.leg.pause_writing()
    stalled = dp.loop.now
    dp.advance(APP_STALL - 0.5)
    app.transport.peer_reset()
    assert phase(ex) is CONNECTING
    dp.loop.advance_to(stalled + APP_STALL + TICKED)
    assert not ex.finished and c.received() == b""
    retry = dp.pool.accept()
    c.send(b"456789")
    assert retry.received().endswith(b"\r\n\r\n0123456789")
    retry.send(response())
    assert c.response().status == 200 and dp.record.attempts == 2
