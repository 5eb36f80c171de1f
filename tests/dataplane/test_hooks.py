"""The hooks inside the exchange, on the fake loop: the timeout at its exact boundary, what the
exchange holds and releases while an async hook runs, and every way the peers can move while it
does. What a hook may change, and the hooks over real sockets, are in
tests/integration/test_hooks.py."""

from __future__ import annotations

from support.dataplane import DataPath, phase, request, response
from support.fakes import Gate
from support.scrape import value

from sidecar_proxy.hooks import AppResponse, Request
from sidecar_proxy.hooks.load import Hooks
from sidecar_proxy.http.phase import (
    AWAITING_HEAD,
    DONE,
    REQUEST_HOOK,
    RESPONSE_HOOK,
    STREAMING,
)
from sidecar_proxy.observe import record as R

TIMEOUT = 0.5
HEAD_10 = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"


class Hooked:
    """Hooks that record their calls; the async ones wait on a gate each, kept in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gates: list[Gate] = []
        self.cancelled: list[str] = []

    async def _wait(self, what: str) -> object:
        gate = Gate()
        self.gates.append(gate)
        try:
            return await gate
        except BaseException:
            self.cancelled.append(what)
            raise

    async def waiting_request(self, request: Request) -> object:
        self.calls.append("on_request")
        return await self._wait("on_request")

    async def waiting_response(self, request: Request, response: AppResponse) -> None:
        self.calls.append("on_response")
        await self._wait("on_response")
        response.headers["X-Hooked"] = "yes"

    def counting_request(self, request: Request) -> None:
        self.calls.append("on_request")

    def counting_response(self, request: Request, response: AppResponse) -> None:
        self.calls.append(f"on_response {response.status}")

    def async_request(self, **settings: object) -> DataPath:
        hooks = Hooks("test", "test", self.waiting_request, None)
        return DataPath.hooked(hooks, hook_timeout=TIMEOUT, **settings)

    def async_response(self, **settings: object) -> DataPath:
        hooks = Hooks("test", "test", None, self.waiting_response)
        return DataPath.hooked(hooks, hook_timeout=TIMEOUT, **settings)


def hook_timers(dp: DataPath) -> list[object]:
    """The HOOK_TIMEOUT timers still armed."""
    return [t for t in dp.loop.timers() if getattr(t.callback, "__name__", "") == "_expire"]


def hook_errors(dp: DataPath, hook: str) -> float:
    return value(dp.metrics.registry, "sidecar_hook_errors_total", hook=hook)


# --- HOOK_TIMEOUT -----------------------------------------------------------------------------


def test_an_async_on_request_gets_exactly_hook_timeout() -> None:
    hooked = Hooked()
    dp = hooked.async_request()
    c, ex = dp.begin()
    assert len(hook_timers(dp)) == 1
    dp.advance(TIMEOUT - 0.001)
    assert phase(ex) is REQUEST_HOOK and c.received() == b""
    dp.advance(0.001)
    got = c.response()
    assert got.status == 504 and b"the on_request hook did not finish in time" in got.body
    assert phase(ex) is DONE and dp.pool.connects == 0
    assert hooked.cancelled == ["on_request"]  # the hook was told, as asyncio tells it
    assert dp.record.flags == [R.HOOK_FAILED] and hook_errors(dp, "on_request") == 1


def test_an_async_on_response_past_the_timeout_lets_the_response_go_unchanged() -> None:
    hooked = Hooked()
    dp = hooked.async_response()
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(response(body=b"unchanged"))
    dp.advance(TIMEOUT - 0.001)
    assert phase(ex) is RESPONSE_HOOK and c.received() == b""
    dp.advance(0.001)
    got = c.response()
    assert (got.status, got.body, got.header("X-Hooked")) == (200, b"unchanged", None)
    assert phase(ex) is DONE and hook_errors(dp, "on_response") == 1
    assert dp.record.flags == [R.HOOK_FAILED]


def test_a_hook_that_answers_in_time_disarms_its_timer() -> None:
    hooked = Hooked()
    dp = hooked.async_request()
    dp.pool.add_idle()
    _, ex = dp.begin()
    dp.advance(TIMEOUT / 2)
    hooked.gates[0].open()
    dp.loop.run_ready()
    assert phase(ex) is AWAITING_HEAD
    assert not hook_timers(dp)
    dp.advance(TIMEOUT)  # where the timer would have fired
    assert phase(ex) is AWAITING_HEAD and hook_errors(dp, "on_request") == 0


# --- what the exchange holds while an async hook runs ------------------------------------------


def test_a_request_body_waits_for_on_request_with_the_client_paused() -> None:
    hooked = Hooked()
    dp = hooked.async_request()
    app = dp.pool.add_idle()
    c, ex = dp.begin(request("PUT", "/f", b"0123456789")[:-6])
    assert phase(ex) is REQUEST_HOOK and not c.transport.reading  # one read held, no more
    hooked.gates[0].open()
    dp.loop.run_ready()
    assert c.transport.reading and app.received().endswith(b"\r\n\r\n0123")
    c.send(b"456789")
    assert app.received() == b"456789"


def test_a_response_that_ends_during_on_response_is_held_whole() -> None:
    hooked = Hooked()
    dp = hooked.async_response()
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(HEAD_10 + b"abc")
    assert phase(ex) is RESPONSE_HOOK and not app.transport.reading  # the app is paused
    app.send(b"defghij")  # what was already on its way still arrives, and is held
    assert c.received() == b""
    assert dp.pool.released == [app.leg]  # read whole: the app leg went back at once
    hooked.gates[0].open()
    dp.loop.run_ready()
    got = c.response()
    assert (got.body, got.header("X-Hooked"), got.complete) == (b"abcdefghij", "yes", True)
    assert phase(ex) is DONE and dp.record.flags == []


def test_the_rest_of_the_body_follows_the_head_after_on_response() -> None:
    hooked = Hooked()
    dp = hooked.async_response()
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(HEAD_10 + b"abc")
    # A client that drains meanwhile must not wake the app the hook keeps paused.
    c.conn.pause_writing()
    c.conn.resume_writing()
    assert not app.transport.reading
    hooked.gates[0].open()
    dp.loop.run_ready()
    assert phase(ex) is STREAMING and app.transport.reading
    app.send(b"defghij")
    got = c.response()
    assert got.body == b"abcdefghij" and got.header("X-Hooked") == "yes"


def test_a_close_delimited_body_that_ends_during_on_response() -> None:
    hooked = Hooked()
    dp = hooked.async_response()
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    app.transport.peer_eof()
    assert phase(ex) is RESPONSE_HOOK
    hooked.gates[0].open()
    dp.loop.run_ready()
    assert c.response().body == b"until the end" and phase(ex) is DONE
    assert app.leg not in dp.pool.released  # its body ended with the connection


# --- the peers move while a hook runs ---------------------------------------------------------


def test_the_app_lost_during_on_response_is_a_clean_502() -> None:
    hooked = Hooked()
    dp = hooked.async_response()
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(HEAD_10 + b"abc")
    app.transport.peer_reset()
    got = c.response()
    assert got.status == 502 and got.complete  # the client saw nothing of the 200 before
    assert phase(ex) is DONE and hooked.cancelled == ["on_response"]
    assert dp.record.flags == [R.UPSTREAM_RESET]
    assert dp.record.upstream_errors == [R.ERR_RESET]
    assert hook_errors(dp, "on_response") == 0


def test_a_client_gone_during_on_request_cancels_the_hook() -> None:
    hooked = Hooked()
    dp = hooked.async_request()
    c, ex = dp.begin()
    c.transport.peer_reset()
    dp.loop.run_ready()
    assert phase(ex) is DONE and hooked.cancelled == ["on_request"]
    assert (dp.record.status, dp.record.flags) == (499, [R.DOWNSTREAM_DISCONNECT])
    assert dp.pool.connects == 0 and hook_errors(dp, "on_request") == 0
    assert not hook_timers(dp)  # its timer went with it: no late 504, no error counted
    dp.advance(TIMEOUT)
    assert hook_errors(dp, "on_request") == 0


def test_a_request_refused_while_on_request_runs() -> None:
    hooked = Hooked()
    dp = hooked.async_request(max_request_body_bytes=5)
    c, ex = dp.begin(
        b"PUT /f HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    assert phase(ex) is REQUEST_HOOK
    c.send(b"6\r\ndefghi\r\n")  # over the limit: refused while the hook still runs
    assert c.response().status == 413 and phase(ex) is DONE
    dp.loop.run_ready()
    assert hooked.cancelled == ["on_request"] and dp.pool.connects == 0


# --- when the hooks run -----------------------------------------------------------------------


def test_a_retry_runs_neither_hook_again() -> None:
    hooked = Hooked()
    hooks = Hooks("test", "test", hooked.counting_request, hooked.counting_response)
    dp = DataPath.hooked(hooks, retry_backoff=0.0)
    first = dp.pool.add_idle()
    c, _ = dp.begin()
    dp.pool.add_idle()
    first.send(response(503))
    dp.loop.run_ready()
    (second,) = [a for a in dp.pool.apps.values() if a is not first]
    second.send(response(body=b"second"))
    assert c.response().body == b"second"
    assert hooked.calls == ["on_request", "on_response 200"]


def test_an_interim_response_is_not_the_final_head() -> None:
    hooked = Hooked()
    hooks = Hooks("test", "test", None, hooked.counting_response)
    dp = DataPath.hooked(hooks)
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response())
    assert [r.status for r in c.responses()] == [103, 200]
    assert hooked.calls == ["on_response 200"]
