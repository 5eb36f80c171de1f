"""An event loop, a transport and an app pool that involve no socket and no wall clock.

They let a test drive the real client leg, exchange and app leg in-process, as uvicorn's protocol
tests do with their ``MockLoop`` and ``MockTransport``: the test feeds bytes to a protocol, reads
what it wrote, and moves time on by hand, so a deadline or a backoff is checked at its exact
boundary, in microseconds, and the same way every run.

The data path types its loop as ``asyncio.AbstractEventLoop`` and its timers and tasks as
asyncio's. :class:`FakeLoop` implements only what the data path calls (``time``, ``call_soon``,
``call_later``, and ``create_task`` for an async hook, whose coroutine may await a :class:`Gate`
the test opens) and is handed over with ``cast``: those types are not native classes, so a
mypyc-compiled data path does not check them at run time either. Nothing here patches a module.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from sidecar_proxy.http.fields import RequestHead, ResponseHead
from sidecar_proxy.http.h1.app import H1AppConnection
from sidecar_proxy.http.legs import AppEvents, AppLeg, ConnectCallback, Trailers

# More callbacks than this in one run_ready() means one keeps scheduling another for ever.
_MAX_READY = 10_000


class FakeTimer:
    """What ``call_soon`` and ``call_later`` return: a callback, when it is due, and cancel()."""

    __slots__ = ("args", "callback", "is_cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]):
        self.when = when
        self.callback = callback
        self.args = args
        self.is_cancelled = False

    def cancel(self) -> None:
        self.is_cancelled = True

    def cancelled(self) -> bool:
        return self.is_cancelled


class FakeLoop:
    """A loop whose clock moves only when the test says so.

    ``call_soon`` callbacks run at the next :meth:`run_ready`; ``call_later`` ones when
    :meth:`advance` carries the clock to their time (the clock is set to each timer's due time as
    it fires, as a real loop that is never late would). An exception in a callback reaches the
    test, where a real loop would only log it: a test must not pass over one.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._ready: list[FakeTimer] = []
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def as_loop(self) -> asyncio.AbstractEventLoop:
        return cast(asyncio.AbstractEventLoop, self)

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., object], *args: Any) -> asyncio.Handle:
        handle = FakeTimer(self.now, callback, args)
        self._ready.append(handle)
        return cast(asyncio.Handle, handle)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        timer = FakeTimer(self.now + delay, callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return cast(asyncio.TimerHandle, timer)

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return cast("asyncio.Task[Any]", CoroutineTask(self, coro))

    def timers(self) -> list[FakeTimer]:
        """The timers still pending, soonest first."""
        return [t for _, _, t in sorted(self._timers) if not t.is_cancelled]

    def timers_for(self, callback: Callable[..., object]) -> list[FakeTimer]:
        """The pending timers that will call ``callback`` (compared as ``==``, so a bound method
        of the same object matches)."""
        return [t for t in self.timers() if t.callback == callback]

    def run_ready(self) -> None:
        """Run every callback that is due now, including those they schedule for now."""
        for _ in range(_MAX_READY):
            if not self._ready:
                return
            handle = self._ready.pop(0)
            if not handle.is_cancelled:
                handle.callback(*handle.args)
        raise AssertionError("call_soon callbacks keep scheduling each other")

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, firing every timer that falls due on the way."""
        assert seconds >= 0, seconds
        self.advance_to(self.now + seconds)

    def advance_to(self, end: float) -> None:
        """Move the clock on to ``end``, firing every timer due by then."""
        assert end >= self.now, (end, self.now)
        self.run_ready()
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            if timer.is_cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback(*timer.args)
            self.run_ready()
        self.now = end


class FakeTransport(asyncio.Transport):
    """A connected transport that records what the protocol does to it.

    Closing it (``close`` or ``abort``) calls the protocol's ``connection_lost`` at the loop's
    next :meth:`FakeLoop.run_ready`, as asyncio's transports do. The peer's side is played by
    :meth:`peer_eof` and :meth:`peer_reset`. With a ``high_water`` mark, more than that many
    bytes written and not yet taken make it call the protocol's ``pause_writing``, and
    :meth:`take` its ``resume_writing``, as a real transport's buffer does.
    """

    def __init__(
        self,
        loop: FakeLoop,
        peername: tuple[str, int] = ("192.0.2.7", 41000),
        high_water: int | None = None,
    ) -> None:
        super().__init__(extra={"peername": peername})
        self.loop = loop
        self.high_water = high_water
        self.write_paused = False
        self.protocol: asyncio.Protocol | None = None
        self.data = bytearray()  # written and not yet taken by the test
        self.writes = 0  # write() and writelines() calls: one writev each on a real socket
        self.reading = True
        self.eof_written = False
        self.closed = False
        self.lost = False  # connection_lost was delivered

    def connect(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        protocol.connection_made(self)

    def take(self) -> bytes:
        """What was written since the last take; the peer has read it, so a protocol told to
        pause writing may write again."""
        out = bytes(self.data)
        self.data.clear()
        if self.write_paused and self.protocol is not None:
            self.write_paused = False
            self.protocol.resume_writing()
        return out

    def _buffered(self) -> None:
        high = self.high_water
        if high is not None and not self.write_paused and len(self.data) > high:
            self.write_paused = True
            if self.protocol is not None:
                self.protocol.pause_writing()

    # -- what the protocol calls -----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        self.writes += 1
        self.data += data
        self._buffered()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview[Any]]) -> None:
        self.writes += 1
        for data in list_of_data:
            self.data += data
        self._buffered()

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        self.close()

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost and self.protocol is not None:
            self.lost = True
            self.protocol.connection_lost(exc)

    # -- what the peer does ----------------------------------------------------------------------

    def peer_eof(self) -> None:
        """The peer closed its sending side."""
        assert self.protocol is not None
        if not self.protocol.eof_received():
            self.close()
        self.loop.run_ready()

    def peer_reset(self) -> None:
        """The peer reset the connection."""
        self.closed = True
        self._lose(ConnectionResetError("reset by peer"))
        self.loop.run_ready()


class Gate:
    """What a hook awaits in a data-path test: it waits until the test opens it."""

    def __init__(self) -> None:
        self.waiter: CoroutineTask | None = None
        self.opened = False
        self.value: object = None

    def __await__(self) -> Generator[Gate, None, object]:
        while not self.opened:
            yield self
        return self.value

    def open(self, value: object = None) -> None:
        """Let the awaiting coroutine go on, the awaited expression being ``value``."""
        self.opened = True
        self.value = value
        if self.waiter is not None:
            self.waiter.wake()


class CoroutineTask:
    """What :meth:`FakeLoop.create_task` returns: runs a coroutine a step at a time on the fake
    loop, as an asyncio task does on a real one (steps, cancellation and done callbacks all go
    through ``call_soon``). The coroutine may only wait on a :class:`Gate`."""

    def __init__(self, loop: FakeLoop, coro: Coroutine[Any, Any, Any]) -> None:
        self.loop = loop
        self.coro = coro
        self.callbacks: list[Callable[[Any], object]] = []
        self.finished = False
        self.was_cancelled = False
        self.value: object = None
        self.error: BaseException | None = None
        loop.call_soon(self._step, None)

    def _step(self, exc: BaseException | None) -> None:
        if self.finished:
            return
        try:
            gate = self.coro.send(None) if exc is None else self.coro.throw(exc)
        except StopIteration as stop:
            self._finish(value=stop.value)
        except asyncio.CancelledError:
            self._finish(cancelled=True)
        except BaseException as error:
            self._finish(error=error)
        else:
            assert isinstance(gate, Gate), f"a fake task can only wait on a Gate, not {gate!r}"
            gate.waiter = self

    def _finish(
        self, value: object = None, error: BaseException | None = None, cancelled: bool = False
    ) -> None:
        self.finished = True
        self.value, self.error, self.was_cancelled = value, error, cancelled
        for callback in self.callbacks:
            self.loop.call_soon(callback, self)

    def wake(self) -> None:
        self.loop.call_soon(self._step, None)

    def cancel(self) -> bool:
        if self.finished:
            return False
        self.loop.call_soon(self._step, asyncio.CancelledError())
        return True

    def cancelled(self) -> bool:
        return self.was_cancelled

    def done(self) -> bool:
        return self.finished

    def result(self) -> object:
        assert self.finished, "the task is still running"
        if self.was_cancelled:
            raise asyncio.CancelledError
        if self.error is not None:
            raise self.error
        return self.value

    def add_done_callback(self, callback: Callable[[Any], object]) -> None:
        if self.finished:
            self.loop.call_soon(callback, self)
        else:
            self.callbacks.append(callback)


@dataclass
class FakeTask:
    """What :meth:`FakePool.connect` returns in place of the task that would connect."""

    is_cancelled: bool = False

    def cancel(self) -> bool:
        self.is_cancelled = True
        return True

    def cancelled(self) -> bool:
        return self.is_cancelled


@dataclass
class App:
    """One app connection as the test plays it: the real app leg, and its transport."""

    leg: H1AppConnection
    transport: FakeTransport

    def received(self) -> bytes:
        """What the proxy sent the app since the last call."""
        return self.transport.take()

    def send(self, data: bytes) -> None:
        """The app sends ``data``; then the loop runs what that scheduled."""
        self.leg.data_received(data)
        self.transport.loop.run_ready()


@dataclass
class PendingConnect:
    done: ConnectCallback
    task: FakeTask


@dataclass
class FakePool:
    """An :class:`~sidecar_proxy.http.legs.AppPool` of real app legs on fake transports.

    ``take_idle`` hands out the legs made with :meth:`add_idle` (and the ones the proxy gave
    back), newest first as the real pool does; ``connect`` only records its callback, and the
    test completes it with :meth:`accept` or :meth:`refuse`, or leaves it pending. It is also
    the legs' home (``release``/``forget``), so a test sees which legs came back for reuse.
    """

    loop: FakeLoop
    max_head_bytes: int = 64 * 1024
    max_header_count: int = 100
    idle: list[AppLeg] = field(default_factory=list)
    pending: list[PendingConnect] = field(default_factory=list)
    released: list[H1AppConnection] = field(default_factory=list)
    apps: dict[int, App] = field(default_factory=dict)  # by id(leg)
    connects: int = 0
    closed: bool = False
    app_high_water: int | None = None  # for the app connections made from now on

    def new_app(self) -> App:
        leg = H1AppConnection(self)
        transport = FakeTransport(self.loop, ("127.0.0.1", 3000), self.app_high_water)
        transport.connect(leg)
        app = App(leg, transport)
        self.apps[id(leg)] = app
        return app

    def app_of(self, leg: AppLeg | H1AppConnection) -> App:
        return self.apps[id(leg)]

    def add_idle(self) -> App:
        """A warm connection the next attempt takes without connecting."""
        app = self.new_app()
        self.idle.append(app.leg)
        return app

    def accept(self, *, late: bool = False) -> App:
        """The oldest connect still wanted succeeds with a new connection; with ``late``, the
        oldest one its requester cancelled (a pool that could not stop it in time)."""
        app = self.new_app()
        self._next(cancelled=late).done(app.leg, None)
        self.loop.run_ready()
        return app

    def refuse(self, exc: OSError | None = None) -> None:
        """The oldest connect still wanted fails."""
        error = exc or ConnectionRefusedError(111, "Connection refused")
        self._next(cancelled=False).done(None, error)
        self.loop.run_ready()

    def wanted(self) -> list[PendingConnect]:
        """The connects pending and not cancelled."""
        return [p for p in self.pending if not p.task.is_cancelled]

    def _next(self, *, cancelled: bool) -> PendingConnect:
        for i, pending in enumerate(self.pending):
            if pending.task.is_cancelled == cancelled:
                return self.pending.pop(i)
        raise AssertionError(f"no {'cancelled' if cancelled else 'pending'} connect")

    # -- AppPool ---------------------------------------------------------------------------------

    def take_idle(self) -> AppLeg | None:
        while self.idle:
            leg = self.idle.pop()
            if not isinstance(leg, H1AppConnection) or leg.usable():
                return leg
        return None

    def connect(self, done: ConnectCallback) -> asyncio.Task[None]:
        self.connects += 1
        task = FakeTask()
        self.pending.append(PendingConnect(done, task))
        return cast("asyncio.Task[None]", task)

    @property
    def idle_count(self) -> int:
        return len(self.idle)

    def close(self) -> None:
        self.closed = True

    # -- the legs' home ----------------------------------------------------------------------------

    def release(self, conn: H1AppConnection) -> None:
        self.released.append(conn)
        self.idle.append(conn)

    def forget(self, conn: H1AppConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def defer_write(self, conn: H1AppConnection) -> None:
        self.loop.call_soon(conn.write_unsent)


class ScriptedLeg:
    """An :class:`~sidecar_proxy.http.legs.AppLeg` of no particular protocol.

    It records what the exchange asks of it; the test plays its side by calling the exchange's
    :class:`~sidecar_proxy.http.legs.AppEvents` through :meth:`head` and :attr:`events`, as a
    leg of another protocol (an HTTP/2 stream) would. ``on_request``, when given, runs when the
    request is sent, for a leg that answers before ``send_request`` returns.
    """

    def __init__(self, on_request: Callable[[ScriptedLeg], None] | None = None) -> None:
        self.bound: AppEvents | None = None
        self.calls: list[str] = []
        self.on_request = on_request
        self.write_paused = False  # never: it takes whatever it is sent

    @property
    def events(self) -> AppEvents:
        assert self.bound is not None, "the leg is not bound to an exchange"
        return self.bound

    def head(self, status: int, *fields: tuple[bytes, bytes]) -> None:
        """The app's response head (a 1xx included) arrives."""
        resp = ResponseHead()
        resp.status = status
        resp.keep_alive = True
        for name, value in fields:
            resp.lines.append(name + b": " + value + b"\r\n")
            resp.names.append(name.lower())
        self.events.response_head(self, resp)

    # -- AppLeg ----------------------------------------------------------------------------------

    def bind(self, events: AppEvents) -> None:
        self.bound = events
        self.calls.append("bind")

    def send_request(
        self, head: RequestHead, added: list[bytes], body: list[bytes], end: Trailers | None
    ) -> None:
        self.calls.append("send_request")
        if self.on_request is not None:
            self.on_request(self)

    def send_body(self, data: bytes) -> None:
        self.calls.append("send_body")

    def send_end(self, trailers: Trailers) -> None:
        self.calls.append("send_end")

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")

    def release(self, complete: bool) -> None:
        self.calls.append(f"release({complete})")
        self.bound = None

    def abandon(self) -> None:
        self.calls.append("abandon")
        self.bound = None

    def start_tunnel(self) -> None:
        self.calls.append("start_tunnel")

    def send_raw(self, data: bytes) -> None:
        self.calls.append("send_raw")
