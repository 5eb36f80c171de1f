"""One request's journey: guards, attempts to the app, the response streamed back, one record.

A :class:`Forward` is made by the client leg when a request head is complete. It is a callback
state machine rather than a coroutine: the common case (one attempt, small response) then costs
no Task, no Future and no timer (deadlines are checked by the context's ticker, see ``on_tick``),
which matters at tens of thousands of requests a second.

The two protocols call in with events (``request_body``, ``response_head``, ``upstream_lost``, …)
and the Forward asks the policies what to do: the concurrency limit and the breaker before an
attempt, the retry policy after a failed one. It never touches a socket except through the
transports the legs own, and it never accumulates a body: request chunks are kept only while they
may still have to be replayed (bounded by ``retry_buffer_limit``), response chunks are written
through as they arrive, and flow control pauses whichever side is faster.

Writes to the client are gathered in ``out`` while one read from the app is parsed and flushed
once at the end, so a small response goes out as one ``writev`` instead of head and body apart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from sidecar_proxy.admin.health import health_body, ready_body
from sidecar_proxy.http.framing import CRLF, chunk_size_line, last_chunk, response_has_body
from sidecar_proxy.http.headers import HOP_BY_HOP, end_to_end, list_tokens
from sidecar_proxy.http.replies import error_body, local_reply, status_line
from sidecar_proxy.observe import exchange as X
from sidecar_proxy.policy.backoff import parse_retry_after
from sidecar_proxy.policy.breaker import BreakerState
from sidecar_proxy.policy.retry import Failure

if TYPE_CHECKING:
    from sidecar_proxy.http.downstream import DownstreamConnection
    from sidecar_proxy.http.request import RequestHead
    from sidecar_proxy.http.upstream import UpstreamConnection
    from sidecar_proxy.observe.exchange import Exchange

log = logging.getLogger("sidecar_proxy.forward")

_HEALTH_PATHS = frozenset({"/health", "/ready"})

# Response fields the Forward reads or drops; any other is forwarded as it is (one dict lookup).
(
    _CONTENT_LENGTH,
    _CONNECTION,
    _TRANSFER_ENCODING,
    _UPGRADE,
    _HOP,
    _REQUEST_ID,
    _RETRY_AFTER,
) = range(7)
_RESPONSE_FIELDS = {
    **dict.fromkeys(HOP_BY_HOP, _HOP),
    b"content-length": _CONTENT_LENGTH,
    b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"upgrade": _UPGRADE,
    b"x-request-id": _REQUEST_ID,
    b"retry-after": _RETRY_AFTER,
}

# Failure -> (status sent to the client, sidecar_upstream_errors_total type, response flag,
# the short reason in the body of the client's error response)
_FAILURES = {
    Failure.CONNECT: (502, X.ERR_CONNECTION, X.UPSTREAM_CONNECT_FAILURE, "the app is unreachable"),
    Failure.RESET: (502, X.ERR_RESET, X.UPSTREAM_RESET, "the app closed the connection"),
    Failure.TIMEOUT: (504, X.ERR_TIMEOUT, X.UPSTREAM_TIMEOUT, "the app did not answer in time"),
}


def _added(values: list[bytes] | None, value: bytes) -> list[bytes]:
    """Append to a list that is only made once something arrives for it."""
    if values is None:
        return [value]
    values.append(value)
    return values


class Forward:
    __slots__ = (
        "_attempt_no",
        "admitted",
        "app_keep_alive",
        "attempt_at",
        "chunked_out",
        "chunks",
        "client",
        "committed",
        "connecting",
        "ctx",
        "deadline",
        "ex",
        "finished",
        "flushed",
        "head",
        "interim",
        "keep",
        "keep_client",
        "kept_bytes",
        "last_activity",
        "last_failure",
        "limited",
        "out",
        "rejected",
        "req_done",
        "req_trailers",
        "resp_cl",
        "resp_close_delimited",
        "resp_connection",
        "resp_done",
        "resp_lines",
        "resp_names",
        "resp_reason",
        "resp_request_id",
        "resp_retry_after",
        "resp_te",
        "resp_trailers",
        "resp_upgrade",
        "rid_line",
        "try_timer",
        "tunnel",
        "up",
        "written",
    )

    def __init__(self, client: DownstreamConnection, head: RequestHead, ex: Exchange) -> None:
        ctx = client.ctx
        self.ctx = ctx
        self.client = client
        self.head = head
        self.ex = ex
        self.rid_line = b"X-Request-ID: " + ex.request_id.encode() + CRLF  # to the app and back
        # request body: chunks kept while a replay may still be needed
        self.chunks: list[bytes] = []
        self.written = 0  # chunks the current attempt has sent
        self.keep = not head.upgrade and ctx.retry.replay_safe(ex.method, head.idempotency_key)
        self.kept_bytes = 0
        self.req_done = False
        self.req_trailers: list[tuple[bytes, bytes]] = []
        # the current attempt
        self.up: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self._attempt_no = 0
        self.admitted = False  # holds a breaker permit that still needs a verdict
        self.attempt_at = 0.0  # loop time the breaker admitted the current attempt
        self.last_failure: tuple[int, str] | None = None  # what a retry was for
        self.limited = False  # holds a concurrency slot
        self.try_timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0  # for the app's response head; checked by on_tick
        self.last_activity = 0.0
        # the response
        self._reset_response()
        self.committed = False  # the response head is on its way to the client
        self.chunked_out = False
        self.resp_done = False
        self.keep_client = False
        self.tunnel = False
        self.finished = False
        self.flushed = False  # bytes of the response have gone to the client
        self.out: list[bytes] = []
        self.rejected: tuple[int, str] | None = None  # set by the client leg: answer this instead

    def _reset_response(self) -> None:
        self.resp_lines: list[bytes] = []  # forwardable fields, ready to write
        self.resp_names: list[bytes] = []  # their lower-cased names
        # Rare fields stay None until one arrives: this runs for every attempt, and five fresh
        # lists per response were a measurable share of a small request's cost.
        self.resp_te: list[bytes] | None = None
        self.resp_upgrade = b""
        self.resp_reason = b""
        self.resp_cl: bytes | None = None  # the app's Content-Length digits, as validated
        self.resp_connection: list[bytes] | None = None
        self.resp_request_id = False
        self.resp_retry_after: bytes | None = None
        self.resp_trailers: list[tuple[bytes, bytes]] | None = None
        self.resp_close_delimited = False
        self.app_keep_alive = False
        self.interim = False

    # == start: guards =========================================================================

    def start(self) -> None:
        """Called by the client leg when this request is at the head of its connection's queue."""
        ctx = self.ctx
        ex = self.ex
        if self.rejected is not None:
            status, detail = self.rejected
            ex.flags.append(X.DOWNSTREAM_TIMEOUT if status == 408 else X.DOWNSTREAM_PROTOCOL_ERROR)
            self.reply(status, detail)
            return
        if (
            ex.path in _HEALTH_PATHS
            and ctx.settings.health_on_proxy_port
            and self.head.method in (b"GET", b"HEAD")
        ):
            ex.flags.append(X.LOCAL_REPLY)
            status, body = health_body() if ex.path == "/health" else ready_body(ctx.health)
            self.answer(status, body, content_type=b"application/json")
            return
        now = ctx.loop.time()
        if not ctx.limiter.try_acquire():
            ex.flags.append(X.LOAD_SHED)
            self.reply(503, "too many requests in flight", retry_after=1)
            return
        self.limited = True
        ctx.budget.deposit()
        self.deadline = now + ctx.settings.request_timeout
        self._attempt()

    def _attempt(self) -> None:
        ctx = self.ctx
        ex = self.ex
        if not ctx.breaker.allow():
            if self.last_failure is not None:
                # The breaker opened during this request's backoff: report the failure the
                # retry was for, not a rejection of a request that did reach the app.
                self.reply(*self.last_failure)
                return
            ex.flags.append(X.BREAKER_OPEN)
            ex.upstream_errors.append(X.ERR_CIRCUIT_OPEN)
            self.reply(
                503,
                "circuit breaker open",
                retry_after=max(1, math.ceil(ctx.breaker.retry_after())),
            )
            return
        self.admitted = True
        self.attempt_at = ctx.loop.time()
        ex.attempts += 1
        self._attempt_no += 1
        if self._attempt_no > 1:
            self._reset_response()  # a retry: forget the failed attempt's response
        per_try = ctx.settings.per_try_timeout
        if per_try > 0:
            self.try_timer = ctx.loop.call_later(per_try, self._on_try_timeout, self._attempt_no)
        conn = ctx.pool.take_idle()
        if conn is not None:
            self._bind(conn)
            return
        attempt_no = self._attempt_no

        def connected(conn: UpstreamConnection | None, exc: BaseException | None) -> None:
            if self.finished or attempt_no != self._attempt_no or self.up is not None:
                if conn is not None:
                    conn.finish()  # nobody waits for it any more: a fresh connection, pool it
                return
            self.connecting = None
            if conn is None:
                self._attempt_failed(Failure.CONNECT)
            else:
                self._bind(conn)

        self.connecting = ctx.pool.connect(connected)

    def _bind(self, conn: UpstreamConnection) -> None:
        self.up = conn
        conn.bind(self)
        assert conn.transport is not None
        out = [self._request_head()]
        self.written = 0
        if not self.head.upgrade:  # bytes after an Upgrade request wait for the 101
            self._body_out(out)
        conn.transport.writelines(out)
        self.client.unblock_reading_for_app()
        if self.client.write_paused:
            conn.transport.pause_reading()

    def _request_head(self) -> bytes:
        h = self.head
        s = self.ctx.settings
        lines = [h.method, b" ", h.target, b" HTTP/1.1\r\n"]
        lines += end_to_end(h.lines, h.names, h.connection)
        if not h.host_count:  # HTTP/1.0 without Host; an empty Host is forwarded as it is
            lines.append(b"Host: %b:%d\r\n" % (s.upstream_host.encode(), s.upstream_port))
        if h.xff:
            lines += [b"X-Forwarded-For: ", h.xff, b", ", self.client.peer, CRLF]
        else:
            lines.append(self.client.xff_line)
        trust = s.trust_forwarded_headers
        if trust and h.forwarded_proto:
            lines += [b"X-Forwarded-Proto: ", h.forwarded_proto, CRLF]
        else:
            lines.append(b"X-Forwarded-Proto: http\r\n")
        fhost = h.forwarded_host if trust and h.forwarded_host else h.host
        if fhost:
            lines += [b"X-Forwarded-Host: ", fhost, CRLF]
        lines.append(self.rid_line)
        if h.upgrade:
            lines += [b"Connection: upgrade\r\nUpgrade: ", h.upgrade, CRLF]
        if h.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif h.content_length is not None:
            lines.append(b"Content-Length: %d\r\n" % h.content_length)
        lines.append(CRLF)
        return b"".join(lines)

    # == request body from the client ==========================================================

    def request_body(self, data: bytes) -> None:
        self.ex.bytes_in += len(data)
        self.chunks.append(data)
        if self.keep:
            self.kept_bytes += len(data)
            if self.kept_bytes > self.ctx.settings.retry_buffer_limit:
                self.keep = False  # too large to replay: stream it, and never retry it
        up = self.up
        if up is not None and up.transport is not None:
            out: list[bytes] = []
            self._body_out(out)
            up.transport.writelines(out)
        else:
            self.client.block_reading_for_app()  # no connection yet: hold at most one read

    def request_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.req_done = True
        # The response deadline counts from the end of the request, as Envoy's route timeout
        # does: a slow upload is the client's time (client_body_timeout), not the app's.
        self.deadline = self.ctx.loop.time() + self.ctx.settings.request_timeout
        self.req_trailers = trailers
        up = self.up
        if up is not None and up.transport is not None and self.head.chunked:
            up.transport.write(last_chunk(trailers))

    def _body_out(self, out: list[bytes]) -> None:
        """Append the body chunks this attempt has not sent yet, framed for the app."""
        chunked = self.head.chunked
        chunks = self.chunks
        for data in chunks[self.written :]:
            if chunked:
                out += [chunk_size_line(len(data)), data, CRLF]
            else:
                out.append(data)
        if self.keep:
            self.written = len(chunks)
        else:
            chunks.clear()
            self.written = 0
        if self.req_done and chunked:
            out.append(last_chunk(self.req_trailers))

    # == response from the app ===================================================================

    def response_header(self, name: bytes, value: bytes) -> None:
        if self.committed:  # trailers after a chunked body
            trailers = self.resp_trailers
            if trailers is None:
                trailers = self.resp_trailers = []
            elif len(trailers) >= self.ctx.settings.max_header_count:
                raise ValueError("too many trailer fields")  # a protocol error of the app's
            trailers.append((name, value))
            return
        low = name.lower()
        kind = _RESPONSE_FIELDS.get(low)
        if kind is not None:
            if kind == _CONTENT_LENGTH:
                self.resp_cl = value  # llhttp has validated the digits; forwarded as they are
                return  # framing is ours to set
            if kind == _CONNECTION:
                self.resp_connection = _added(self.resp_connection, value)
                return
            if kind == _TRANSFER_ENCODING:
                self.resp_te = _added(self.resp_te, value)
                return
            if kind == _UPGRADE:
                self.resp_upgrade = value
                return
            if kind == _HOP:
                return
            if kind == _REQUEST_ID:
                self.resp_request_id = True
            else:
                self.resp_retry_after = value
        self.resp_lines.append(name + b": " + value + b"\r\n")
        self.resp_names.append(low)

    def response_head(self, conn: UpstreamConnection, status: int, keep_alive: bool) -> None:
        ctx = self.ctx
        ex = self.ex
        h = self.head
        if status < 200 and status != 101:
            self._interim(status)
            return
        if self.resp_te and list_tokens(self.resp_te) != [b"chunked"]:
            # We re-frame bodies ourselves and decode no transfer coding but chunked; relaying
            # gzip-coded bytes as if they were the content would corrupt the response.
            self._fail_committed_or_reply(conn, "the app used a transfer coding we do not decode")
            return
        now = ctx.loop.time()
        ex.ttfb = time.monotonic() - ex.start
        self.last_activity = now
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        failed = status in ctx.failure_statuses
        if failed:
            ex.upstream_errors.append(X.ERR_5XX if status >= 500 else X.ERR_PROTOCOL)
        self._verdict(failed)
        if ctx.retry.retryable_status(status) and self._retry(None, status):
            return
        self.app_keep_alive = keep_alive
        if status == 101:
            if h.upgrade:
                self._start_tunnel(conn)
                return
            self._fail_committed_or_reply(conn, "the app switched protocols unasked")
            return
        ex.status = status
        has_body = response_has_body(h.method, status)
        self.resp_close_delimited = has_body and self.resp_cl is None and not self.resp_te
        self._commit(status, has_body)
        if not has_body:
            # llhttp cannot be told a HEAD response has no body; finish it ourselves and give
            # the connection a fresh parser before it is reused.
            self.response_end(conn, mid_message=h.method == b"HEAD")

    def _interim(self, status: int) -> None:
        """1xx other than 101: relay to HTTP/1.1 clients (100 Continue, 103 Early Hints)."""
        if self.head.version == "1.1":
            lines = [status_line(status, self.resp_reason), *self.resp_lines, CRLF]
            self.out.append(b"".join(lines))
        self._reset_response()
        self.interim = True

    def _commit(self, status: int, has_body: bool) -> None:
        h = self.head
        ctx = self.ctx
        self.committed = True
        keep = (
            h.keep_alive
            and self.req_done
            and not ctx.draining
            and not h.upgrade
            and not self.client.closing
        )
        lines = [status_line(status, self.resp_reason)]
        lines += end_to_end(self.resp_lines, self.resp_names, self.resp_connection)
        if has_body:
            if self.resp_cl is not None:
                lines += [b"Content-Length: ", self.resp_cl, CRLF]
            elif h.version == "1.1":
                self.chunked_out = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep = False  # HTTP/1.0 client: the end of the body is the end of the connection
        elif self.resp_cl is not None and status != 204:
            lines += [b"Content-Length: ", self.resp_cl, CRLF]
        if not self.resp_request_id:
            lines.append(self.rid_line)
        if ctx.settings.attempts_header:
            lines.append(b"X-Sidecar-Attempts: %d\r\n" % self.ex.attempts)
        if not keep:
            lines.append(b"Connection: close\r\n")
        elif h.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(CRLF)
        self.keep_client = keep
        self.out.append(b"".join(lines))

    def response_body(self, data: bytes) -> None:
        if self.interim:
            return
        self.ex.bytes_out += len(data)
        if self.chunked_out:
            self.out += [chunk_size_line(len(data)), data, CRLF]
        else:
            self.out.append(data)
        self.last_activity = self.ctx.loop.time()

    def response_end(self, conn: UpstreamConnection, mid_message: bool = False) -> None:
        if self.interim:
            self.interim = False  # the 1xx is over; the final response follows
            return
        if self.tunnel or not self.committed:
            return
        if self.chunked_out:
            self.out.append(last_chunk(self.resp_trailers or ()))
        self.resp_done = True
        self.up = None
        if self.req_done and self.app_keep_alive and not self.resp_close_delimited:
            conn.finish(mid_message=mid_message)
        else:
            conn.abandon()
        self.flush_to_client()
        self.finish()

    def flush_to_client(self) -> None:
        out = self.out
        if out:
            t = self.client.transport
            if t is not None:
                t.writelines(out)
                self.flushed = True
            out.clear()

    # == failures from the app ==================================================================

    def upstream_eof(self, conn: UpstreamConnection) -> None:
        if self.resp_close_delimited and self.committed and conn is self.up:
            self.response_end(conn)  # EOF is how this body ends
        else:
            self.upstream_lost(conn, None)

    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        if conn is not self.up or self.finished:
            return
        self.up = None
        conn.abandon()
        if self.tunnel:
            self.flush_to_client()
            self.client.close_transport()
            self.finish()
        elif self.resp_close_delimited and self.committed:
            self.response_end(conn)
        elif not self.committed:
            self._attempt_failed(Failure.RESET)
        else:
            self._abort_client(X.UPSTREAM_RESET, X.ERR_RESET)

    def upstream_protocol_error(self, conn: UpstreamConnection, reason: str) -> None:
        if conn is not self.up or self.finished:
            return
        # The client only learns "malformed response"; what exactly was malformed is for the
        # app's owners, at debug level so a broken app cannot flood the log.
        log.debug(
            "malformed response from the app",
            extra={"reason": reason, "request_id": self.ex.request_id},
        )
        self._fail_committed_or_reply(conn, "the app sent a malformed response")

    def _fail_committed_or_reply(self, conn: UpstreamConnection, detail: str) -> None:
        self.up = None
        conn.abandon()
        ex = self.ex
        if self.admitted:
            self._verdict(True)
        if self.committed and not self.flushed:
            # The head is still in our buffer (it came in the same read as the fault): the
            # client can still get a clean 502 instead of a cut response.
            self.out.clear()
            self.committed = self.chunked_out = False
            ex.bytes_out = 0
        if self.committed:
            self._abort_client(X.UPSTREAM_PROTOCOL_ERROR, X.ERR_PROTOCOL)
            return
        ex.upstream_errors.append(X.ERR_PROTOCOL)
        ex.flags.append(X.UPSTREAM_PROTOCOL_ERROR)
        self.reply(502, detail)

    def _abort_client(self, flag: str, error: str) -> None:
        """The response head is out but its body cannot be completed: close the client's
        connection without a clean end, so it can tell the body is truncated."""
        ex = self.ex
        ex.flags.append(flag)
        ex.upstream_errors.append(error)
        if self.up is not None:
            self.up.abandon()
            self.up = None
        self.out.clear()
        self.client.close_transport()
        self.finish()

    def _attempt_failed(self, failure: Failure) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        _, error, _, _ = _FAILURES[failure]
        self.ex.upstream_errors.append(error)
        self._verdict(True)
        if not self._retry(failure, None):
            status, _, flag, detail = _FAILURES[failure]
            self.ex.flags.append(flag)
            self.reply(status, detail)

    def _verdict(self, failed: bool) -> None:
        if not self.admitted:
            return
        self.admitted = False
        if failed:
            self.ctx.breaker.record_failure(self.attempt_at)
        else:
            self.ctx.breaker.record_success(self.attempt_at)

    def _retry(self, failure: Failure | None, status: int | None) -> bool:
        """Ask the policy whether to try again; if so, drop this attempt and schedule the next."""
        ctx = self.ctx
        ex = self.ex
        if ctx.breaker.state is BreakerState.OPEN:
            return False  # this failure opened it: the next attempt would only be refused
        retry_after = None
        if self.resp_retry_after is not None:
            retry_after = parse_retry_after(self.resp_retry_after, time.time())
        # Nothing of the request reached the app after a refused connection, so any request may
        # go again; otherwise only a replay-safe one whose body we still hold.
        replayable = failure is Failure.CONNECT or self.keep
        decision = ctx.retry.decide(
            attempt=ex.attempts,
            failure=failure,
            status=status,
            replayable=replayable,
            retry_after=retry_after,
            remaining=self.deadline - ctx.loop.time(),
        )
        if not decision.retry:
            if decision.reason == "budget":
                ex.retries_refused += 1
                ex.flags.append(X.RETRY_BUDGET_EXHAUSTED)
            elif decision.reason == "exhausted":
                ex.flags.append(X.RETRIES_EXHAUSTED)
            return False
        if failure is not None:
            code, _, _, detail = _FAILURES[failure]
            self.last_failure = (code, detail)
        else:
            self.last_failure = (status or 502, f"the app answered {status}")
        if self.up is not None:
            self.up.abandon()
            self.up = None
        if decision.delay > 0:
            self.try_timer = ctx.loop.call_later(decision.delay, self._attempt)
        else:
            self._attempt()
        return True

    # == deadlines =================================================================================

    def on_tick(self, now: float) -> None:
        """Deadline check, called by the client leg's tick (see DownstreamConnection.on_tick)."""
        if self.finished or self.tunnel or not self.deadline:
            return  # not started, over, or a tunnel (which lives as long as its peers want)
        if self.committed:
            # After the head, the deadline becomes a stall limit on the body. A client that
            # reads slowly pauses the app, which is not the app stalling.
            if self.client.write_paused:
                return
            if now - self.last_activity >= self.ctx.settings.request_timeout:
                self._abort_client(X.UPSTREAM_TIMEOUT, X.ERR_TIMEOUT)
            return
        if not self.req_done or now < self.deadline:
            return
        self._cancel_attempt()
        self.ex.upstream_errors.append(X.ERR_TIMEOUT)
        self._verdict(True)
        self.ex.flags.append(X.UPSTREAM_TIMEOUT)
        self.reply(504, "the app did not answer in time")

    def _on_try_timeout(self, attempt_no: int) -> None:
        self.try_timer = None
        if self.finished or attempt_no != self._attempt_no or self.committed:
            return
        self._cancel_attempt()
        self._attempt_failed(Failure.TIMEOUT)

    def _cancel_attempt(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.up is not None:
            self.up.abandon()
            self.up = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    # == the client side ==========================================================================

    def client_gone(self) -> None:
        """The client hung up first: stop work for it, never blame the app."""
        if self.finished:
            return
        ex = self.ex
        ex.flags.append(X.DOWNSTREAM_DISCONNECT)
        if not self.committed:
            ex.status = X.STATUS_CLIENT_CLOSED
        self._cancel_attempt()
        self.out.clear()
        self.finish()

    def client_write_paused(self, paused: bool) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            if paused:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()

    def app_write_paused(self, paused: bool) -> None:
        if paused:
            self.client.block_reading_for_app()
        else:
            self.client.unblock_reading_for_app()

    # == upgrade tunnel ===========================================================================

    def _start_tunnel(self, conn: UpstreamConnection) -> None:
        """101 Switching Protocols: from now on both legs relay raw bytes (RFC 9110 §7.8)."""
        ex = self.ex
        ex.status = 101
        self.tunnel = True
        self.committed = True
        conn.tunnel = True
        lines = [status_line(101, self.resp_reason), *self.resp_lines]
        upgrade = self.resp_upgrade or self.head.upgrade
        lines += [b"Connection: upgrade\r\nUpgrade: ", upgrade, CRLF]
        if not self.resp_request_id:
            lines.append(self.rid_line)
        lines.append(CRLF)
        self.out.append(b"".join(lines))
        self.flush_to_client()
        self.client.start_tunnel(self)
        if self.chunks and conn.transport is not None:
            conn.transport.writelines(self.chunks)
        self.chunks.clear()

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.ex.bytes_out += len(data)
        t = self.client.transport
        if t is not None:
            t.write(data)

    def tunnel_from_client(self, data: bytes) -> None:
        self.ex.bytes_in += len(data)
        up = self.up
        if self.tunnel and up is not None and up.transport is not None:
            up.transport.write(data)
        else:
            self.chunks.append(data)  # early bytes before the 101; sent when it comes

    def tunnel_client_closed(self) -> None:
        if self.up is not None:
            self.up.abandon()
            self.up = None
        self.finish()

    # == the end ==================================================================================

    def reply(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        """Answer the client with an error or a rejection of our own, and finish."""
        extra = [(b"Retry-After", b"%d" % retry_after)] if retry_after is not None else None
        self.answer(status, error_body(status, detail), extra=extra)

    def answer(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"text/plain; charset=utf-8",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Write a complete response of our own (no app involved) and finish."""
        ex = self.ex
        self._cancel_attempt()
        h = self.head
        keep = h.keep_alive and self.req_done and not self.ctx.draining and not h.upgrade
        if ex.attempts and self.ctx.settings.attempts_header:
            extra = [*(extra or ()), (b"X-Sidecar-Attempts", b"%d" % ex.attempts)]
        self.out.clear()
        self.out.append(
            local_reply(
                status,
                body,
                request_id_line=self.rid_line,
                close=not keep,
                content_type=content_type,
                extra=extra,
                head_only=h.method == b"HEAD",
            )
        )
        ex.status = status
        self.keep_client = keep
        self.committed = True
        self.resp_done = True
        self.flush_to_client()
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        ctx = self.ctx
        self._cancel_attempt()
        if self.admitted:
            self.admitted = False
            ctx.breaker.release()
        if self.limited:
            self.limited = False
            ctx.limiter.release()
        ex = self.ex
        ex.end = time.monotonic()
        ctx.recorder.finished(ex)
        self.client.forward_done(self)
