"""The client leg's deadlines on the fake clock: a head that does not finish, a body that stalls,
a kept-alive connection left idle, and the lingering close after an early answer.

The timeouts are distinct, so a test also notices the wrong one firing; each is checked just
before its boundary and at the first tick after it.
"""

from __future__ import annotations

from support.dataplane import NOT_YET, TICKED, Client, DataPath, request, response

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
