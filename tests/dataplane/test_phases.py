"""Every move of the exchange's phase table, reached through the events that cause it, and every
move the table leaves out refused.

Each scenario below brings a fresh exchange to a phase through real events (bytes from the
client, bytes or a connect result from the app, the clock) and returns the event that moves it
on. The phase table is checked against the scenarios, so a move added to the table without a
test here fails :func:`test_every_move_of_the_table_has_a_scenario`.

The two hook phases are reached with async hooks that wait on a :class:`~support.fakes.Gate`
until the scenario's event opens it.

INTERIM is reached with a :class:`~support.fakes.ScriptedLeg`: the HTTP/1.1 app leg reports a
1xx and its end in the same parser run (a 1xx has no body), so with it INTERIM never outlasts one
read from the app and nothing else can happen in it. What the HTTP/1.1 leg does with 1xx is
tested in test_messages.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from support.dataplane import TICKED, Client, DataPath, request, response
from support.fakes import Gate, ScriptedLeg

from sidecar_proxy.hooks import AppResponse, Request, Response
from sidecar_proxy.hooks.load import Hooks
from sidecar_proxy.http.exchange import Exchange
from sidecar_proxy.http.phase import (
    ALLOWED,
    AWAITING_HEAD,
    BACKOFF,
    CONNECTING,
    DONE,
    INTERIM,
    NEXT,
    QUEUED,
    REQUEST_HOOK,
    RESPONSE_HOOK,
    STREAMING,
    TUNNEL,
    WAITING_FOR_APP,
    IllegalTransition,
    Phase,
)

Event = Callable[[], object]
Scenario = Callable[[], tuple[Exchange, Event]]

SCENARIOS: dict[tuple[Phase, Phase], Scenario] = {}

UPGRADE = request(headers="Connection: upgrade\r\nUpgrade: websocket\r\n")
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"


def scenario(old: Phase, new: Phase) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[(old, new)] = fn
        return fn

    return register


def backing_off(dp: DataPath) -> tuple[Client, Exchange]:
    """A refused connect, to be retried after a backoff the test waits out."""
    c, ex = dp.begin()
    dp.pool.refuse()
    return c, ex


def pipelined(dp: DataPath) -> tuple[Client, Exchange, Exchange]:
    c = dp.client()
    c.send(request(rid="first") + request(rid="second"))
    first, second = c.conn.queue
    return c, first, second


class Waiting:
    """Async hooks that wait for the test: each call's gate, in order."""

    def __init__(self) -> None:
        self.gates: list[Gate] = []

    async def on_request(self, request: Request) -> object:
        return await self._gate()

    async def on_response(self, request: Request, response: AppResponse) -> object:
        return await self._gate()

    async def _gate(self) -> object:
        gate = Gate()
        self.gates.append(gate)
        return await gate

    def request_hooks(self) -> Hooks:
        return Hooks("test", "test", self.on_request, None)

    def response_hooks(self) -> Hooks:
        return Hooks("test", "test", None, self.on_response)


def opened(dp: DataPath, gate: Gate, value: object = None) -> Event:
    """The event: the awaited hook goes on with ``value``."""

    def event() -> None:
        gate.open(value)
        dp.loop.run_ready()

    return event


def hooking_request(waiting: Waiting, warm: bool = False) -> tuple[DataPath, Client, Exchange]:
    dp = DataPath.hooked(waiting.request_hooks())
    if warm:
        dp.pool.add_idle()
    c, ex = dp.begin()
    dp.loop.run_ready()  # the hook's task takes its first step, to the gate
    return dp, c, ex


def hooking_response(waiting: Waiting) -> tuple[DataPath, Client, Exchange]:
    """The final head came, but only 3 of its 10 body bytes: the body goes on after the hook."""
    dp = DataPath.hooked(waiting.response_hooks())
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    return dp, c, ex


def scripted(dp: DataPath, leg: ScriptedLeg) -> tuple[Client, Exchange]:
    dp.pool.idle.append(leg)
    return dp.begin()


# == from QUEUED ===================================================================================


@scenario(QUEUED, CONNECTING)
def _queued_connecting() -> tuple[Exchange, Event]:
    # The first response closes its app connection, so the second request needs a new one.
    dp = DataPath()
    _, _, second = pipelined(dp)
    app = dp.pool.accept()
    return second, lambda: app.send(response(headers="Connection: close\r\n"))


@scenario(QUEUED, AWAITING_HEAD)
def _queued_awaiting_head() -> tuple[Exchange, Event]:
    # The first response leaves its app connection in the pool; the second request takes it.
    dp = DataPath()
    _, _, second = pipelined(dp)
    app = dp.pool.accept()
    return second, lambda: app.send(response())


