"""The Python hooks as one step of the exchange's decisions.

The guards of :meth:`Exchange.start <sidecar_proxy.http.exchange.Exchange.start>` run as an
ordered chain in which a step that is off costs nothing: with ``HOOKS`` unset the context holds
no :class:`HookStep` and the whole cost is one ``is None`` test per request. With hooks set, the
step comes after the rate limit and the concurrency limit (so the in-flight limit covers an
async hook's wait) and before the first attempt; the response side runs on the final head,
before it is committed. Each step answers the exchange in the chain's terms:

* ``None``: carry on (the hook may have changed the head in place);
* a :class:`LocalAnswer`: answer the client with it and stop;
* a task: an ``async def`` hook is running; the exchange waits in a phase of its own
  (``REQUEST_HOOK``, ``RESPONSE_HOOK``) without blocking the loop, and carries on when the task
  is done, with what it returns.

The hooks see :mod:`sidecar_proxy.hooks` views of the head records, made only here, and what
they change is encoded back into ``Name: value\\r\\n`` lines only if they changed something. A
hook can never break the exchange: whatever it raises, returns or takes too long over becomes a
500 or 504 local answer (``on_request``) or an unchanged response (``on_response``), counted,
flagged ``HF`` and logged once per distinct error.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

from sidecar_proxy.hooks.api import AppResponse, Request, Response, request_edits, response_edits
from sidecar_proxy.hooks.load import Hooks
from sidecar_proxy.http.fields import (
    REQ_B3_TRACE_ID,
    REQ_HOST,
    REQ_IDEMPOTENCY_KEY,
    REQ_TRACEPARENT,
    REQ_USER_AGENT,
    REQUEST_FIELDS,
    RESP_REQUEST_ID,
    RESP_RETRY_AFTER,
    RESPONSE_FIELDS,
    RequestHead,
    ResponseHead,
)
from sidecar_proxy.http.framing import CRLF
from sidecar_proxy.http.headers import HOP_BY_HOP
from sidecar_proxy.http.replies import error_body
from sidecar_proxy.observe import record as R
from sidecar_proxy.observe.record import Record

log = logging.getLogger("sidecar_proxy.hooks")
T = TypeVar("T")

_TEXT = b"text/plain; charset=utf-8"

# Request fields the proxy sets itself (framing, hop-by-hop, X-Forwarded-*, X-Request-ID, the
# client certificate): what the client leg keeps out of the forwarded lines, ignored when a hook
# sets them. Host, User-Agent and the trace fields are forwarded as they are, so a hook may too.
_FORWARDED_AS_IS = frozenset(
    {REQ_HOST, REQ_USER_AGENT, REQ_TRACEPARENT, REQ_B3_TRACE_ID, REQ_IDEMPOTENCY_KEY}
)
REQUEST_OWNED: Final = frozenset(
    name.decode() for name, kind in REQUEST_FIELDS.items() if kind not in _FORWARDED_AS_IS
)
# Response fields the proxy frames itself; X-Request-ID and Retry-After pass through.
RESPONSE_OWNED: Final = frozenset(
    name.decode()
    for name, kind in RESPONSE_FIELDS.items()
    if kind not in (RESP_REQUEST_ID, RESP_RETRY_AFTER)
)
# Fields of a hook's local answer the proxy writes itself (Content-Type is taken apart).
LOCAL_OWNED: Final = frozenset(
    {*(n.decode() for n in HOP_BY_HOP), "content-length", "content-type", "x-request-id"}
)
# Distinct errors remembered for the once-each log; past this many they are only counted.
MAX_LOGGED = 1000


class LocalAnswer:
    """A complete response of the proxy's own that a step asks the exchange to send."""

    __slots__ = ("body", "content_type", "extra", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra = extra


RequestOutcome = LocalAnswer | asyncio.Task[LocalAnswer | None] | None


class HookStep:
    """One load of the hooks, with the timeout and the error accounting for them; a reload
    makes a new one, and exchanges under way finish with the one they started with."""

    __slots__ = ("_logged", "_on_error", "hooks", "loop", "on_request", "on_response", "timeout")

    def __init__(
        self,
        hooks: Hooks,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        on_error: Callable[[str], None],
    ) -> None:
        self.hooks = hooks
        self.on_request = hooks.on_request
        self.on_response = hooks.on_response
        self.loop = loop
        self.timeout = timeout
        self._on_error = on_error  # the metric, by hook name
        self._logged: set[tuple[str, str, str, int]] = set()

    def failed(self, hook: str, exc: BaseException | None, request_id: str) -> None:
        """Count a failure of ``hook`` (``exc`` None: it timed out) and log it, once for each
        distinct error: the same type raised at the same place is logged the first time only,
        so a broken hook under load does not flood the log."""
        self._on_error(hook)
        if exc is None:
            key = (hook, "timeout", "", 0)
        else:
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            place = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
            key = (hook, type(exc).__qualname__, *place)
        if key in self._logged or len(self._logged) >= MAX_LOGGED:
            return
        self._logged.add(key)
        extra = {"hook": hook, "request_id": request_id, "hooks": self.hooks.origin}
        if hook != "on_request":
            outcome = "the response went out unchanged"
        else:
            outcome = "answered 504" if exc is None else "answered 500"
        if exc is None:
            log.warning(
                f"{hook} hook did not finish within {self.timeout:g}s; {outcome} "
                "(logged once; every timeout is counted in sidecar_hook_errors_total)",
                extra=extra,
            )
            return
        log.error(
            f"{hook} hook failed; {outcome} "
            "(logged once for each distinct error; all are counted in sidecar_hook_errors_total)",
            extra={**extra, "error": f"{type(exc).__name__}: {exc}"},
            exc_info=exc,
        )


class HookCall:
    """The hooks' part in one exchange: the request as they see it (the same object for both
    hooks), the record's hook flags, and what the exchange holds back while an async
    ``on_response`` runs."""

    __slots__ = ("deadline", "ended", "flags", "head", "held", "request", "step", "trailers")

    def __init__(self, step: HookStep, head: RequestHead, rec: Record) -> None:
        self.step = step
        self.head = head
        self.flags = rec.flags  # the record's: HA and HF go here
        self.request = Request(head, rec.remote_addr, rec.request_id)
        # the response body and end that arrive while an async on_response runs
        # HOOK_TIMEOUT for the async hook being awaited; cleared when it fires
        self.deadline: asyncio.TimerHandle | None = None
        self.held: list[bytes] | None = None
        self.ended = False
        self.trailers: list[tuple[bytes, bytes]] | None = None

    # -- on_request ------------------------------------------------------------------------

    def on_request(self) -> RequestOutcome:
        fn = self.step.on_request
        if fn is None:
            return None
        try:
            result = fn(self.request)
        except (Exception, SystemExit) as exc:
            return self._request_failed(exc)
        if result is None:  # the common case first: carry on, with whatever the hook changed
            self._apply_request()
            return None
        if inspect.isawaitable(result):
            return self._awaited(self._await_request(result))
        return self._request_result(result)

    def _awaited(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run an async hook's wrapper as a task, with ``HOOK_TIMEOUT`` armed against it.

        A timer and ``cancel()`` rather than ``asyncio.timeout``: the hook's awaitable runs inside
        this one task, so whatever it raises (even ``SystemExit``) is caught by the wrapper
        instead of escaping a task of its own to the loop, and it needs nothing of the loop but
        ``create_task`` and ``call_later``.
        """
        loop = self.step.loop
        task = loop.create_task(coro)
        self.deadline = loop.call_later(self.step.timeout, self._expire, task)
        return task

    def _expire(self, task: asyncio.Task[Any]) -> None:
        self.deadline = None  # what tells the wrapper its cancellation is the timeout
        task.cancel()

    def _disarm(self) -> bool:
        """The awaited hook is over: stop its timer; True when the timer had already fired."""
        deadline = self.deadline
        if deadline is None:
            return True
        deadline.cancel()
        self.deadline = None
        return False

    async def _await_request(self, awaitable: Awaitable[Any]) -> LocalAnswer | None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if not self._disarm():
                raise  # the exchange is over (the client left): nobody waits for an answer
            self._failed("on_request", None)
            return _error(504, "the on_request hook did not finish in time")
        except (Exception, SystemExit) as exc:
            self._disarm()
            return self._request_failed(exc)
        self._disarm()
        return self._request_result(result)

    def _request_result(self, result: object) -> LocalAnswer | None:
        if result is None:
            self._apply_request()
            return None
        if isinstance(result, Response):
            self.flags.append(R.HOOK_ANSWERED)
            return _local(result)
        return self._request_failed(
            TypeError(f"on_request returned {type(result).__name__}, not None or a Response")
        )

    def _request_failed(self, exc: BaseException) -> LocalAnswer:
        self._failed("on_request", exc)
        return _error(500, "the on_request hook failed")

    def _failed(self, hook: str, exc: BaseException | None) -> None:
        self.flags.append(R.HOOK_FAILED)
        self.step.failed(hook, exc, self.request.request_id)

    def _apply_request(self) -> None:
        """Put what the hook changed into the request head (nothing, if it changed nothing)."""
        edits = request_edits(self.request)
        if edits is None:
            return
        head = self.head
        target, fields = edits
        if target is not None:
            head.target = target
        if fields is None:
            return
        lines: list[bytes] = []
        names: list[bytes] = []
        host = False
        for name, value in fields:
            low = name.lower()
            if low in REQUEST_OWNED or (low == "host" and host):
                continue  # the proxy's own, or a second Host (RFC 9112 §3.2: exactly one)
            host = host or low == "host"
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
            names.append(low.encode("latin-1"))
        if not host and head.host_count:
            lines.append(b"Host: " + head.host + CRLF)  # an HTTP/1.1 request keeps its Host
            names.append(b"host")
        elif host and not head.host_count:
            head.host_count = 1  # an HTTP/1.0 request the hook gave a Host: the proxy adds none
        head.lines = lines
        head.names = names

    # -- on_response -----------------------------------------------------------------------

    def on_response(self, resp: ResponseHead) -> asyncio.Task[None] | None:
        """Run ``on_response`` on the final head; a task while an async one runs."""
        fn = self.step.on_response
        if fn is None:
            return None
        view = AppResponse(resp)
        try:
            result = fn(self.request, view)
        except (Exception, SystemExit) as exc:
            self._failed("on_response", exc)
            return None
        if result is not None and inspect.isawaitable(result):
            return self._awaited(self._await_response(result, resp, view))
        self._response_result(result, resp, view)
        return None

    async def _await_response(
        self, awaitable: Awaitable[Any], resp: ResponseHead, view: AppResponse
    ) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if not self._disarm():
                raise
            self._failed("on_response", None)  # the response goes out unchanged
            return
        except (Exception, SystemExit) as exc:
            self._disarm()
            self._failed("on_response", exc)
            return
        self._disarm()
        self._response_result(result, resp, view)

    def _response_result(self, result: object, resp: ResponseHead, view: AppResponse) -> None:
        if result is not None:
            self._failed(
                "on_response", TypeError(f"on_response returned {type(result).__name__}, not None")
            )
            return
        fields = response_edits(view)
        if fields is None:
            return
        lines: list[bytes] = []
        names: list[bytes] = []
        for name, value in fields:
            low = name.lower()
            if low not in RESPONSE_OWNED:
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
                names.append(low.encode("latin-1"))
        resp.lines = lines
        resp.names = names
        resp.has_request_id = b"x-request-id" in names

    # -- what the exchange holds while an async on_response runs --------------------------

    def hold(self, data: bytes) -> None:
        held = self.held
        if held is None:
            held = self.held = []
        held.append(data)

    def end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.ended = True
        self.trailers = trailers


def _error(status: int, detail: str) -> LocalAnswer:
    return LocalAnswer(status, error_body(status, detail), _TEXT, None)


def _local(response: Response) -> LocalAnswer:
    """A hook's :class:`Response` as the proxy sends it."""
    content_type = _TEXT
    extra: list[tuple[bytes, bytes]] = []
    typed = False
    for name, value in response.headers.fields():
        low = name.lower()
        if low == "content-type" and not typed:
            content_type = value.encode("latin-1")
            typed = True
        elif low not in LOCAL_OWNED:
            extra.append((name.encode("latin-1"), value.encode("latin-1")))
    return LocalAnswer(response.status, response.body, content_type, extra or None)
