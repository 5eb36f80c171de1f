"""Attempts on the fake clock: retries and their backoff, replay safety, the request deadline,
per-try timeouts, the stall limit on a body, and the circuit breaker's timing.

Every wait here is a timer or a tick of the fake loop, so each rule is checked at its boundary
(not a moment before, and at the first tick after) instead of within a scheduling margin, and a
retry that must not happen is proved absent by running the clock past it rather than by sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate

import pytest
from support.dataplane import (
    NOT_YET,
    TICKED,
    Client,
    DataPath,
    chunked,
    phase,
    request,
    response,
)
from support.scrape import value

from sidecar_proxy.http.phase import AWAITING_HEAD, BACKOFF, CONNECTING, DONE, STREAMING
from sidecar_proxy.policy.breaker import BreakerState

RETRY_ON_ALL = frozenset({"connect-failure", "reset", "timeout", "429", "500", "502", "503", "504"})
AMPLE_BUDGET = {"retry_budget_min_per_second": 1000}


def status_of(c: Client) -> int:
    return c.response().status


# == retries and their backoff =====================================================================


def test_refused_connects_back_off_with_full_jitter_until_retries_run_out() -> None:
    dp = DataPath(
        max_retries=3, retry_backoff=0.1, retry_max_backoff=0.15, circuit_breaker_threshold=0
    )
    c, ex = dp.begin()
    for retry in (1, 2, 3):
        dp.pool.refuse()
        assert ex.phase is BACKOFF
        due = dp.backoff(ex).when
        delay = due - dp.loop.now
        assert 0.0 < delay <= min(0.15, 0.1 * 2 ** (retry - 1))
        dp.advance(delay / 2)
        assert ex.phase is BACKOFF and dp.pool.connects == retry  # not early
        dp.loop.advance_to(due)
        assert phase(ex) is CONNECTING
        assert dp.pool.connects == retry + 1
    dp.pool.refuse()

    assert status_of(c) == 502
    rec = dp.record
    assert (rec.attempts, rec.flags) == (4, ["URX", "UF"])
    assert rec.upstream_errors == ["connection_error"] * 4
    assert value(dp.metrics.registry, "sidecar_retries_total") == 3


def test_full_jitter_spreads_each_retry_over_its_whole_ceiling() -> None:
    base, cap = 0.05, 0.1
    dp = DataPath(
        max_retries=3,
        retry_backoff=base,
        retry_max_backoff=cap,
        circuit_breaker_threshold=0,
        **AMPLE_BUDGET,
    )
    delays: list[tuple[int, float]] = []
    for _ in range(30):
        _, ex = dp.begin()
        for retry in (1, 2, 3):
            dp.pool.refuse()
            timer = dp.backoff(ex)
            delays.append((retry, timer.when - dp.loop.now))
            dp.loop.advance_to(timer.when)
        dp.pool.refuse()
    for retry, delay in delays:
        assert 0.0 <= delay <= min(cap, base * 2 ** (retry - 1)), (retry, delay)
    spread = [delay for _, delay in delays]
    assert max(spread) - min(spread) > 0.01  # not a fixed backoff
    # Full jitter draws from the whole interval, not its upper half (equal jitter): all 90 in
    # the upper half has probability 2**-90.
    assert any(delay < min(cap, base * 2 ** (r - 1)) / 2 for r, delay in delays)


def test_a_post_whose_connect_was_refused_is_retried_and_reaches_the_app_once() -> None:
    dp = DataPath(retry_backoff=0.0)  # the retry goes at once
    c, ex = dp.begin(request("POST", "/pay", b"payment=7"))
    dp.pool.refuse()  # nothing of the request left the proxy: any method may go again
    assert ex.phase is CONNECTING
    app = dp.pool.accept()
    assert app.received().endswith(b"\r\n\r\npayment=7")
    app.send(response(201, b"paid"))
    assert c.response().body == b"paid"
    assert dp.record.attempts == 2


def test_retry_after_seconds_is_the_backoff_exactly() -> None:
    dp = DataPath(attempts_header=True, retry_backoff=0.001, retry_max_backoff=0.01)
    first = dp.pool.add_idle()
    c, ex = dp.begin()
    first.send(response(503, headers="Retry-After: 1\r\n"))
    assert ex.phase is BACKOFF and first.transport.closed
    due = dp.backoff(ex).when
    assert due == dp.loop.now + 1.0  # the app's wait wins over the tiny configured backoff

    dp.loop.advance_to(due - NOT_YET)
    assert ex.phase is BACKOFF and dp.pool.connects == 0
    dp.loop.advance_to(due)
    assert phase(ex) is CONNECTING
    dp.pool.accept().send(response(body=b"now"))

    out = c.response()
    assert (out.status, out.body, out.header("X-Sidecar-Attempts")) == (200, b"now", "2")
    assert dp.record.upstream_errors == ["5xx_error"]


def test_retry_after_http_date_on_429_is_honoured() -> None:
    dp = DataPath(retry_on=RETRY_ON_ALL)
    app = dp.pool.add_idle()
    _, ex = dp.begin()
    # An HTTP-date two seconds ahead: with its one-second resolution, a wait in (1, 2] s.
    when = formatdate(time.time() + 2, usegmt=True)
    app.send(response(429, headers=f"Retry-After: {when}\r\n"))
    delay = dp.backoff(ex).when - dp.loop.now
    assert 0.9 < delay <= 2.0, delay


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(503, "2"), (429, "5"), (503, "1")],
    ids=["503-past-the-deadline", "429-past-the-deadline", "503-ending-at-the-deadline"],
)
def test_retry_after_the_deadline_cannot_honour_returns_the_apps_answer_at_once(
    status: int, retry_after: str
) -> None:
    # request_timeout 1 s: a wait of 1 s would start the retry with no time left to answer.
    dp = DataPath(request_timeout=1.0, retry_on=RETRY_ON_ALL)
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(response(status, b"app says no", f"Retry-After: {retry_after}\r\n"))

    out = c.response()
    assert (out.status, out.body, out.header("Retry-After")) == (
        status,
        b"app says no",
        retry_after,
    )
    assert ex.phase is DONE and dp.loop.timers_for(ex._after_backoff) == []
    assert dp.record.attempts == 1


def test_a_backoff_that_would_outlast_the_deadline_is_not_waited_out() -> None:
    # A backoff drawn from [0, 300 s] is at least the 0.3 s left with probability 0.999: the
    # retry is then refused and the app's answer returned at once. Whatever the draw, no retry
    # is scheduled to start at or past the deadline.
    refused = 0
    for _ in range(20):
        dp = DataPath(request_timeout=0.3, retry_backoff=300.0, retry_max_backoff=300.0)
        app = dp.pool.add_idle()
        c, ex = dp.begin()
        deadline = dp.loop.now + 0.3
        app.send(response(503, b"app says 503"))
        if ex.phase is DONE:
            refused += 1
            assert c.response().body == b"app says 503"
        else:
            assert dp.backoff(ex).when < deadline
    assert refused > 0


def test_budget_refusal_is_flagged_and_counted() -> None:
    dp = DataPath(retry_budget_ratio=0.0, retry_budget_min_per_second=0)
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(response(503))
    assert status_of(c) == 503
    assert (dp.record.flags, dp.record.retries_refused) == (["RBX"], 1)
    assert value(dp.metrics.registry, "sidecar_retries_budget_exhausted_total") == 1


def test_failure_that_opens_the_breaker_is_not_retried() -> None:
    dp = DataPath(circuit_breaker_threshold=1, max_retries=3)
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(response(503, b"app says 503"))
    assert c.response().body == b"app says 503"  # the app's answer, not a breaker refusal
    assert dp.ctx.breaker.state is BreakerState.OPEN
    assert ex.phase is DONE and dp.record.attempts == 1 and "UH" not in dp.record.flags


def test_breaker_opened_by_others_during_a_backoff_reports_the_failure_retried_for() -> None:
    dp = DataPath(circuit_breaker_threshold=2, retry_backoff=1.0, retry_max_backoff=1.0)
    c, ex = dp.begin()
    app = dp.app_of(c)
    other = dp.client(peer="198.51.100.1")
    other.send(request(rid="other"))
    ex_other = other.exchange
    dp.app_of(other).send(response(503))  # failure 1: the exchange of `other` backs off
    assert ex_other.phase is BACKOFF
    app.send(response(503))  # failure 2 opens the breaker; no retry for this one
    assert status_of(c) == 503 and dp.ctx.breaker.state is BreakerState.OPEN

    dp.loop.advance_to(dp.backoff(ex_other).when)

    out = other.response()
    assert out.status == 503 and out.body == b"503 Service Unavailable: the app answered 503\n"
    assert "UH" not in dp.records[-1].flags  # the request did reach the app
    assert phase(ex_other) is DONE and ex.phase is DONE


# == replay safety: a POST without an Idempotency-Key reaches the app once ========================
#
# The seed replayed every request from a buffered body, so a POST whose answer was lost (a reset,
# a timeout) ran twice in the app: a double charge, a duplicate order. Here every retry condition
# is on and retries are plentiful, so only the proxy knowing the request is not safe to send
# again can hold a retry back.

FRAMINGS = {
    "content-length": request("POST", "/charge", b'{"charge": 100}'),
    "chunked": request("POST", "/charge", headers="Transfer-Encoding: chunked\r\n")
    + chunked(b'{"charge": 100}'),
}


def fail_by_resetting(dp: DataPath, c: Client) -> None:
    dp.app_of(c).transport.peer_reset()


def fail_by_503(dp: DataPath, c: Client) -> None:
    dp.app_of(c).send(response(503, b"app says 503"))


def fail_by_hanging(dp: DataPath, c: Client) -> None:
    dp.advance(2.0 + TICKED)  # request_timeout, or the per-try timeout before it


def fail_mid_body(dp: DataPath, c: Client) -> None:
    # The 200 head and the first bytes are on their way to the client when the app resets; the
    # status can no longer change, so the client's connection is cut short of the 1000 bytes.
    app = dp.app_of(c)
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    app.transport.peer_reset()


Fail = Callable[[DataPath, Client], None]
FAILURES: dict[str, tuple[Fail, int, dict[str, float]]] = {
    "503": (fail_by_503, 503, {}),
    "reset-before-head": (fail_by_resetting, 502, {}),
    "hang": (fail_by_hanging, 504, {}),
    "hang-per-try-timeout": (fail_by_hanging, 504, {"per_try_timeout": 0.5}),
    "reset-mid-body": (fail_mid_body, 200, {}),
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("failure", list(FAILURES))
def test_post_without_idempotency_key_is_never_sent_twice(failure: str, framing: str) -> None:
    fail, status, settings = FAILURES[failure]
    dp = DataPath(
        request_timeout=2.0,
        retry_on=RETRY_ON_ALL,
        circuit_breaker_threshold=0,
        **AMPLE_BUDGET,
        **settings,
    )
    c, ex = dp.begin(FRAMINGS[framing])
    app = dp.pool.accept()
    assert app.received().endswith(
        b'{"charge": 100}' if framing == "content-length" else b"0\r\n\r\n"
    )

    fail(dp, c)
    dp.advance(10.0)  # far past any backoff: a retry, if one were wrongly made, is made by now

    assert ex.phase is DONE and dp.record.attempts == 1
    assert dp.pool.connects == 1 and app.received() == b""
    out = c.response()
    assert out.status == status
    assert out.complete == (failure != "reset-mid-body")  # a cut body stays cut
    if failure == "503":
        assert out.body == b"app says 503"  # the app's answer, not one of ours


def test_post_with_an_idempotency_key_is_replayed_byte_for_byte() -> None:
    dp = DataPath(attempts_header=True, retry_backoff=0.0)
    body = b"order=42&" + bytes(range(256)) * 4
    raw = request("POST", "/orders", headers="Idempotency-Key: k-42\r\n")
    c, _ = dp.begin(
        raw[:-2] + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body[:600], body[600:])
    )
    sent = []
    for answer in (response(503), response(503), response(body=b"done")):
        app = dp.pool.accept()
        sent.append(app.received())
        app.send(answer)
    out = c.response()
    assert (out.status, out.header("X-Sidecar-Attempts")) == (200, "3")
    assert sent[0] == sent[1] == sent[2]
    assert sent[0].endswith(chunked(body[:600], body[600:]))


def test_a_body_too_large_to_keep_is_streamed_once_and_never_retried() -> None:
    dp = DataPath(retry_on=RETRY_ON_ALL, retry_buffer_limit=1024, **AMPLE_BUDGET)
    body = bytes(range(256)) * 16  # 4 KiB, four times what is kept for a replay
    c, ex = dp.begin(request("POST", "/upload", body, headers="Idempotency-Key: k-big\r\n"))
    app = dp.pool.accept()
    assert app.received().endswith(body)
    app.send(response(503, b"app says 503"))
    dp.advance(10.0)
    assert c.response().body == b"app says 503"
    assert ex.phase is DONE and dp.pool.connects == 1


def test_no_retry_is_made_for_a_client_that_left_during_the_backoff() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(response(503, headers="Retry-After: 1\r\n"))
    timer = dp.backoff(ex)

    c.transport.peer_reset()
    dp.advance(5.0)

    assert timer.cancelled() and dp.pool.connects == 0 and dp.pool.idle == []
    rec = dp.record
    assert (rec.status, rec.flags, rec.attempts) == (499, ["DC"], 1)


# == the request deadline and per-try timeouts =====================================================


@pytest.mark.parametrize(
    "app_sends", [b"", b"HTTP/1.1 200 OK\r\nContent-Le"], ids=["silent", "half-a-head"]
)
def test_request_deadline_is_504_at_the_first_tick_after_it(app_sends: bytes) -> None:
    dp = DataPath(request_timeout=2.0, max_retries=0)
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    deadline = dp.loop.now + 2.0
    app.send(app_sends)

    dp.loop.advance_to(deadline - NOT_YET)
    assert ex.phase is AWAITING_HEAD and c.received() == b""
    dp.loop.advance_to(deadline + TICKED)

    out = c.response()
    assert (
        out.status == 504 and out.body == b"504 Gateway Timeout: the app did not answer in time\n"
    )
    assert (dp.record.flags, dp.record.upstream_errors) == (["UT"], ["timeout"])
    assert app.transport.closed and app.leg not in dp.pool.idle


def test_request_deadline_counts_from_the_end_of_the_upload() -> None:
    # A slow upload is the client's time (client_body_timeout), not the app's.
    dp = DataPath(request_timeout=2.0, max_retries=0)
    app = dp.pool.add_idle()
    c, ex = dp.begin(request("PUT", "/f", b"abcdef")[:-3])
    dp.advance(3.0)  # longer than request_timeout, and the body is still coming
    assert ex.phase is AWAITING_HEAD and c.received() == b""
    c.send(b"def")
    end = dp.loop.now

    dp.loop.advance_to(end + 2.0 - NOT_YET)
    assert c.received() == b""
    dp.loop.advance_to(end + 2.0 + TICKED)
    assert status_of(c) == 504
    assert app.received().endswith(b"abcdef")


def test_per_try_timeouts_retry_within_the_request_deadline() -> None:
    dp = DataPath(per_try_timeout=0.2, request_timeout=1.0, retry_backoff=0.0)
    c, ex = dp.begin()
    for _ in range(2):
        app = dp.pool.accept()
        cut = dp.loop.now + 0.2
        dp.loop.advance_to(cut - NOT_YET)
        assert not app.transport.closed
        dp.loop.advance_to(cut)
        assert app.transport.closed and ex.phase is CONNECTING  # cut, and tried again at once
    dp.pool.accept().send(response())

    assert status_of(c) == 200
    assert (dp.record.attempts, dp.record.upstream_errors) == (3, ["timeout", "timeout"])


def test_per_try_timeouts_stop_at_the_request_deadline() -> None:
    dp = DataPath(
        per_try_timeout=0.2,
        request_timeout=0.5,
        max_retries=10,
        retry_backoff=0.0,
        circuit_breaker_threshold=0,
        **AMPLE_BUDGET,
    )
    c, _ = dp.begin()
    deadline = dp.loop.now + 0.5
    dp.pool.accept()
    for _ in range(2):  # attempts at 0, 0.2 and 0.4 s
        dp.advance(0.2)
        dp.pool.accept()
    dp.loop.advance_to(deadline + TICKED)

    assert status_of(c) == 504
    assert dp.pool.connects == 3 and dp.pool.wanted() == []  # no fourth past the deadline
    assert dp.record.upstream_errors == ["timeout"] * 3 and dp.record.flags == ["UT"]


def test_per_try_timeout_while_connecting_gives_up_that_connect() -> None:
    dp = DataPath(per_try_timeout=0.2, retry_backoff=0.0)
    c, ex = dp.begin()
    (first,) = dp.pool.pending
    dp.advance(0.2)
    assert first.task.cancelled() and ex.phase is CONNECTING and len(dp.pool.wanted()) == 1

    # A pool that could not stop the first connect in time hands over its connection late:
    # nobody wants it, so it goes to the pool for the next request.
    late = dp.pool.accept(late=True)
    assert dp.pool.released == [late.leg] and ex.phase is CONNECTING
    dp.pool.accept().send(response())
    assert status_of(c) == 200 and dp.record.attempts == 2


# == the stall limit on a response body ============================================================

HEAD_AND_SOME = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10


def test_body_stalled_for_request_timeout_is_cut() -> None:
    # The head is out, so the status cannot change: the client's connection is closed short
    # of the promised length, which is how it learns the body is truncated.
    dp = DataPath(request_timeout=0.5)
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    dp.advance(0.2)
    app.send(HEAD_AND_SOME)
    last_byte = dp.loop.now

    dp.loop.advance_to(last_byte + 0.5 - NOT_YET)
    assert ex.phase is STREAMING and not c.closed
    dp.loop.advance_to(last_byte + 0.5 + TICKED)

    out = c.response()
    assert (out.status, out.body, out.complete) == (200, b"x" * 10, False)
    assert c.closed and app.transport.closed
    assert (dp.record.flags, dp.record.upstream_errors) == (["UT"], ["timeout"])


def test_the_stall_clock_does_not_run_while_the_client_is_not_reading() -> None:
    dp = DataPath(request_timeout=0.5)
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(HEAD_AND_SOME)
    c.conn.pause_writing()  # the client reads slower than the app sends
    assert not app.transport.reading

    dp.advance(3.0)
    assert ex.phase is STREAMING and not c.closed  # the client's slowness, not the app's

    c.conn.resume_writing()
    assert app.transport.reading
    dp.advance(TICKED)  # a tick or two before the app's next read arrives
    assert ex.phase is STREAMING and not c.closed
    app.send(b"y" * 90)
    assert c.response().body == b"x" * 10 + b"y" * 90


def test_a_slow_client_resuming_gives_the_app_request_timeout_to_go_on() -> None:
    dp = DataPath(request_timeout=0.5)
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(HEAD_AND_SOME)
    c.conn.pause_writing()
    dp.advance(3.0)
    c.conn.resume_writing()
    resumed = dp.loop.now

    dp.loop.advance_to(resumed + 0.5 - NOT_YET)
    assert not c.closed
    dp.loop.advance_to(resumed + 0.5 + TICKED)
    assert c.closed and dp.record.flags == ["UT"]  # from here on the silence is the app's


# == the circuit breaker's timing ==================================================================

BREAKER = {
    "circuit_breaker_threshold": 3,
    "circuit_breaker_timeout": 0.5,
    "circuit_breaker_half_open_requests": 1,
    "max_retries": 0,
}
STATE = "sidecar_circuit_breaker_state"


def open_breaker(dp: DataPath) -> float:
    """Three failing requests, each reaching the app; returns when the breaker opened."""
    for i in range(3):
        c = dp.client()
        c.send(request(target=f"/fail/{i}"))
        dp.app_of(c).send(response(503, b"app says 503"))
        assert c.response().body == b"app says 503"
    assert value(dp.metrics.registry, STATE) == 1
    return dp.loop.now


def send_probe(dp: DataPath, opened: float) -> Client:
    """The open period runs out; the next request is the probe."""
    dp.loop.advance_to(opened + 0.5)
    probe = dp.client()
    probe.send(request(target="/probe"))
    return probe


def assert_refused_without_the_app(dp: DataPath) -> None:
    connects, idle = dp.pool.connects, list(dp.pool.idle)
    c = dp.client()
    c.send(request(target="/refused"))
    out = c.response()
    retry_after = out.header("Retry-After")
    assert out.status == 503 and out.body == b"503 Service Unavailable: circuit breaker open\n"
    assert retry_after is not None and int(retry_after) >= 1
    assert (dp.pool.connects, dp.pool.idle) == (connects, idle)  # the app never saw it
    assert dp.records[-1].flags == ["UH"]
    assert dp.records[-1].upstream_errors == ["circuit_open"]


def test_open_breaker_refuses_until_its_open_period_ends_then_a_probe_closes_it() -> None:
    dp = DataPath(**BREAKER)
    opened = open_breaker(dp)
    dp.loop.advance_to(opened + 0.5 - NOT_YET)
    assert_refused_without_the_app(dp)
    probe = send_probe(dp, opened)
    app = dp.app_of(probe)
    assert b"GET /probe " in app.received()
    assert value(dp.metrics.registry, STATE) == 2  # half-open
    assert_refused_without_the_app(dp)  # one probe at a time
    app.send(response())
    assert probe.response().status == 200
    assert value(dp.metrics.registry, STATE) == 0

    registry = dp.metrics.registry
    assert value(registry, "sidecar_requests_rejected_total", reason="circuit_open") == 2
    assert value(registry, "sidecar_circuit_breaker_transitions_total", to="open") == 1


def test_failed_probe_reopens_the_breaker_for_a_fresh_period() -> None:
    dp = DataPath(**BREAKER)
    probe = send_probe(dp, open_breaker(dp))
    dp.app_of(probe).send(response(503, b"app says 503"))

    assert probe.response().body == b"app says 503"
    assert value(dp.metrics.registry, STATE) == 1
    dp.loop.advance_to(dp.loop.now + 0.5 - NOT_YET)
    assert_refused_without_the_app(dp)
    registry = dp.metrics.registry
    assert value(registry, "sidecar_circuit_breaker_transitions_total", to="open") == 2
    assert value(registry, "sidecar_circuit_breaker_transitions_total", to="half_open") == 1


def test_probe_abandoned_by_its_client_frees_the_probe_slot() -> None:
    dp = DataPath(**BREAKER)
    probe = send_probe(dp, open_breaker(dp))
    dp.app_of(probe)
    probe.transport.peer_reset()
    assert dp.records[-1].status == 499

    # The hang-up says nothing about the app: no verdict, and the probe's place is free again.
    c = dp.client()
    c.send(request(target="/next-probe"))
    dp.app_of(c).send(response())
    assert c.response().status == 200
    assert value(dp.metrics.registry, STATE) == 0


@pytest.mark.parametrize("how", ["reset", "close"])
def test_client_hang_ups_are_499_and_never_trip_the_breaker(how: str) -> None:
    dp = DataPath(circuit_breaker_threshold=1, max_retries=0)
    for _ in range(3):
        c, _ = dp.begin()
        app = dp.pool.accept()
        if how == "reset":
            c.transport.peer_reset()
        else:
            c.transport.peer_eof()
        assert app.transport.closed and app.leg not in dp.pool.idle  # the app's work is cut
    assert [(r.status, r.flags, r.upstream_errors) for r in dp.records] == [(499, ["DC"], [])] * 3
    assert dp.ctx.breaker.state is BreakerState.CLOSED
    assert value(dp.metrics.registry, "sidecar_circuit_breaker_transitions_total", to="open") == 0