@scenario(QUEUED, REQUEST_HOOK)
def _queued_request_hook() -> tuple[Exchange, Event]:
    # The first request's hook lets it through; its response starts the second, whose hook
    # then waits.
    waiting = Waiting()
    dp = DataPath.hooked(waiting.request_hooks())
    _, _, second = pipelined(dp)
    opened(dp, waiting.gates[0])()
    app = dp.pool.accept()
    return second, lambda: app.send(response())


@scenario(QUEUED, DONE)
def _queued_done() -> tuple[Exchange, Event]:
    dp = DataPath()
    c, _, second = pipelined(dp)
    return second, c.transport.peer_reset


# == from REQUEST_HOOK =============================================================================


@scenario(REQUEST_HOOK, CONNECTING)
def _request_hook_connecting() -> tuple[Exchange, Event]:
    waiting = Waiting()
    dp, _, ex = hooking_request(waiting)
    return ex, opened(dp, waiting.gates[0])


@scenario(REQUEST_HOOK, AWAITING_HEAD)
def _request_hook_awaiting_head() -> tuple[Exchange, Event]:
    waiting = Waiting()
    dp, _, ex = hooking_request(waiting, warm=True)
    return ex, opened(dp, waiting.gates[0])


@scenario(REQUEST_HOOK, DONE)
def _request_hook_done() -> tuple[Exchange, Event]:
    waiting = Waiting()
    dp, _, ex = hooking_request(waiting)
    return ex, opened(dp, waiting.gates[0], Response(403))  # answered by the hook


# == from CONNECTING ===============================================================================


@scenario(CONNECTING, AWAITING_HEAD)
def _connecting_awaiting_head() -> tuple[Exchange, Event]:
    dp = DataPath()
    _, ex = dp.begin()
    return ex, dp.pool.accept


@scenario(CONNECTING, BACKOFF)
def _connecting_backoff() -> tuple[Exchange, Event]:
    dp = DataPath(retry_backoff=1.0, retry_max_backoff=1.0)
    _, ex = dp.begin()
    return ex, dp.pool.refuse


@scenario(CONNECTING, DONE)
def _connecting_done() -> tuple[Exchange, Event]:
    dp = DataPath(max_retries=0)
    _, ex = dp.begin()
    return ex, dp.pool.refuse


# == from AWAITING_HEAD ============================================================================


@scenario(AWAITING_HEAD, INTERIM)
def _awaiting_head_interim() -> tuple[Exchange, Event]:
    leg = ScriptedLeg()
    _, ex = scripted(DataPath(), leg)
    return ex, lambda: leg.head(103, (b"Link", b"</app.css>; rel=preload"))


@scenario(AWAITING_HEAD, STREAMING)
def _awaiting_head_streaming() -> tuple[Exchange, Event]:
    dp = DataPath()
    app = dp.pool.add_idle()
    _, ex = dp.begin()
    return ex, lambda: app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")


@scenario(AWAITING_HEAD, TUNNEL)
def _awaiting_head_tunnel() -> tuple[Exchange, Event]:
    dp = DataPath()
    app = dp.pool.add_idle()
    _, ex = dp.begin(UPGRADE)
    return ex, lambda: app.send(SWITCH)


@scenario(AWAITING_HEAD, BACKOFF)
def _awaiting_head_backoff() -> tuple[Exchange, Event]:
    dp = DataPath()
    app = dp.pool.add_idle()
    _, ex = dp.begin()
    return ex, lambda: app.send(response(503, headers="Retry-After: 1\r\n"))


@scenario(AWAITING_HEAD, DONE)
def _awaiting_head_done() -> tuple[Exchange, Event]:
    dp = DataPath(request_timeout=2.0)
    dp.pool.add_idle()
    _, ex = dp.begin()
    return ex, lambda: dp.advance(2.0 + TICKED)  # the deadline: 504


@scenario(AWAITING_HEAD, RESPONSE_HOOK)
def _awaiting_head_response_hook() -> tuple[Exchange, Event]:
    dp = DataPath.hooked(Waiting().response_hooks())
    app = dp.pool.add_idle()
    _, ex = dp.begin()
    return ex, lambda: app.send(response())


# == from RESPONSE_HOOK ============================================================================


@scenario(RESPONSE_HOOK, STREAMING)
def _response_hook_streaming() -> tuple[Exchange, Event]:
    waiting = Waiting()
    dp, _, ex = hooking_response(waiting)
    return ex, opened(dp, waiting.gates[0])


@scenario(RESPONSE_HOOK, DONE)
def _response_hook_done() -> tuple[Exchange, Event]:
    _, c, ex = hooking_response(Waiting())
    return ex, c.transport.peer_reset


