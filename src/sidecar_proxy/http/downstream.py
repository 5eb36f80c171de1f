"""The client leg: one accepted connection, parsed with httptools (llhttp) in strict mode.

Connection state lives here; each request's state lives in its :class:`Forward`. Requests are
answered strictly in order (HTTP/1.1 pipelining, RFC 9112 §9.3.2): only the first Forward of the
queue talks to the app, later ones wait with reading paused, so a pipelining client cannot make
the proxy buffer more than one read.

Every rule the proxy enforces on requests (RFC 9112, against request smuggling; size limits; slow
clients) is applied here, before a byte reaches the app. A rejected request still becomes a
Forward, so it is answered in its place in the queue and recorded like any other request; nothing
after it on the connection is ever forwarded.

Reading is paused for several independent reasons at once (the app cannot take more body, a
pipelined request is waiting, an upgrade waits for its 101, a rejection is pending); a bit per
reason keeps one reason's resume from undoing another's pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, cast

import httptools

from sidecar_proxy.http.context import ProxyContext
from sidecar_proxy.http.forward import Forward
from sidecar_proxy.http.headers import (
    HOP_BY_HOP,
    KNOWN_CODINGS,
    list_tokens,
    new_request_id,
    valid_host,
    valid_request_id,
)
from sidecar_proxy.http.request import RequestHead
from sidecar_proxy.observe import exchange as X
from sidecar_proxy.observe.exchange import Exchange
from sidecar_proxy.observe.tracecontext import trace_id

# reasons reading from the client is paused
_FOR_APP = 1  # the app (or the lack of a connection to it) cannot take more request body
_PIPELINE = 2  # a later request is parsed and waits its turn
_UPGRADE = 4  # bytes after an Upgrade request wait for the app's 101
_REJECTED = 8  # the stream is no longer trusted: nothing more is parsed
_STASHED = 16  # bytes of an earlier read are held back unparsed; they go first

_SLICE = 4096  # how much of a large read is parsed at a time outside a body

# Lingering close: how long, and how much, a closing connection keeps reading and discarding.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 8 * 1024 * 1024

# what the connection is waiting for; decides which deadline on_tick checks
_IDLE = 0  # between requests: client_idle_timeout
_HEAD = 1  # inside a request head: client_header_timeout (slowloris -> 408)
_BODY = 2  # inside a request body: client_body_timeout since the last byte
_BUSY = 3  # request read, response in progress: the Forward's own deadline applies

_SUPPORTED_VERSIONS = frozenset({"1.0", "1.1"})

# Request fields the client leg reads or rewrites; any other field is forwarded as it is, so the
# common header costs one dict lookup. Hop-by-hop fields not listed otherwise are dropped (_HOP).
(
    _HOST,
    _CONTENT_LENGTH,
    _TRANSFER_ENCODING,
    _CONNECTION,
    _UPGRADE,
    _HOP,
    _USER_AGENT,
    _TRACEPARENT,
    _B3,
    _IDEMPOTENCY_KEY,
    _REQUEST_ID,
    _XFF,
    _XF_PROTO,
    _XF_HOST,
) = range(14)
_REQUEST_FIELDS = {
    **dict.fromkeys(HOP_BY_HOP, _HOP),
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
    b"user-agent": _USER_AGENT,
    b"traceparent": _TRACEPARENT,
    b"x-b3-traceid": _B3,
    b"idempotency-key": _IDEMPOTENCY_KEY,
    b"x-request-id": _REQUEST_ID,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XF_PROTO,
    b"x-forwarded-host": _XF_HOST,
}


class _Reject(Exception):
    """Raised from a parser callback to stop parsing: this request is answered with an error."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class DownstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_body_in_read",
        "_body_seen",
        "_deadline",
        "_head_bytes",
        "_last_body",
        "_linger_left",
        "_linger_until",
        "_overhead",
        "_parser",
        "_read_block",
        "_stash",
        "_state",
        "closing",
        "ctx",
        "cur",
        "parsing",
        "peer",
        "queue",
        "remote_addr",
        "transport",
        "tunnel",
        "write_paused",
        "xff_line",
    )

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.remote_addr = ""
        self.peer = b""
        self.xff_line = b""
        self.queue: deque[Forward] = deque()
        self.cur: RequestHead | None = None  # the head being parsed
        self.parsing: Forward | None = None  # the request whose body is being parsed
        self.tunnel: Forward | None = None
        self.write_paused = False
        self.closing = False
        self._read_block = 0
        self._state = _IDLE
        self._head_bytes = 0
        self._body_seen = 0
        self._body_in_read = 0  # body bytes delivered by the current feed
        self._overhead = 0  # bytes of a chunked body since its last body byte that were not body
        self._stash = b""  # the unparsed rest of a read, while a pipelined request waits
        self._linger_until = 0.0  # set while closing lingers (see close_transport)
        self._linger_left = 0
        self._last_body = 0.0
        self._deadline = 0.0  # when the current wait (_IDLE or _HEAD) runs out

    # == lifecycle =================================================================================

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote_addr = peer[0] if peer else ""
        self.peer = self.remote_addr.encode()
        # what nearly every request forwards: no incoming X-Forwarded-For, just this client
        self.xff_line = b"X-Forwarded-For: " + self.peer + b"\r\n"
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.metrics.connection_opened()
        # A new connection must start a request as promptly as a started head must finish.
        self._deadline = ctx.loop.time() + ctx.settings.client_header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.metrics.connection_closed()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel_client_closed()
        for fwd in list(self.queue):
            fwd.client_gone()
        self.queue.clear()
        self.transport = None

    def eof_received(self) -> bool:
        # Like nginx, a client that closes its sending side has given up on the request: the
        # exchange is cancelled (499) rather than completed for nobody.
        return False

    def close_transport(self) -> None:
        if self.closing:
            return
        self.closing = True
        t = self.transport
        if t is None:
            return
        if self._state in (_HEAD, _BODY) or self._read_block & _REJECTED:
            # The client may still be sending (a body we answered early, bytes after a rejected
            # request). Closing with them unread makes the kernel reset the connection, which can
            # destroy the answer just written. RFC 9112 §9.6: half-close, read and discard for a
            # while, then close; nginx's lingering_close does the same.
            t.write_eof()
            self._linger_until = self.ctx.loop.time() + _LINGER_SECONDS
            self._linger_left = _LINGER_BYTES
            t.resume_reading()
        else:
            t.close()

    def close_if_idle(self) -> bool:
        """Drain: close a keep-alive connection that has no request in progress."""
        if not self.queue and self.tunnel is None and self._state == _IDLE:
            self.close_transport()
            return True
        return False

    # == bytes in ==================================================================================

    def data_received(self, data: bytes) -> None:
        if self._linger_until:
            self._linger_left -= len(data)  # lingering close: discard, within bounds
            if self._linger_left <= 0 and self.transport is not None:
                self.transport.close()
            return
        if self.tunnel is not None:
            self.tunnel.tunnel_from_client(data)
            return
        if self._read_block & _REJECTED:
            return
        if len(data) <= _SLICE or self._state == _BODY:
            self._feed(data)
            return
        # A large read outside a body may hold thousands of pipelined requests. Parse it a slice
        # at a time and stop once a request must wait its turn: the rest stays raw bytes (one
        # read at most) instead of becoming thousands of queued requests.
        pos, size = 0, len(data)
        while pos < size:
            end = size if self._state == _BODY else pos + _SLICE  # a body streams on whole
            self._feed(data[pos:end])
            pos = end
            if pos >= size:
                return
            blocked = self._read_block
            if blocked & _REJECTED:
                return
            if self.tunnel is not None:
                self.tunnel.tunnel_from_client(data[pos:])
                return
            if blocked & _UPGRADE and self.parsing is not None:
                self.parsing.tunnel_from_client(data[pos:])  # held until the app's 101
                return
            if blocked & _PIPELINE:
                self._stash = data[pos:]
                self._block(_STASHED)
                return

    def _resume_stash(self) -> None:
        """The queue drained: parse the bytes held back, before any new read."""
        data, self._stash = self._stash, b""
        if data and not self.closing:
            self.data_received(data)
        if not self._stash:
            self._unblock(_STASHED)

    def _feed(self, data: bytes) -> None:
        head_before = self.cur if self._state == _HEAD else None
        in_body = self._state == _BODY
        self._body_in_read = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.detail)
            else:
                raise
        except httptools.HttpParserError as exc:
            detail = _parser_detail(exc)
            self._reject(505 if "HTTP version" in detail else 400, detail)
            return
        if self._state == _HEAD:
            # httptools holds an unfinished head until it is complete, so bound what one may
            # take. An unfinished head holds no blank line, so within this read it starts after
            # the last CRLFCRLF: an upper bound that never charges it for earlier requests.
            if head_before is not None and head_before is self.cur:
                self._head_bytes += len(data)  # the same head, still unfinished
            else:
                self._head_bytes = len(data) - (data.rfind(b"\r\n\r\n") + 4)
            s = self.ctx.settings
            if self._head_bytes > s.max_header_bytes + s.max_url_bytes:
                self._reject(431, "request header section too large")
        elif in_body and self._state == _BODY:
            # What a chunked body sends that is not body (chunk framing, extensions, trailers)
            # is bounded like a head: httptools holds an unfinished trailer field whole.
            extra = len(data) - self._body_in_read
            self._overhead = extra if self._body_in_read else self._overhead + extra
            if self._overhead > self.ctx.settings.max_header_bytes:
                self._reject(431, "request trailer section too large")

    # == httptools callbacks =======================================================================

    def on_message_begin(self) -> None:
        if self.closing:
            raise _Reject(0, "connection closing")  # stop parsing; nothing more is answered
        self.cur = RequestHead()
        self._state = _HEAD
        self._head_bytes = 0
        self._deadline = self.ctx.loop.time() + self.ctx.settings.client_header_timeout

    def on_url(self, url: bytes) -> None:
        cur = self.cur
        assert cur is not None
        if not cur.method:
            cur.method = self._parser.get_method()
        cur.target += url
        if len(cur.target) > self.ctx.settings.max_url_bytes:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        cur = self.cur
        if cur is None:  # a trailer field after a chunked body: bounded like the header section
            fwd = self.parsing
            if fwd is not None:
                s = self.ctx.settings
                self._head_bytes += len(name) + len(value) + 4
                if self._head_bytes > s.max_header_bytes:
                    raise _Reject(431, "request trailer section too large")
                if len(fwd.req_trailers) >= s.max_header_count:
                    raise _Reject(431, "too many request trailer fields")
                fwd.req_trailers.append((name, value))
            return
        s = self.ctx.settings
        cur.header_bytes += len(name) + len(value) + 4
        if cur.header_bytes > s.max_header_bytes:
            raise _Reject(431, "request header section too large")
        cur.header_count += 1
        if cur.header_count > s.max_header_count:
            raise _Reject(431, "too many request header fields")
        low = name.lower()
        kind = _REQUEST_FIELDS.get(low)
        if kind is None:  # most fields: forwarded as they are
            cur.lines.append(name + b": " + value + b"\r\n")
            cur.names.append(low)
            return
        if kind == _HOST:
            cur.host_count += 1
            cur.host = value
            cur.host_line = len(cur.lines)
        elif kind == _CONTENT_LENGTH:
            cur.content_length = int(value)  # llhttp has checked digits and duplicates
            return  # framing is the Forward's to set
        elif kind == _TRANSFER_ENCODING:
            cur.transfer_encoding.append(value)
            return
        elif kind == _CONNECTION:
            cur.connection.append(value)
            return
        elif kind == _UPGRADE:
            cur.upgrade = value
            return
        elif kind == _HOP:
            return
        elif kind == _USER_AGENT:
            cur.user_agent = value
        elif kind == _TRACEPARENT:
            cur.traceparent = value
        elif kind == _B3:
            cur.b3_trace_id = value
        elif kind == _IDEMPOTENCY_KEY:
            cur.idempotency_key = True
        elif kind == _REQUEST_ID:
            cur.request_id = value
            return  # re-added by the Forward, exactly once
        elif kind == _XFF:
            cur.xff = cur.xff + b", " + value if cur.xff else value
            return  # re-added with the client's address appended
        elif kind == _XF_PROTO:
            cur.forwarded_proto = value
            return
        else:
            cur.forwarded_host = value
            return
        cur.lines.append(name + b": " + value + b"\r\n")
        cur.names.append(low)

    def on_headers_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        self.cur = None
        parser = self._parser
        ctx = self.ctx
        cur.version = parser.get_http_version()
        cur.keep_alive = parser.should_keep_alive()
        if not cur.method:
            cur.method = parser.get_method()
        fwd = Forward(self, cur, self._exchange(cur))
        self.parsing = fwd
        self.queue.append(fwd)
        ctx.recorder.started()
        problem = self._check(cur)
        if problem is not None:
            fwd.rejected = problem
            cur.keep_alive = False
        has_body = cur.chunked or bool(cur.content_length)
        fwd.req_done = not has_body  # so an answer given at once can keep the connection
        self._head_bytes = 0  # from here on it counts the trailer section, if any
        self._overhead = 0
        if has_body:
            self._state = _BODY
            self._body_seen = 0
            self._last_body = ctx.loop.time()
        else:
            self._state = _BUSY
        if len(self.queue) == 1:
            fwd.start()
        else:
            self._block(_PIPELINE)
        if problem is not None:
            raise _Reject(0, problem[1])  # already answered in its turn; stop parsing

    def on_body(self, body: bytes) -> None:
        self._body_in_read += len(body)
        fwd = self.parsing
        if fwd is None or fwd.finished:
            return  # answered early (413, 503, ...): the rest of its body is ignored
        self._last_body = self.ctx.loop.time()
        limit = self.ctx.settings.max_request_body_bytes
        if limit:
            self._body_seen += len(body)
            if self._body_seen > limit:
                raise _Reject(413, "request body too large")
        fwd.request_body(body)

    def on_message_complete(self) -> None:
        fwd = self.parsing
        if fwd is None:
            return
        if self._state == _BODY:
            self._state = _BUSY
        if fwd.req_done:
            return
        if fwd.finished:
            fwd.req_done = True
        else:
            fwd.request_end(fwd.req_trailers)

    # == checks ====================================================================================

    def _check(self, cur: RequestHead) -> tuple[int, str] | None:
        """The RFC 9112 rules llhttp leaves to us; None when the request may be forwarded."""
        if cur.version not in _SUPPORTED_VERSIONS:
            return 505, f"HTTP/{cur.version} is not supported"
        if cur.host_count > 1 or (cur.version == "1.1" and cur.host_count == 0):
            return 400, "an HTTP/1.1 request needs exactly one Host header"
        if cur.host_count and not valid_host(cur.host):
            return 400, "invalid Host header"
        if cur.method == b"CONNECT":
            return 501, "CONNECT is not supported by a reverse proxy"
        if cur.transfer_encoding:
            if cur.version == "1.0":
                # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
                return 400, "Transfer-Encoding in an HTTP/1.0 request"
            codings = list_tokens(cur.transfer_encoding)
            if codings[-1] != b"chunked":
                return 400, "chunked must be the final transfer coding"
            if len(codings) > 1:
                unknown = not all(c in KNOWN_CODINGS for c in codings)
                return (
                    501,
                    "unknown transfer coding" if unknown else "transfer coding not supported",
                )
            cur.chunked = True
        limit = self.ctx.settings.max_request_body_bytes
        if limit and cur.content_length is not None and cur.content_length > limit:
            return 413, "request body too large"
        if cur.upgrade:
            if b"upgrade" not in list_tokens(cur.connection) or cur.version != "1.1":
                cur.upgrade = b""  # not an upgrade request after all (RFC 9110 §7.8)
            elif cur.upgrade.lower().startswith(b"h2c"):
                cur.upgrade = b""  # no HTTP/2 towards the app; answer over HTTP/1.1
        target = cur.target
        if b"#" in target:
            return 400, "a request target has no fragment"  # RFC 9112 §3.2: servers disagree
        if target == b"*":
            if cur.method != b"OPTIONS":
                return 400, "the asterisk target is for OPTIONS only"
        elif target[:1] != b"/":
            return self._absolute_form(cur)
        return None

    @staticmethod
    def _absolute_form(cur: RequestHead) -> tuple[int, str] | None:
        """RFC 9112 §3.2.2: an absolute-form target is sent on in origin-form, and its
        authority replaces Host."""
        try:
            # Any, not httptools' URL: its stub types every part as bytes (the port as int), but
            # an absent part is None, which the compiled module's type checks would reject.
            url: Any = httptools.parse_url(cur.target)
        except httptools.HttpParserInvalidURLError:
            return 400, "malformed request target"
        if url.schema not in (b"http", b"https") or not url.host:
            return 400, "malformed request target"
        if url.userinfo:
            return 400, "userinfo in the request target"  # RFC 9110 §4.2.4
        cur.target = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        authority = url.host + (b":%d" % url.port if url.port else b"")
        if cur.host_line >= 0:
            cur.lines[cur.host_line] = b"Host: " + authority + b"\r\n"
        cur.host = authority
        return None

    def _exchange(self, cur: RequestHead) -> Exchange:
        # Not loop.time(): uvloop's is libuv's cached millisecond clock, too coarse for the
        # 1 ms histogram bucket. Timers still use loop.time(); only measurements use this.
        ex = Exchange(time.monotonic(), time.time(), self.remote_addr)
        ex.method = cur.method.decode("latin-1")
        path, q, _ = cur.target.partition(b"?")
        ex.path = path.decode("latin-1")
        ex.has_query = bool(q)
        ex.user_agent = cur.user_agent.decode("latin-1")
        rid = cur.request_id
        ex.request_id = rid.decode("ascii") if valid_request_id(rid) else new_request_id()
        ex.trace_id, _ = trace_id(cur.traceparent, cur.b3_trace_id, ex.request_id)
        return ex

    def _reject(self, status: int, detail: str) -> None:
        """Stop trusting the stream: answer this request with ``status`` in its turn, forward
        nothing after it, and close once the answer is out."""
        self._block(_REJECTED)
        if status == 0:
            return  # the Forward that carries the rejection already exists
        fwd = self.parsing
        if fwd is not None and not fwd.req_done and not fwd.finished:
            # the request whose body was being read is the bad one
            flag = X.DOWNSTREAM_TIMEOUT if status == 408 else X.DOWNSTREAM_PROTOCOL_ERROR
            fwd.ex.flags.append(flag)
            fwd.head.keep_alive = False
            if self.queue and fwd is self.queue[0]:
                if fwd.committed:
                    fwd.out.clear()
                    self.close_transport()
                    fwd.client_gone()
                else:
                    fwd.reply(status, detail)
            else:
                fwd.rejected = (status, detail)
            return
        cur = self.cur or RequestHead()
        self.cur = None
        cur.keep_alive = False
        if not cur.method:
            try:
                cur.method = self._parser.get_method()
            except httptools.HttpParserError:
                cur.method = b""
        fwd = Forward(self, cur, self._exchange(cur))
        fwd.rejected = (status, detail)
        self.parsing = fwd
        self.queue.append(fwd)
        self.ctx.recorder.started()
        if len(self.queue) == 1:
            fwd.start()

    def _upgraded(self, rest: bytes) -> None:
        fwd = self.parsing
        if fwd is None or not fwd.head.upgrade:
            # llhttp stops at anything that looks like an upgrade; if we decided it is not one,
            # parse on with a fresh parser from where it stopped.
            self._parser = httptools.HttpRequestParser(self)
            if rest:
                self.data_received(rest)
            return
        self._block(_UPGRADE)
        if rest:
            fwd.tunnel_from_client(rest)

    def start_tunnel(self, fwd: Forward) -> None:
        self.tunnel = fwd
        self._state = _BUSY
        self._unblock(_UPGRADE)

    # == the Forward reports back ==================================================================

    def forward_done(self, fwd: Forward) -> None:
        queue = self.queue
        if queue and queue[0] is fwd:
            queue.popleft()
        else:
            with contextlib.suppress(ValueError):
                queue.remove(fwd)
        if self.parsing is fwd and fwd.req_done:
            self.parsing = None
        # Whatever paused reading for this request's body (the app's backpressure, or no app
        # connection yet) ended with it; a keep-alive client must be read again.
        self._unblock(_FOR_APP)
        if self.closing or self.transport is None:
            return
        if fwd.tunnel:
            return
        if not fwd.keep_client:
            self.close_transport()
            return
        if queue:
            # Not started from here: a run of pipelined requests answered at once would
            # otherwise recurse once per request.
            self.ctx.loop.call_soon(self._start_next)
            return
        self._unblock(_PIPELINE)
        if self.ctx.draining:
            self.close_transport()
            return
        if self._state == _BUSY:
            self._state = _IDLE
            self._deadline = self.ctx.loop.time() + self.ctx.settings.client_idle_timeout

    def _start_next(self) -> None:
        if self.closing or not self.queue:
            return
        if len(self.queue) == 1:
            self._unblock(_PIPELINE)
        self.queue[0].start()

    # == flow control ==============================================================================

    def _block(self, reason: int) -> None:
        if not self._read_block and self.transport is not None:
            self.transport.pause_reading()
        self._read_block |= reason

    def _unblock(self, reason: int) -> None:
        if self._read_block & reason:
            self._read_block &= ~reason
            if reason == _PIPELINE and self._stash:
                self.ctx.loop.call_soon(self._resume_stash)
            if not self._read_block and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def block_reading_for_app(self) -> None:
        self._block(_FOR_APP)

    def unblock_reading_for_app(self) -> None:
        self._unblock(_FOR_APP)

    def pause_writing(self) -> None:
        self.write_paused = True
        fwd = self.tunnel or (self.queue[0] if self.queue else None)
        if fwd is not None:
            fwd.client_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        fwd = self.tunnel or (self.queue[0] if self.queue else None)
        if fwd is not None:
            fwd.client_write_paused(False)

    # == deadlines ===============================================================================

    def on_tick(self, now: float) -> None:
        """The context's ticker calls this every TICK seconds for every open connection.

        Deadlines are plain floats checked here rather than timers armed per request: arming
        and cancelling two uvloop timers per request cost more than the rest of the request's
        bookkeeping together, and the deadlines almost never fire.
        """
        if self.closing:
            if self._linger_until and now >= self._linger_until and self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            self.queue[0].on_tick(now)
        state = self._state
        if state == _BUSY:
            return  # waiting on the app: the Forward's deadline governs
        if state == _BODY:
            deadline = self._last_body + self.ctx.settings.client_body_timeout
        else:
            deadline = self._deadline
        if now < deadline:
            return
        if state == _IDLE:
            self.close_transport()
        else:
            self._reject(
                408, "request header timeout" if state == _HEAD else "request body timeout"
            )


def _parser_detail(exc: httptools.HttpParserError) -> str:
    detail = str(exc) or type(exc).__name__
    return detail[:100]
