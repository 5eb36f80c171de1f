"""One request's journey: guards, attempts to the app, the response streamed back, one record.

An :class:`Exchange` is made by a client leg when a request head is complete. It is a callback
state machine rather than a coroutine: the common case (one attempt, small response) then costs
no Task, no Future and no timer (deadlines are checked by the context's ticker, see
:meth:`on_tick`), which matters at tens of thousands of requests a second.

Its phase is one :class:`~sidecar_proxy.http.phase.Phase`, changed only by :meth:`_to`, which
refuses any move the phase table does not list. The legs call in through the events of
:mod:`sidecar_proxy.http.legs` and the exchange asks the policies what to do: the concurrency
limit and the breaker before an attempt, the retry policy after a failed one; the hooks, when
``HOOKS`` is set, run as one more step (:mod:`sidecar_proxy.http.hookstep`). It never touches a
socket and never frames a byte: it tells the legs what to send, and each leg frames it for its
protocol. It never accumulates a body either: request chunks are kept only while they may still
have to be replayed (bounded by ``retry_buffer_limit``; a larger replay-safe body may be copied to
a spool file instead, up to ``retry_spool_limit``), response chunks pass straight to the client
leg, and flow control pauses whichever side is faster.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Final

from sidecar_proxy.http import grpc as G
from sidecar_proxy.http.context import ProxyContext
from sidecar_proxy.http.fields import RequestHead, ResponseHead
from sidecar_proxy.http.framing import CRLF, response_has_body
from sidecar_proxy.http.grpc import GrpcCall, is_grpc
from sidecar_proxy.http.headers import list_tokens, new_request_id, valid_request_id
from sidecar_proxy.http.hookstep import HookCall, HookStep, LocalAnswer
from sidecar_proxy.http.legs import AppLeg, ClientLeg, Trailers
from sidecar_proxy.http.phase import (
    ALLOWED,
    AWAITING_HEAD,
    BACKOFF,
    CONNECTING,
    DONE,
    INTERIM,
    QUEUED,
    REQUEST_HOOK,
    RESPONSE_HOOK,
    STREAMING,
    TUNNEL,
    WAITING_FOR_APP,
    IllegalTransition,
    Phase,
)
from sidecar_proxy.http.replies import error_body
from sidecar_proxy.lifecycle.health import health_body, ready_body
from sidecar_proxy.observe import record as R
from sidecar_proxy.observe.record import Record
from sidecar_proxy.observe.servertiming import server_timing_line
from sidecar_proxy.observe.tracecontext import trace_id
from sidecar_proxy.policy.backoff import parse_retry_after
from sidecar_proxy.policy.breaker import BreakerState
from sidecar_proxy.policy.retry import REASON_BUDGET, REASON_EXHAUSTED, Failure
from sidecar_proxy.replay.spool import Spool
from sidecar_proxy.tls.identity import Peer

log = logging.getLogger("sidecar_proxy.exchange")

# The clocks, bound once: compiled, ``time.monotonic()`` reads the attribute off the module (a
# Python-level lookup, ~240 instructions) before each of its four calls per request.
_monotonic: Final = time.monotonic
_wall_clock: Final = time.time
_HEALTH_PATHS: Final = frozenset({"/health", "/ready"})
_TEXT: Final = b"text/plain; charset=utf-8"

# Failure -> (status sent to the client, sidecar_upstream_errors_total type, response flag,
# the short reason in the body of the client's error response)
_FAILURES: Final = {
    Failure.CONNECT: (502, R.ERR_CONNECTION, R.UPSTREAM_CONNECT_FAILURE, "the app is unreachable"),
    Failure.RESET: (502, R.ERR_RESET, R.UPSTREAM_RESET, "the app closed the connection"),
    Failure.TIMEOUT: (504, R.ERR_TIMEOUT, R.UPSTREAM_TIMEOUT, "the app did not answer in time"),
}

# How much of a spooled body a replay reads from disk and sends at a time: the app's write
# buffer's high-water mark is 64 KiB, so one piece is about what it takes before pausing.
REPLAY_PIECE = 64 * 1024

# the flag of a request the client leg rejected, by status; any other status is DPE
_REJECTION_FLAGS: Final = {408: R.DOWNSTREAM_TIMEOUT, 403: R.CLIENT_IDENTITY_DENIED}


def new_record(head: RequestHead, remote_addr: str, tls_peer: Peer | None) -> Record:
    """The record of a request whose head a client leg has just parsed."""
    # Not loop.time(): uvloop's is libuv's cached millisecond clock, too coarse for the
    # 1 ms histogram bucket. Timers still use loop.time(); only measurements use this.
    rec = Record(_monotonic(), _wall_clock(), remote_addr, "HTTP/" + head.version)
    rec.method = head.method.decode("latin-1")
    path, q, _ = head.target.partition(b"?")
    rec.path = path.decode("latin-1")
    rec.has_query = bool(q)
    rec.user_agent = head.user_agent.decode("latin-1")
    rid = head.request_id
    rec.request_id = rid.decode("ascii") if valid_request_id(rid) else new_request_id()
    rec.trace_id, rec.traced = trace_id(head.traceparent, head.b3_trace_id, rec.request_id)
    if tls_peer is not None:
        rec.tls_version = tls_peer.version
        rec.client_identity = tls_peer.identity
    return rec


class Exchange:
    """One request and its response; implements ``ClientEvents`` and ``AppEvents``."""

    __slots__ = (
        "admitted",
        "app",
        "app_stalled_at",
        "attempt_at",
        "attempt_no",
        "chunks",
        "client",
        "ctx",
        "deadline",
        "grpc",
        "head",
        "held",
        "hooked",
        "kept_bytes",
        "last_activity",
        "last_failure",
        "limited",
        "pending",
        "phase",
        "rec",
        "rejected",
        "replayable",
        "req_done",
        "req_trailers",
        "resp",
        "rid_line",
        "sent_at",
        "spool",
        "spool_sent",
        "timer",
        "to_eof",
        "written",
    )

    def __init__(
        self,
        ctx: ProxyContext,
        client: ClientLeg,
        head: RequestHead,
        rec: Record,
        body_follows: bool,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.head = head
        self.rec = rec
        self.phase: Phase = QUEUED
        self.rid_line = b"X-Request-ID: " + rec.request_id.encode() + CRLF  # to the app and back
        self.rejected: tuple[int, str] | None = None  # answer this in the exchange's turn
        # the request body: chunks kept while a replay may still be needed
        self.req_done = not body_follows
        self.req_trailers: Trailers = []
        self.chunks: list[bytes] = []
        self.written = 0  # chunks the current attempt has sent
        # Every chunk so far is still here (within retry_buffer_limit), whatever the method: an
        # attempt the app never saw (a refused HTTP/2 stream) may then go again whole.
        self.held = not head.upgrade
        # ...and the request may also be replayed after the app did see it
        self.replayable = self.held and ctx.retry.replay_safe(rec.method, head.idempotency_key)
        self.kept_bytes = 0
        # A body that outgrew the memory buffer, copied to disk instead (see _outgrown); the
        # current attempt has had its first spool_sent bytes.
        self.spool: Spool | None = None
        self.spool_sent = 0
        # the current attempt
        self.app: AppLeg | None = None
        # what the exchange waits on: a new app connection, or an async hook
        self.pending: asyncio.Task[Any] | None = None
        self.hooked: HookCall | None = None  # the hooks' part in the response, if any
        self.attempt_no = 0
        self.timer: asyncio.TimerHandle | None = None  # per-try timeout, or the backoff
        self.admitted = False  # holds a breaker permit that still needs a verdict
        self.attempt_at = 0.0  # loop time the breaker admitted the current attempt
        self.limited = False  # holds a concurrency slot
        self.last_failure: tuple[int, str] | None = None  # what a retry was for
        self.deadline = 0.0  # for the app's response head; checked by on_tick
        self.last_activity = 0.0  # the last response body byte, for the stall limit
        # loop time the app leg stopped taking the request body (its write buffer full); 0 while
        # it takes it: an upload stuck there is the app's stall, not the client's
        self.app_stalled_at = 0.0
        self.sent_at = 0.0  # time.monotonic() when the current attempt's head went to the app
        # the response
        self.resp: ResponseHead | None = None  # the latest head from the app
        self.to_eof = False  # the response body ends when the app closes the connection
        # a gRPC call (PROTOCOL-HTTP2.md): its deadline, status and message counts; one test
        # of the content type for every other request
        self.grpc: GrpcCall | None = None
        content_type = head.content_type
        if content_type and is_grpc(content_type):
            self.grpc = GrpcCall(head.grpc_timeout)
            rec.grpc = True

    # == the phase ================================================================================

    def _to(self, new: Phase) -> None:
        """The one place the phase changes (see :mod:`sidecar_proxy.http.phase`)."""
        if not ALLOWED[self.phase] >> new & 1:
            raise IllegalTransition(self.phase, new)
        self.phase = new

    @property
    def finished(self) -> bool:
        return self.phase is DONE

    @property
    def request_complete(self) -> bool:
        return self.req_done

    @property
    def committed(self) -> bool:
        """The response head has gone to the client leg."""
        phase = self.phase
        return phase is STREAMING or phase is TUNNEL

    # == start: guards =========================================================================

    def reject(self, status: int, detail: str) -> None:
        """The client leg found the request malformed, too large or too slow."""
        if self.phase is DONE:
            return
        self.rec.flags.append(_REJECTION_FLAGS.get(status, R.DOWNSTREAM_PROTOCOL_ERROR))
        if self.phase is QUEUED:
            self.rejected = (status, detail)  # answered in its turn (see start)
        elif self.committed and not self.client.retract():
            self.client.abort()
            self.client_gone()
        else:
            self.reply(status, detail)

    def start(self) -> None:
        """Called by the client leg when this request's turn has come."""
        ctx = self.ctx
        rec = self.rec
        if self.rejected is not None:
            self.reply(*self.rejected)
            return
        grpc = self.grpc
        if grpc is not None and self._grpc_refused(grpc):
            return
        if (
            rec.path in _HEALTH_PATHS
            and ctx.settings.health_on_proxy_port
            and self.head.method in (b"GET", b"HEAD")
        ):
            rec.flags.append(R.LOCAL_REPLY)
            status, body = health_body() if rec.path == "/health" else ready_body(ctx.health)
            self.answer(status, body, b"application/json", None)
            return
        if ctx.rate_limit is not None and rec.path not in _HEALTH_PATHS:  # probes: never limited
            refusal = ctx.rate_limit.check(self.client.peer, self.head.xff)
            if refusal is not None:
                rec.flags.append(R.RATE_LIMITED)
                self.answer(429, error_body(429, "rate limit exceeded"), _TEXT, refusal)
                return
        if not ctx.limiter.try_acquire():
            rec.flags.append(R.LOAD_SHED)
            self.reply(503, "too many requests in flight", retry_after=1)
            return
        self.limited = True
        hooks = ctx.hooks
        if hooks is not None and self._request_hook(hooks):
            return
        self._forward()

    def _forward(self) -> None:
        """The guards let the request through: on to the first attempt."""
        ctx = self.ctx
        ctx.budget.deposit()
        timeout = ctx.settings.request_timeout
        grpc = self.grpc
        if grpc is not None and grpc.timeout is not None:
            timeout = min(timeout, grpc.timeout)  # the whole call's, streaming or not
        self.deadline = ctx.loop.time() + timeout
        self._attempt()

    def _request_hook(self, hooks: HookStep) -> bool:
        """Run ``on_request``; True when the request goes no further for now (answered by the
        hook, or waiting for an async one)."""
        call = HookCall(hooks, self.head, self.rec)
        if hooks.on_response is not None:
            self.hooked = call  # on_response sees the same request object
        outcome = call.on_request()
        if outcome is None:
            return False
        if isinstance(outcome, LocalAnswer):
            self._hook_answer(outcome)
        else:
            self._to(REQUEST_HOOK)
            self.pending = outcome
            outcome.add_done_callback(self._request_hooked)
        return True

    def _request_hooked(self, task: asyncio.Task[Any]) -> None:
        """An async ``on_request`` is done (it cannot fail: the step turns every failure into
        an answer); a task cancelled because the exchange ended is no longer ``pending``."""
        if task is not self.pending:
            return
        self.pending = None
        try:
            answer: LocalAnswer | None = task.result()
            if answer is None:
                self._forward()
            else:
                self._hook_answer(answer)
        except IllegalTransition as bug:
            self._aborted(bug)

    def _hook_answer(self, answer: LocalAnswer) -> None:
        """A hook's answer, or the error a failed hook earned (in gRPC form to a gRPC call)."""
        self.answer(answer.status, answer.body, answer.content_type, answer.extra)

    def _grpc_refused(self, grpc: GrpcCall) -> bool:
        """Answer a gRPC call the sidecar cannot carry; True if it did."""
        if grpc.malformed:
            # PROTOCOL-HTTP2.md leaves the answer open; gRPC servers say INTERNAL
            self._grpc_answer(G.INTERNAL, "sidecar-proxy: malformed grpc-timeout", None)
            return True
        if self.ctx.settings.upstream_protocol != "h2c":
            # An HTTP/1.1 app cannot take a gRPC call (no trailers, no full duplex); UNIMPLEMENTED
            # rather than UNAVAILABLE, which clients retry: no retry can help.
            self._grpc_answer(
                G.UNIMPLEMENTED,
                "sidecar-proxy: the app leg is HTTP/1.1 (UPSTREAM_PROTOCOL=http1); "
                "gRPC needs UPSTREAM_PROTOCOL=h2c",
                None,
            )
            return True
        return False

    def _attempt(self) -> None:
        ctx = self.ctx
        rec = self.rec
        self.timer = None
        if not ctx.breaker.allow():
            if self.last_failure is not None:
                # The breaker opened during this request's backoff: report the failure the
                # retry was for, not a rejection of a request that did reach the app.
                self.reply(*self.last_failure)
                return
            rec.flags.append(R.BREAKER_OPEN)
            rec.upstream_errors.append(R.ERR_CIRCUIT_OPEN)
            self.reply(
                503,
                "circuit breaker open",
                retry_after=max(1, math.ceil(ctx.breaker.retry_after())),
            )
            return
        self.admitted = True
        self.attempt_at = ctx.loop.time()
        rec.attempts += 1
        self.attempt_no += 1
        self.resp = None
        per_try = ctx.settings.per_try_timeout
        if per_try > 0:
            self.timer = ctx.loop.call_later(per_try, self._on_try_timeout, self.attempt_no)
        app = ctx.pool.take_idle()
        if app is not None:
            self._to(AWAITING_HEAD)
            self._bind(app)
            return
        self._to(CONNECTING)
        attempt_no = self.attempt_no

        def connected(app: AppLeg | None, exc: BaseException | None) -> None:
            if self.phase is not CONNECTING or attempt_no != self.attempt_no:
                if app is not None:
                    app.release(True)  # nobody waits for it any more: a fresh leg, pool it
                return
            self.pending = None
            try:
                if app is None:
                    self._attempt_failed(Failure.CONNECT)
                else:
                    self._to(AWAITING_HEAD)
                    self._bind(app)
            except IllegalTransition as bug:
                self._aborted(bug)

        self.pending = ctx.pool.connect(connected)

    def _bind(self, app: AppLeg) -> None:
        self.app = app
        app.bind(self)
        self.written = 0
        self.app_stalled_at = 0.0
        body: list[bytes] = []
        end: Trailers | None = None
        spool = self.spool
        if spool is not None:
            self.spool_sent = 0  # a retry: the whole body again, from the disk copy
        elif not self.head.upgrade:  # bytes after an Upgrade request wait for the 101
            self._unsent(body)
            if self.req_done:
                end = self.req_trailers
        app.send_request(self.head, self._added_request_lines(), body, end)
        self.sent_at = _monotonic()
        self.client.resume_request_body()
        if self.client.write_paused:
            app.pause_reading()
        if spool is not None:
            self._replay(app, spool)

    def _added_request_lines(self) -> list[bytes]:
        """The fields the proxy adds to the request: Host when missing, X-Forwarded-*, the
        request id."""
        h = self.head
        s = self.ctx.settings
        client = self.client
        xff = (
            b"X-Forwarded-For: " + h.xff + b", " + client.peer + CRLF
            if h.xff
            else client.forwarded_for_line
        )
        trust = s.trust_forwarded_headers
        if trust and h.forwarded_proto:
            xfp = b"X-Forwarded-Proto: " + h.forwarded_proto + CRLF
        else:
            xfp = client.proto_line
        fhost = h.forwarded_host if trust and h.forwarded_host else h.host
        if fhost:
            lines = [xff, xfp, b"X-Forwarded-Host: " + fhost + CRLF, self.rid_line]
        else:
            lines = [xff, xfp, self.rid_line]
        if client.xfcc_line:  # a verified client certificate
            lines.append(client.xfcc_line)
        grpc = self.grpc
        if grpc is not None and grpc.timeout is not None:
            # the app learns the time this attempt has left, not the caller's original budget
            left = self.deadline - self.ctx.loop.time()
            lines.append(b"grpc-timeout: " + G.timeout_value(left) + CRLF)
        if not h.host_count:  # HTTP/1.0 without Host; an empty Host is forwarded as it is
            lines.insert(0, b"Host: %b:%d\r\n" % (s.upstream_host.encode(), s.upstream_port))
        return lines

    # == request body from the client ==========================================================

    def request_body(self, data: bytes) -> None:
        if self.phase is DONE:
            return  # answered early (413, 503, ...): the rest of the body is not needed
        self.rec.bytes_in += len(data)
        spool = self.spool
        if spool is not None:
            self._spooled_body(spool, data)
            return
        self.chunks.append(data)
        if self.grpc is not None:
            self.grpc.requests.feed(data)
        if self.held:
            self.kept_bytes += len(data)
            if self.kept_bytes > self.ctx.settings.retry_buffer_limit and self._outgrown():
                return
        app = self.app
        if app is not None:
            for chunk in self._unsent([]):
                app.send_body(chunk)
        else:
            self.client.pause_request_body()  # no app leg yet: hold at most one read

    def request_end(self, trailers: Trailers) -> None:
        self.req_done = True
        if self.phase is DONE:
            return
        # The response deadline counts from the end of the request, as Envoy's route timeout
        # does: a slow upload is the client's time (client_body_timeout), not the app's. A gRPC
        # deadline is the whole call's, streaming or not.
        grpc = self.grpc
        if grpc is None or grpc.timeout is None:
            self.deadline = self.ctx.loop.time() + self.ctx.settings.request_timeout
        self.req_trailers = trailers
        app = self.app
        if app is not None:
            spool = self.spool
            if spool is None or self.spool_sent == spool.size:
                app.send_end(trailers)  # else the replay sends it when it catches up

    # -- the replay copy on disk ---------------------------------------------------------------

    def _outgrown(self) -> bool:
        """The body outgrew the memory buffer (RETRY_BUFFER_LIMIT). With a spool it is copied
        to disk from here on, and this chunk is dealt with (True); otherwise it streams on
        without a copy and can no longer be retried (False).

        A spool starts only while an attempt's leg is bound and has had every chunk held: from
        then on the disk copy is the only one, so before it the chunks stay in memory (the client
        is paused while no leg is bound: one read more, at most).
        """
        area = self.ctx.spool
        length = self.head.content_length
        if (
            area is None
            or not self.replayable  # held only in case the app never sees it: memory alone
            or (length is not None and length > area.limit)
        ):
            self.held = self.replayable = False  # too large to replay: stream it, never retry
            return False
        app = self.app
        if app is None:
            return False  # decided once an attempt has a leg
        chunks = self.chunks
        spool = area.start(chunks)
        if spool is None:  # over the spools' total, or the disk failed: as if there were none
            self.held = self.replayable = False
            return False
        for chunk in chunks[self.written :]:
            app.send_body(chunk)
        chunks.clear()
        self.written = 0
        self.spool = spool
        self.spool_sent = spool.size
        return True

    def _spooled_body(self, spool: Spool, data: bytes) -> None:
        """A chunk of a spooled body: copied to disk, and sent on at once when the attempt
        has had everything before it (else the replay sends it in its turn)."""
        app = self.app
        streaming = app is not None and self.spool_sent == spool.size
        if not spool.append(data):  # over a bound, or the disk failed: the copy is gone
            self.spool = None
            self.held = self.replayable = False
            if app is not None and streaming:
                app.send_body(data)  # nothing lost: stream on without a copy
            else:
                self._copy_lost()
            return
        if app is not None and streaming:
            self.spool_sent = spool.size
            app.send_body(data)
        elif app is None:
            self.client.pause_request_body()

    def _replay(self, app: AppLeg, spool: Spool) -> None:
        """Send the attempt the spooled body it has not had, a piece at a time while the app
        takes it; the rest follows when it reads again (app_write_paused). Once caught up, the
        end of the request goes too, if it has come."""
        while self.spool_sent < spool.size and not app.write_paused:
            piece = spool.read(self.spool_sent, REPLAY_PIECE)
            if not piece:  # the disk failed: the copy is gone
                self.spool = None
                self.held = self.replayable = False
                self._copy_lost()
                return
            self.spool_sent += len(piece)
            app.send_body(piece)
        if self.spool_sent == spool.size:
            if self.req_done:
                app.send_end(self.req_trailers)
            if self.committed:
                self._drop_copy(spool)  # the response is on its way: no retry will need it

    def _copy_lost(self) -> None:
        """The disk copy failed while an attempt still needed it: that retry cannot go ahead,
        and the client gets what the failed attempt earned, as if there had been no spool
        (the request would not have been retried then)."""
        if self.committed:
            # The app answered before the replay caught up; its connection is owed body bytes
            # that are gone, so it cannot be completed or reused.
            self._cancel_attempt()
            self.client.abort()
            self.finish()
            return
        status, detail = self.last_failure or (502, _FAILURES[Failure.RESET][3])
        self.reply(status, detail)

    def _drop_copy(self, spool: Spool) -> None:
        """No retry can come any more: give the disk space back now, not at the end."""
        self.spool = None
        self.held = self.replayable = False
        spool.close()

    def _unsent(self, out: list[bytes]) -> list[bytes]:
        """Append to ``out`` the body chunks this attempt has not sent yet; drop the ones that
        can no longer be replayed."""
        chunks = self.chunks
        out += chunks[self.written :]
        if self.held:
            self.written = len(chunks)
        else:
            chunks.clear()
            self.written = 0
        return out

    # == response from the app =================================================================

    def response_head(self, app: AppLeg, resp: ResponseHead) -> None:
        ctx = self.ctx
        rec = self.rec
        status = resp.status
        self.resp = resp
        if status < 200 and status != 101:
            # 1xx other than 101: relayed where the client's protocol allows (100 Continue,
            # 103 Early Hints); the final head follows in another message.
            self._to(INTERIM)
            self.client.send_interim(status, resp)
            return
        if resp.transfer_encoding and list_tokens(resp.transfer_encoding) != [b"chunked"]:
            # We re-frame bodies ourselves and decode no transfer coding but chunked; relaying
            # gzip-coded bytes as if they were the content would corrupt the response.
            self._app_failed_response(app, "the app used a transfer coding we do not decode")
            return
        rec.ttfb = _monotonic() - rec.start
        self.last_activity = ctx.loop.time()
        if self.timer is not None:  # the per-try timeout: an answer came in time
            self.timer.cancel()
            self.timer = None
        grpc = self.grpc
        if grpc is not None and status == 200:
            if self._grpc_head(resp):
                return
        else:
            failed = status in ctx.failure_statuses
            if failed:
                rec.upstream_errors.append(R.ERR_5XX if status >= 500 else R.ERR_PROTOCOL)
            self._verdict(failed)
            if ctx.retry.retryable_status(status) and self._retry(None, status):
                return
        if status == 101:
            if self.head.upgrade:
                self._start_tunnel(app, resp)
            else:
                self._app_failed_response(app, "the app switched protocols unasked")
            return
        rec.status = status
        has_body = response_has_body(self.head.method, status)
        # no Content-Length and not chunked: the body ends when the app closes the connection
        self.to_eof = (
            has_body
            and not resp.framed
            and resp.content_length is None
            and not resp.transfer_encoding
        )
        hooked = self.hooked
        if hooked is not None and self._response_hook(hooked, app, resp):
            return
        self._commit(resp, has_body)
        if not has_body:
            self._response_complete(app, None)

    def _commit(self, resp: ResponseHead, has_body: bool) -> None:
        """The final head goes to the client leg, with the proxy's own fields: from here on
        the response streams and can no longer be retried."""
        s = self.ctx.settings
        rec = self.rec
        self._to(STREAMING)
        spool = self.spool
        if spool is not None and self.spool_sent == spool.size:
            self._drop_copy(spool)  # else still being replayed to the app (_replay drops it)
        added = [] if resp.has_request_id else [self.rid_line]
        if s.attempts_header:
            added.append(b"X-Sidecar-Attempts: %d\r\n" % rec.attempts)
        if s.server_timing and rec.ttfb is not None:  # always set by a final head
            added.append(server_timing_line(rec.start, self.sent_at, rec.ttfb))
        self.client.send_head(resp.status, resp, added, has_body)

    def _response_hook(self, hooked: HookCall, app: AppLeg, resp: ResponseHead) -> bool:
        """Run ``on_response`` on the final head; True while an async one runs. Reading from
        the app pauses meanwhile, and what the current read still brings is held."""
        task = hooked.on_response(resp)
        if task is None:
            return False
        self._to(RESPONSE_HOOK)
        self.pending = task
        app.pause_reading()
        task.add_done_callback(self._response_hooked)
        return True

    def _response_hooked(self, task: asyncio.Task[Any]) -> None:
        """An async ``on_response`` is done (or gave up): the head goes out, then whatever
        of the body was held."""
        hooked = self.hooked
        resp = self.resp
        if task is not self.pending or hooked is None or resp is None:
            return
        self.pending = None
        try:
            has_body = response_has_body(self.head.method, resp.status)
            self._commit(resp, has_body)
            for data in hooked.held or ():
                self.response_body(data)
            app = self.app
            if hooked.ended or app is None:
                self._end_response(hooked.trailers)  # the app leg went back at the end
            elif not has_body:
                self._response_complete(app, None)
            else:
                if not self.client.write_paused:
                    app.resume_reading()
                self.client.flush()
        except IllegalTransition as bug:
            self._aborted(bug)

    def _grpc_head(self, resp: ResponseHead) -> bool:
        """A gRPC call's answer: its status is in the head only when it is Trailers-Only (the
        call failed before any message); otherwise the trailers bring it, and the breaker's
        verdict waits for them. True if it is retried."""
        code = G.head_status(resp)
        if code is None:
            return False
        self.rec.grpc_status = code
        self._verdict(code in self.ctx.settings.grpc_failure_statuses)
        return self.ctx.retry.retryable_grpc(code) and self._retry(None, None, code)

    def response_body(self, data: bytes) -> None:
        if self.phase is not STREAMING:
            hooked = self.hooked
            if self.phase is RESPONSE_HOOK and hooked is not None:
                hooked.hold(data)  # the head waits for an async on_response
            return  # a 1xx has no body; anything else was refused at its head
        self.rec.bytes_out += len(data)
        if self.grpc is not None:
            self.grpc.responses.feed(data)
        self.client.send_body(data)
        self.last_activity = self.ctx.loop.time()

    def response_end(self, app: AppLeg, trailers: Trailers | None) -> None:
        if self.phase is INTERIM:
            self._to(AWAITING_HEAD)  # the 1xx is over; the final response follows
        elif self.phase is STREAMING:
            self._response_complete(app, trailers)
        elif self.phase is RESPONSE_HOOK:
            self._hold_end(app, trailers)

    def _response_complete(self, app: AppLeg, trailers: Trailers | None) -> None:
        self._release(app)
        self._end_response(trailers)

    def _release(self, app: AppLeg) -> None:
        """The response is read whole: the attempt is over."""
        self.app = None
        # Reusable only if the request went out whole (a replay from the spool still under
        # way has not) and the body did not end with the connection; whether the app keeps it
        # alive is the leg's to judge.
        app.release(self.req_done and not self.to_eof and self.spool is None)

    def _end_response(self, trailers: Trailers | None) -> None:
        if self.grpc is not None:
            self._grpc_end(trailers)
        self.client.send_end(trailers)
        self.client.flush()
        self.finish()

    def _hold_end(self, app: AppLeg, trailers: Trailers | None) -> None:
        """The response ended while an async on_response runs: the app leg is done with, the
        end waits for the head."""
        self._release(app)
        if self.hooked is not None:
            self.hooked.end(trailers)

    def _grpc_end(self, trailers: Trailers | None) -> None:
        """A gRPC call's response is complete: its status, and the breaker's verdict on it."""
        rec = self.rec
        code = G.trailer_status(trailers)
        if code is not None:
            rec.grpc_status = code
        elif rec.grpc_status < 0:
            # no grpc-status anywhere: the client will make one up from the HTTP status
            rec.grpc_status = G.UNKNOWN if rec.status == 200 else G.local_code(rec.status, False)
        self._verdict(rec.grpc_status in self.ctx.settings.grpc_failure_statuses)

    def read_done(self) -> None:
        self.client.flush()

    # == failures from the app ==================================================================

    def app_eof(self, app: AppLeg) -> None:
        # EOF is how a close-delimited body ends; otherwise the connection is lost
        self.app_lost(app, None)

    def app_lost(self, app: AppLeg, exc: BaseException | None) -> None:
        if app is not self.app or self.phase is DONE:
            return
        phase = self.phase
        if self.to_eof:  # the end of a close-delimited body; the leg will not reuse it
            if phase is STREAMING:
                self._response_complete(app, None)
                return
            if phase is RESPONSE_HOOK:
                self._hold_end(app, None)
                return
        self.app = None
        app.abandon()
        if phase is TUNNEL:
            self.client.flush()
            self.client.abort()
            self.finish()
        elif phase is STREAMING:
            self._abort_client(R.UPSTREAM_RESET, R.ERR_RESET)
        elif phase is RESPONSE_HOOK:
            # The head is in, but its body will not come; the client has seen nothing yet.
            status, error, flag, detail = _FAILURES[Failure.RESET]
            self.rec.upstream_errors.append(error)
            self.rec.flags.append(flag)
            self.reply(status, detail)
        else:
            self._attempt_failed(Failure.RESET)

    def app_refused(self, app: AppLeg) -> None:
        if app is not self.app or not WAITING_FOR_APP >> self.phase & 1:
            return
        self.app = None
        app.abandon()
        # Nothing reached the app, so any request may go again, as after a refused connection,
        # while its whole body is still here; past retry_buffer_limit it is retried only as a
        # reset would be.
        self._attempt_failed(Failure.CONNECT if self.held else Failure.RESET)

    def app_protocol_error(self, app: AppLeg, reason: str) -> None:
        if app is not self.app or self.phase is DONE:
            return
        # The client only learns "malformed response"; what exactly was malformed is for the
        # app's owners, at debug level so a broken app cannot flood the log.
        log.debug(
            "malformed response from the app",
            extra={"reason": reason, "request_id": self.rec.request_id},
        )
        self._app_failed_response(app, "the app sent a malformed response")

    def _app_failed_response(self, app: AppLeg, detail: str) -> None:
        """The app's response cannot be relayed: 502 if the client has seen none of it,
        otherwise a cut connection."""
        self.app = None
        app.abandon()
        rec = self.rec
        self._verdict(True)
        if self.committed and not self.client.retract():
            self._abort_client(R.UPSTREAM_PROTOCOL_ERROR, R.ERR_PROTOCOL)
            return
        # Nothing left the proxy yet (the head came in the same read as the fault): the client
        # gets a clean 502 instead of a cut response.
        rec.bytes_out = 0
        rec.upstream_errors.append(R.ERR_PROTOCOL)
        rec.flags.append(R.UPSTREAM_PROTOCOL_ERROR)
        self.reply(502, detail)

    def _abort_client(self, flag: str, error: str) -> None:
        """The response head is out but its body cannot be completed: cut the client's
        connection without a clean end, so it can tell the body is truncated."""
        rec = self.rec
        rec.flags.append(flag)
        rec.upstream_errors.append(error)
        self._cancel_attempt()
        self.client.abort()
        self.finish()

    def _attempt_failed(self, failure: Failure) -> None:
        self._cancel_timer()
        _, error, _, _ = _FAILURES[failure]
        self.rec.upstream_errors.append(error)
        self._verdict(True)
        if not self._retry(failure, None):
            status, _, flag, detail = _FAILURES[failure]
            self.rec.flags.append(flag)
            self.reply(status, detail)

    def _verdict(self, failed: bool) -> None:
        if not self.admitted:
            return
        self.admitted = False
        if failed:
            self.ctx.breaker.record_failure(self.attempt_at)
        else:
            self.ctx.breaker.record_success(self.attempt_at)

    def _retry(
        self, failure: Failure | None, status: int | None, grpc_status: int | None = None
    ) -> bool:
        """Ask the policy whether to try again; if so, drop this attempt and schedule the next."""
        ctx = self.ctx
        rec = self.rec
        if ctx.breaker.state is BreakerState.OPEN:
            return False  # this failure opened it: the next attempt would only be refused
        retry_after = None
        resp = self.resp
        replayable = failure is Failure.CONNECT or self.replayable
        if grpc_status is not None:
            # A Trailers-Only answer: the app took no message of it, so the call may go again
            # while we hold all of it. grpc-retry-pushback-ms is the app's Retry-After; a
            # negative or malformed one asks for no retry (gRFC A6).
            replayable = self.held
            retry_after = None if resp is None else G.head_pushback(resp)
            if retry_after is not None and retry_after < 0:
                return False
        elif resp is not None and resp.retry_after is not None:
            retry_after = parse_retry_after(resp.retry_after, _wall_clock())
        # Nothing of the request reached the app after a refused connection, so any request may
        # go again; otherwise only a replay-safe one whose body we still hold.
        decision = ctx.retry.decide(
            attempt=rec.attempts,
            failure=failure,
            status=status,
            grpc_status=grpc_status,
            replayable=replayable,
            retry_after=retry_after,
            remaining=self.deadline - ctx.loop.time(),
        )
        if not decision.retry:
            if decision.reason == REASON_BUDGET:
                rec.retries_refused += 1
                rec.flags.append(R.RETRY_BUDGET_EXHAUSTED)
            elif decision.reason == REASON_EXHAUSTED:
                rec.flags.append(R.RETRIES_EXHAUSTED)
            return False
        if failure is not None:
            code, _, _, detail = _FAILURES[failure]
            self.last_failure = (code, detail)
        elif grpc_status is not None:
            self.last_failure = (503, f"the app answered gRPC status {grpc_status}")
        else:
            self.last_failure = (status or 502, f"the app answered {status}")
        app = self.app
        if app is not None:
            self.app = None  # before abandon(): see _cancel_attempt
            app.abandon()
        self._to(BACKOFF)
        if decision.delay > 0:
            self.timer = ctx.loop.call_later(decision.delay, self._after_backoff)
        else:
            self._attempt()
        return True

    # == deadlines ==============================================================================

    def on_tick(self, now: float) -> None:
        """Deadline check, called by the client leg's tick."""
        phase = self.phase
        grpc = self.grpc
        whole_call = grpc is not None and grpc.timeout is not None
        stalled = self.app_stalled_at
        if (
            stalled
            and not self.req_done
            and now - stalled >= self.ctx.settings.request_timeout
            and self.app is not None  # else that leg is gone; the next one's time starts anew
            and not self.client.write_paused
        ):
            # The app left the request body unread for request_timeout: the client's bytes
            # wait in our buffer to the app, and the client leg, told to pause, does not
            # charge the client for it. As nginx's proxy_send_timeout, a 504: the app's time
            # ran out, not the client's. (While the client does not read the response, the
            # app may be stuck writing it: not its stall; see client_write_paused.)
            if self.committed:
                self._abort_client(R.UPSTREAM_TIMEOUT, R.ERR_TIMEOUT)
            else:
                self._app_timed_out("the app stopped reading the request")
            return
        if phase is STREAMING:
            if whole_call and now >= self.deadline:
                self._grpc_deadline()
                return
            # After the head, the deadline becomes a stall limit on the body. A client that
            # reads slowly pauses the app, which is not the app stalling.
            if self.client.write_paused:
                return
            if now - self.last_activity >= self.ctx.settings.request_timeout:
                self._abort_client(R.UPSTREAM_TIMEOUT, R.ERR_TIMEOUT)
            return
        # Not started, over, or a tunnel (which lives as long as its peers want); and an
        # upload in progress is bounded by the client leg's body timeout (the client's time)
        # and the stall limit above (the app's).
        if not WAITING_FOR_APP >> phase & 1 or now < self.deadline:
            return
        if not self.req_done and not whole_call:
            return
        self._app_timed_out("the app did not answer in time")

    def _app_timed_out(self, detail: str) -> None:
        """504: the app's time ran out before the response head."""
        self._cancel_attempt()
        self.rec.upstream_errors.append(R.ERR_TIMEOUT)
        self._verdict(True)
        self.rec.flags.append(R.UPSTREAM_TIMEOUT)
        self.reply(504, detail)

    def _grpc_deadline(self) -> None:
        """A gRPC call's deadline passed after its response head: end it with trailers saying
        DEADLINE_EXCEEDED (the client learns why, rather than seeing a reset), cancel the app's
        stream (RST_STREAM CANCEL), as a gRPC server cancels a call past its deadline."""
        rec = self.rec
        rec.flags.append(R.UPSTREAM_TIMEOUT)
        rec.upstream_errors.append(R.ERR_TIMEOUT)
        rec.grpc_status = G.DEADLINE_EXCEEDED
        self._cancel_attempt()
        self._verdict(G.DEADLINE_EXCEEDED in self.ctx.settings.grpc_failure_statuses)
        self.client.send_end(
            G.local_trailers(G.DEADLINE_EXCEEDED, "sidecar-proxy: deadline exceeded", None)
        )
        self.client.flush()
        self.finish()

    def _on_try_timeout(self, attempt_no: int) -> None:
        self.timer = None
        if attempt_no != self.attempt_no or not WAITING_FOR_APP >> self.phase & 1:
            return
        self._cancel_attempt()
        try:
            self._attempt_failed(Failure.TIMEOUT)
        except IllegalTransition as bug:
            self._aborted(bug)

    def _after_backoff(self) -> None:
        try:
            self._attempt()
        except IllegalTransition as bug:
            self._aborted(bug)

    def _aborted(self, bug: IllegalTransition) -> None:
        """A bug met in a timer, connect or hook callback, where no leg is on the stack to catch it:
        log it and cut the client's connection, whose loss ends the exchange."""
        log.error("exchange aborted", exc_info=bug, extra={"request_id": self.rec.request_id})
        self._cancel_attempt()
        self.client.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _cancel_attempt(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        app = self.app
        if app is not None:
            # Cleared first: a leg may report its loss from abandon() itself, and app_lost must
            # then find this attempt over rather than end the exchange a second time.
            self.app = None
            app.abandon()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # == the client side ==========================================================================

    def client_gone(self) -> None:
        """The client hung up first: stop work for it, never blame the app."""
        if self.phase is DONE:
            return
        rec = self.rec
        if self.phase is not TUNNEL:  # a client closing its tunnel is how tunnels end
            rec.flags.append(R.DOWNSTREAM_DISCONNECT)
        if not self.committed:
            rec.status = R.STATUS_CLIENT_CLOSED
        if self.grpc is not None:
            rec.grpc_status = G.CANCELLED
        self._cancel_attempt()
        self.finish()

    def client_write_paused(self, paused: bool) -> None:
        app = self.app
        if app is not None and self.phase is not RESPONSE_HOOK:  # the hook's wait pauses it
            if paused:
                app.pause_reading()
            else:
                # The stall limits time the app's silence. While the client was not reading, the
                # silence was the client's (see on_tick): the app's time starts again now, not
                # at its last byte, which may be request_timeout old by the time reading resumes.
                now = self.ctx.loop.time()
                self.last_activity = now
                if self.app_stalled_at:
                    self.app_stalled_at = now
                app.resume_reading()

    def app_write_paused(self, paused: bool) -> None:
        if paused:
            self.app_stalled_at = self.ctx.loop.time()
            self.client.pause_request_body()
            return
        self.app_stalled_at = 0.0
        self.client.resume_request_body()
        spool = self.spool
        app = self.app
        if spool is not None and app is not None and self.spool_sent < spool.size:
            self._replay(app, spool)  # may pause the client again

    # == upgrade tunnel ===========================================================================

    def _start_tunnel(self, app: AppLeg, resp: ResponseHead) -> None:
        """101 Switching Protocols: from now on both legs relay raw bytes (RFC 9110 §7.8)."""
        self.rec.status = 101
        self._to(TUNNEL)
        app.start_tunnel()
        added = [] if resp.has_request_id else [self.rid_line]
        self.client.send_head(101, resp, added, False)
        self.client.flush()
        self.client.start_tunnel()
        for data in self.chunks:
            app.send_raw(data)
        self.chunks.clear()

    def tunnel_data_from_app(self, data: bytes) -> None:
        self.rec.bytes_out += len(data)
        self.client.send_raw(data)

    def tunnel_data(self, data: bytes) -> None:
        self.rec.bytes_in += len(data)
        app = self.app
        if self.phase is TUNNEL and app is not None:
            app.send_raw(data)
        else:
            self.chunks.append(data)  # early bytes before the 101; sent when it comes

    # == the end ==================================================================================

    def reply(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        """Answer the client with an error or a rejection of our own, and finish."""
        extra = [(b"Retry-After", b"%d" % retry_after)] if retry_after is not None else None
        self.answer(status, error_body(status, detail), _TEXT, extra)

    def answer(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None,
    ) -> None:
        """Write a complete response of our own (no app involved) and finish; to a gRPC call,
        its gRPC form (:meth:`_grpc_answer`)."""
        if self.grpc is not None:
            code = G.local_code(status, R.LOAD_SHED in self.rec.flags)
            message = "sidecar-proxy: " + body.decode("utf-8", "replace").strip()
            self._grpc_answer(code, message, extra)
            return
        self._local(status, body, content_type, extra)

    def _grpc_answer(
        self, code: int, message: str, extra: list[tuple[bytes, bytes]] | None
    ) -> None:
        """An answer of ours to a gRPC call (PROTOCOL-HTTP2.md, Trailers-Only): HTTP 200,
        content-type application/grpc, grpc-status and grpc-message, no body; a client reports
        it as that status, never as a transport failure. Retry-After becomes
        grpc-retry-pushback-ms."""
        self.rec.grpc_status = code
        pushback = None
        for name, value in extra or ():
            if name == b"Retry-After" and value.isdigit():
                pushback = int(value)
        fields = G.local_trailers(code, message, pushback)
        self._local(200, b"", G.CONTENT_TYPE, [*(extra or ()), *fields])

    def _local(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None,
    ) -> None:
        rec = self.rec
        self._cancel_attempt()
        if rec.attempts and self.ctx.settings.attempts_header:
            extra = [*(extra or ()), (b"X-Sidecar-Attempts", b"%d" % rec.attempts)]
        rec.status = status
        self.client.send_local(status, body, content_type, extra, self.rid_line)
        self.client.flush()
        self.finish()

    def finish(self) -> None:
        self._to(DONE)
        ctx = self.ctx
        self._cancel_attempt()
        if self.admitted:
            self.admitted = False
            ctx.breaker.release()
        if self.limited:
            self.limited = False
            ctx.limiter.release()
        spool = self.spool
        if spool is not None:  # the disk copy never outlives its exchange
            self.spool = None
            spool.close()
        rec = self.rec
        rec.end = _monotonic()
        grpc = self.grpc
        if grpc is not None:
            rec.grpc_requests = grpc.requests.count
            rec.grpc_responses = grpc.responses.count
            if rec.grpc_status < 0:  # cut short: the client saw a reset stream
                rec.grpc_status = G.UNKNOWN
        ctx.recorder.finished(rec)
        self.client.exchange_done(self)