# == from INTERIM ==================================================================================


def interim(dp: DataPath) -> tuple[Client, Exchange, ScriptedLeg]:
    leg = ScriptedLeg()
    c, ex = scripted(dp, leg)
    leg.head(100)
    return c, ex, leg


@scenario(INTERIM, AWAITING_HEAD)
def _interim_awaiting_head() -> tuple[Exchange, Event]:
    _, ex, leg = interim(DataPath())
    return ex, lambda: leg.events.response_end(leg, None)


@scenario(INTERIM, BACKOFF)
def _interim_backoff() -> tuple[Exchange, Event]:
    _, ex, leg = interim(DataPath(retry_backoff=1.0, retry_max_backoff=1.0))
    return ex, lambda: leg.events.app_lost(leg, None)


@scenario(INTERIM, DONE)
def _interim_done() -> tuple[Exchange, Event]:
    c, ex, _ = interim(DataPath())
    return ex, c.transport.peer_reset


# == from BACKOFF ==================================================================================


@scenario(BACKOFF, CONNECTING)
def _backoff_connecting() -> tuple[Exchange, Event]:
    dp = DataPath(retry_backoff=1.0, retry_max_backoff=1.0)
    _, ex = backing_off(dp)
    return ex, lambda: dp.loop.advance_to(dp.backoff(ex).when)


@scenario(BACKOFF, AWAITING_HEAD)
def _backoff_awaiting_head() -> tuple[Exchange, Event]:
    # A connection came back to the pool during the backoff: the retry takes it.
    dp = DataPath(retry_backoff=1.0, retry_max_backoff=1.0)
    _, ex = backing_off(dp)
    dp.pool.add_idle()
    return ex, lambda: dp.loop.advance_to(dp.backoff(ex).when)


@scenario(BACKOFF, DONE)
def _backoff_done() -> tuple[Exchange, Event]:
    dp = DataPath(retry_backoff=1.0, retry_max_backoff=1.0)
    c, ex = backing_off(dp)
    return ex, c.transport.peer_reset


# == from STREAMING and TUNNEL =====================================================================


@scenario(STREAMING, DONE)
def _streaming_done() -> tuple[Exchange, Event]:
    dp = DataPath()
    app = dp.pool.add_idle()
    _, ex = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    return ex, lambda: app.send(b"defghij")


@scenario(TUNNEL, DONE)
def _tunnel_done() -> tuple[Exchange, Event]:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, ex = dp.begin(UPGRADE)
    app.send(SWITCH)
    return ex, c.transport.peer_eof


# == the table =====================================================================================

LEGAL = sorted((old, new) for old, nexts in NEXT.items() for new in nexts)
ILLEGAL = sorted((old, new) for old in Phase for new in Phase if new not in NEXT[old])


def test_every_move_of_the_table_has_a_scenario() -> None:
    assert sorted(SCENARIOS) == LEGAL


def test_the_hook_phases_sit_where_their_hooks_run() -> None:
    # on_request: after the guards, before any attempt; a retry does not run it again.
    assert {p for p in Phase if REQUEST_HOOK in NEXT[p]} == {QUEUED}
    # on_response: on the final head only, before it is committed; nothing is retried after.
    assert {p for p in Phase if RESPONSE_HOOK in NEXT[p]} == {AWAITING_HEAD}
    assert NEXT[RESPONSE_HOOK] == frozenset({STREAMING, DONE})
    # Neither is the app's time: the request deadline runs only once the hook is done.
    assert not WAITING_FOR_APP >> REQUEST_HOOK & 1 and not WAITING_FOR_APP >> RESPONSE_HOOK & 1


def test_the_bit_masks_say_what_the_table_says() -> None:
    for old in Phase:
        assert {new for new in Phase if ALLOWED[old] >> new & 1} == NEXT[old]


@pytest.mark.parametrize(("old", "new"), LEGAL, ids=[f"{a.name}-{b.name}" for a, b in LEGAL])
def test_move_reached_through_real_events(old: Phase, new: Phase) -> None:
    ex, event = SCENARIOS[(old, new)]()
    assert ex.phase is old
    event()
    assert ex.phase is new


def reach(phase: Phase) -> Exchange:
    """A live exchange in ``phase``, brought there by real events."""
    if phase is DONE:
        ex, event = SCENARIOS[(STREAMING, DONE)]()
        event()
    else:
        ex, _ = SCENARIOS[next(pair for pair in LEGAL if pair[0] is phase)]()
    assert ex.phase is phase
    return ex


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=[f"{a.name}-{b.name}" for a, b in ILLEGAL])
def test_move_not_in_the_table_is_refused(old: Phase, new: Phase) -> None:
    ex = reach(old)
    with pytest.raises(IllegalTransition) as raised:
        ex._to(new)
    assert (raised.value.old, raised.value.new) == (old, new)
    assert str(raised.value) == f"illegal exchange transition {old.name} -> {new.name}"
    assert ex.phase is old  # refused, not half made


# == a bug met at run time: that connection is cut and logged, the others go on ====================


def aborted(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "sidecar_proxy.exchange"
        and r.levelno == logging.ERROR
        and r.exc_info is not None
        and isinstance(r.exc_info[1], IllegalTransition)
    ]


def served(dp: DataPath) -> bytes:
    """A request on a new client connection, answered through a new app connection."""
    c = dp.client(peer="198.51.100.1")
    c.send(request(rid="other"))
    dp.pool.accept().send(response(body=b"fine"))
    return c.received()


def test_a_bug_met_in_the_client_legs_parser_cuts_that_client_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A leg of some other protocol reports two final heads for one request, before its
    # send_request returns: the second is STREAMING -> STREAMING, raised inside the client
    # leg's parser callback that started the exchange.
    def two_heads(leg: ScriptedLeg) -> None:
        leg.head(200)
        leg.head(200)

    dp = DataPath()
    leg = ScriptedLeg(on_request=two_heads)
    dp.pool.idle.append(leg)
    c = dp.client()

    c.conn.data_received(request())

    assert len(aborted(caplog)) == 1
    assert c.closed and c.received() == b""  # the half-made response never left
    dp.loop.run_ready()  # connection_lost: the exchange ends with its client
    assert leg.calls[-1] == "abandon"
    assert dp.record.flags == ["DC"]  # recorded once, as a request the client lost
    assert dp.recorder.started_count == len(dp.records)
    assert served(dp).endswith(b"fine")


def test_a_bug_met_in_the_app_legs_parser_cuts_that_app_connection_and_answers_502(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The exchange is pushed into BACKOFF while its leg still waits for the head (the kind of
    # slip a refactoring makes); the head then arrives: BACKOFF -> STREAMING, raised inside the
    # app leg's parser callback.
    dp = DataPath(max_retries=0)
    app = dp.pool.add_idle()
    c, ex = dp.begin()
    ex._to(BACKOFF)

    app.send(response())

    assert len(aborted(caplog)) == 1
    assert app.transport.closed and app.leg not in dp.pool.released
    # The exchange heard of the cut through connection_lost, as of any app that hangs up.
    assert c.response().status == 502
    assert dp.record.flags == ["URX", "UC"]
    assert served(dp).endswith(b"fine")


class BrokenConnection:
    """A client connection whose deadline check meets a bug."""

    def __init__(self, dp: DataPath) -> None:
        self.connections = dp.ctx.connections
        self.aborts = 0
        self.connections.add(self)

    def on_tick(self, now: float) -> None:
        raise IllegalTransition(STREAMING, INTERIM)

    def close_if_idle(self) -> bool:
        return False

    def close_transport(self) -> None:
        self.connections.discard(self)

    def abort(self) -> None:
        self.aborts += 1
        self.close_transport()


def test_a_bug_met_by_the_ticker_cuts_that_connection_and_the_ticker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dp = DataPath(request_timeout=1.0)
    broken = BrokenConnection(dp)
    c, _ = dp.begin()

    dp.advance(1.0 + TICKED)

    assert broken.aborts == 1
    assert len(aborted(caplog)) == 1
    assert c.response().status == 504  # every other connection's deadlines still kept


class LossReportingLeg(ScriptedLeg):
    """A leg that tells its exchange of its loss from inside abandon(), as a leg of a protocol
    with no later callback to do it from may."""

    def abandon(self) -> None:
        events = self.bound
        super().abandon()
        if events is not None:
            events.app_lost(self, None)


def test_a_leg_reporting_its_loss_from_abandon_does_not_end_a_timed_out_exchange_twice() -> None:
    dp = DataPath(request_timeout=1.0)
    dp.pool.idle.append(LossReportingLeg())
    c, _ = dp.begin()
    dp.advance(1.0 + TICKED)
    assert c.response().status == 504
    assert (dp.record.flags, dp.record.upstream_errors) == (["UT"], ["timeout"])


def test_a_leg_reporting_its_loss_from_abandon_does_not_fail_a_retried_attempt_twice() -> None:
    dp = DataPath(retry_backoff=1.0, retry_max_backoff=1.0)
    leg = LossReportingLeg()
    dp.pool.idle.append(leg)
    _, ex = dp.begin()
    leg.head(503)
    assert ex.phase is BACKOFF
    assert ex.rec.upstream_errors == ["5xx_error"]  # the 503, and no reset on top of it
