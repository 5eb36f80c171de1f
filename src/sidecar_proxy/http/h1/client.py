"""The HTTP/1.1 client leg: one accepted connection, parsed with httptools (llhttp) in strict mode.

Connection state lives here; each request's state lives in its
:class:`~sidecar_proxy.http.exchange.Exchange`. Requests are answered strictly in order (HTTP/1.1
pipelining, RFC 9112 §9.3.2): only the first exchange of the queue talks to the app, later ones
wait with reading paused, so a pipelining client cannot make the proxy buffer more than one read.
The connection is therefore the :class:`~sidecar_proxy.http.legs.ClientLeg` of the exchange at
the head of its queue, and frames that exchange's response.

Every rule the proxy enforces on requests (RFC 9112, against request smuggling; size limits; slow
clients) is applied here, before a byte reaches the app. A rejected request still becomes an
exchange, so it is answered in its place in the queue and recorded like any other request;
nothing after it on the connection is ever forwarded.

Reading is paused for several independent reasons at once (the app cannot take more body, a
pipelined request is waiting, an upgrade waits for its 101, a rejection is pending); a bit per
reason keeps one reason's resume from undoing another's pause.

Writes are gathered in ``_out`` while one read from the app is handled and flushed once at its
end, so a small response goes out as one ``writev`` instead of head and body apart.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import Any, Final, cast

import httptools

from sidecar_proxy.http.batch import write_held
from sidecar_proxy.http.context import ProxyContext
from sidecar_proxy.http.exchange import Exchange, new_record
from sidecar_proxy.http.fields import (
    REQ_B3_TRACE_ID,
    REQ_CONNECTION,
    REQ_CONTENT_LENGTH,
    REQ_HOST,
    REQ_IDEMPOTENCY_KEY,
    REQ_REQUEST_ID,
    REQ_TRACEPARENT,
    REQ_TRANSFER_ENCODING,
    REQ_UPGRADE,
    REQ_USER_AGENT,
    REQ_X_FORWARDED_FOR,
    REQ_X_FORWARDED_HOST,
    REQ_X_FORWARDED_PROTO,
    REQUEST_FIELDS,
    RequestHead,
    ResponseHead,
)
from sidecar_proxy.http.framing import CRLF, chunk_size_line, last_chunk
from sidecar_proxy.http.h2.frames import preface_kind
from sidecar_proxy.http.headers import (
    KNOWN_CODINGS,
    end_to_end,
    list_tokens,
    valid_host,
    without_h2c,
)
from sidecar_proxy.http.legs import ClientEvents, Trailers
from sidecar_proxy.http.phase import IllegalTransition
from sidecar_proxy.http.replies import local_reply, status_line
from sidecar_proxy.tls.accept import ServerTLS
from sidecar_proxy.tls.identity import Peer

log = logging.getLogger("sidecar_proxy.exchange")

# reasons reading from the client is paused
_PAUSE_FOR_APP: Final = 1  # the app (or the lack of a connection to it) cannot take more body
_PAUSE_PIPELINE: Final = 2  # a later request is parsed and waits its turn
_PAUSE_UPGRADE: Final = 4  # bytes after an Upgrade request wait for the app's 101
_PAUSE_REJECTED: Final = 8  # the stream is no longer trusted: nothing more is parsed
_PAUSE_STASHED: Final = 16  # bytes of an earlier read are held back unparsed; they go first
# Pauses that hold a request body back on our side: while one is on, a body that stops coming is
# not the client's stall (the exchange times an app that does not read; a request waiting its
# turn is bounded by the one before it).
_HELD_BY_US: Final = _PAUSE_FOR_APP | _PAUSE_PIPELINE

_SLICE: Final = 4096  # how much of a large read is parsed at a time outside a body

# Lingering close: how long, and how much, a closing connection keeps reading and discarding.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 8 * 1024 * 1024

_SUPPORTED_VERSIONS: Final = frozenset({"1.0", "1.1"})
_FORBIDDEN: Final = (403, "the client certificate's identity is not allowed")


class ClientState(enum.IntEnum):
    """What the connection is doing; decides which deadline :meth:`on_tick` checks. The closing
    states come last, so ``state >= LINGERING`` asks "closing?" in one comparison."""

    IDLE = 0  # between requests: client_idle_timeout
    HEAD = 1  # inside a request head: client_header_timeout (slowloris -> 408)
    BODY = 2  # inside a request body: client_body_timeout since the last byte
    BUSY = 3  # request read, response in progress: the exchange's own deadline applies
    TUNNEL = 4  # upgraded: raw bytes both ways, no deadline
    LINGERING = 5  # half-closed, reading and discarding for a bounded time
    CLOSED = 6  # closed, or closing with nothing more to read


# The members as module constants: see sidecar_proxy.http.phase for why.
IDLE: Final = ClientState.IDLE
HEAD: Final = ClientState.HEAD
BODY: Final = ClientState.BODY
BUSY: Final = ClientState.BUSY
TUNNEL: Final = ClientState.TUNNEL
LINGERING: Final = ClientState.LINGERING
CLOSED: Final = ClientState.CLOSED

_PROTO_HTTP = b"X-Forwarded-Proto: http\r\n"
_PROTO_HTTPS = b"X-Forwarded-Proto: https\r\n"


class _Reject(Exception):
    """Raised from a parser callback to stop parsing: this request is answered with an error."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class H1ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_body_in_read",
        "_body_seen",
        "_chunked_out",
        "_deadline",
        "_head_bytes",
        "_keep",
        "_last_body",
        "_linger_left",
        "_linger_until",
        "_max_header_bytes",
        "_max_header_count",
        "_out",
        "_overhead",
        "_parser",
        "_read_block",
        "_sent_final",
        "_sniffed",
        "_stash",
        "_state",
        "_trailers",
        "_unsent",
        "ctx",
        "cur",
        "forwarded_for_line",
        "parsing",
        "peer",
        "proto_line",
        "queue",
        "remote_addr",
        "tls",
        "tls_peer",
        "transport",
        "write_paused",
        "xfcc_line",
    )

    def __init__(self, ctx: ProxyContext, tls: ServerTLS | None = None) -> None:
        self.ctx = ctx
        self.tls = tls
        self.tls_peer: Peer | None = None
        self.proto_line = _PROTO_HTTP
        self.xfcc_line = b""
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.remote_addr = ""
        self.peer = b""
        self.forwarded_for_line = b""
        self.queue: deque[Exchange] = deque()
        self.cur: RequestHead | None = None  # the head being parsed
        self.parsing: Exchange | None = None  # the request whose body is being parsed
        self.write_paused = False
        self._state = IDLE
        self._read_block = 0
        self._head_bytes = 0
        self._body_seen = 0
        self._body_in_read = 0  # body bytes delivered by the current feed
        self._overhead = 0  # bytes of a chunked body since its last body byte that were not body
        self._trailers: Trailers = []  # of the request being parsed
        self._stash = b""  # the unparsed rest of a read, while a pipelined request waits
        self._linger_until = 0.0
        self._linger_left = 0
        self._last_body = 0.0
        self._deadline = 0.0  # when the current wait (IDLE or HEAD) runs out
        # the current head's limits, from the settings when it began (see on_message_begin)
        self._max_header_bytes = ctx.settings.max_header_bytes
        self._max_header_count = ctx.settings.max_header_count
        # the response being written, for the exchange at the head of the queue
        self._out: list[bytes] = []
        self._unsent: list[bytes] = []  # flushed, waiting for the end of the loop's turn
        self._chunked_out = False
        self._keep = False  # the connection stays open after this response
        self._sent_final = False  # bytes of a final response head have left: no retraction
        # the connection's first bytes while they might still be HTTP/2's preface; None after
        self._sniffed: bytes | None = b""

    # == lifecycle =================================================================================

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote_addr = peer[0] if peer else ""
        self.peer = self.remote_addr.encode()
        # what nearly every request forwards: no incoming X-Forwarded-For, just this client
        self.forwarded_for_line = b"X-Forwarded-For: " + self.peer + CRLF
        if self.tls is not None:
            tls_peer = self.tls_peer = self.tls.peer(transport)
            self.xfcc_line = tls_peer.xfcc_line
            self.proto_line = _PROTO_HTTPS
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.metrics.connection_opened()
        # A new connection must start a request as promptly as a started head must finish.
        self._deadline = ctx.loop.time() + ctx.settings.client_header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.metrics.connection_closed()
        for ex in list(self.queue):
            ex.client_gone()
        self.queue.clear()
        self.transport = None

    def eof_received(self) -> bool:
        # Like nginx, a client that closes its sending side has given up on the request: the
        # exchange is cancelled (499) rather than completed for nobody.
        return False

    @property
    def closing(self) -> bool:
        return self._state >= LINGERING

    def close_transport(self) -> None:
        if self._state >= LINGERING:
            return
        self.write_unsent()  # the answer before the close
        t = self.transport
        if (
            t is not None
            and (self._state in (HEAD, BODY) or self._read_block & _PAUSE_REJECTED)
            and t.can_write_eof()
        ):
            # The client may still be sending (a body we answered early, bytes after a rejected
            # request). Closing with them unread makes the kernel reset the connection, which can
            # destroy the answer just written. RFC 9112 §9.6: half-close, read and discard for a
            # while, then close; nginx's lingering_close does the same. A TLS transport cannot
            # half-close; its close() sends close_notify and reads on until the client's, bounded
            # by the TLS listener's shutdown timeout, which serves the same end.
            self._state = LINGERING
            t.write_eof()
            self._linger_until = self.ctx.loop.time() + _LINGER_SECONDS
            self._linger_left = _LINGER_BYTES
            t.resume_reading()
            return
        self._state = CLOSED
        if t is not None:
            t.close()

    def close_if_idle(self) -> bool:
        """Drain: close a keep-alive connection that has no request in progress."""
        if not self.queue and self._state is IDLE:
            self.close_transport()
            return True
        return False

    # == bytes in ==================================================================================

    def data_received(self, data: bytes) -> None:
        if self._sniffed is not None:
            data = self._sniffed + data
            kind = preface_kind(data)
            if kind is None:
                self._sniffed = data  # too few bytes to tell yet
                return
            self._sniffed = None
            if kind and self.transport is not None:
                # HTTP/2 with prior knowledge (RFC 9113 §3.3): the HTTP/2 leg takes over
                self.ctx.connections.discard(self)
                self._state = CLOSED
                transport, self.transport = self.transport, None
                # Imported on the first HTTP/2 connection, not at start-up: a process that
                # never sees one saves the HTTP/2 leg and jh2 (docs/benchmarks.md, "Memory").
                from sidecar_proxy.http.h2.server import take_over  # noqa: PLC0415

                take_over(self.ctx, transport, data, self.proto_line, self.tls_peer)
                return
        state = self._state
        if state is LINGERING:
            self._linger_left -= len(data)  # lingering close: discard, within bounds
            if self._linger_left <= 0 and self.transport is not None:
                self.transport.close()
            return
        if state is TUNNEL:
            if self.queue:
                self.queue[0].tunnel_data(data)
            return
        if self._read_block & _PAUSE_REJECTED:
            return
        if len(data) <= _SLICE or state is BODY:
            self._feed(data)
            return
        # A large read outside a body may hold thousands of pipelined requests. Parse it a slice
        # at a time and stop once a request must wait its turn: the rest stays raw bytes (one
        # read at most) instead of becoming thousands of queued requests.
        pos, size = 0, len(data)
        while pos < size:
            # a body streams on whole
            end = size if self._state is BODY else pos + _SLICE
            self._feed(data[pos:end])
            pos = end
            if pos >= size:
                return
            blocked = self._read_block
            if blocked & _PAUSE_REJECTED:
                return
            if self._state is TUNNEL:
                self.queue[0].tunnel_data(data[pos:])
                return
            if blocked & _PAUSE_UPGRADE and self.parsing is not None:
                self.parsing.tunnel_data(data[pos:])  # held until the app's 101
                return
            if blocked & _PAUSE_PIPELINE:
                self._stash = data[pos:]
                self._pause(_PAUSE_STASHED)
                return

    def _resume_stash(self) -> None:
        """The queue drained: parse the bytes held back, before any new read."""
        data, self._stash = self._stash, b""
        if data and self._state < LINGERING:
            self.data_received(data)
        if not self._stash:
            self._resume(_PAUSE_STASHED)

    def _feed(self, data: bytes) -> None:
        head_before = self.cur if self._state is HEAD else None
        in_body = self._state is BODY
        self._body_in_read = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.detail)
            elif isinstance(cause, IllegalTransition):
                # A bug of ours, not the client's: say so loudly, cut this connection, and keep
                # serving every other one.
                log.error("exchange aborted", exc_info=cause)
                self.abort()
            else:
                raise
        except httptools.HttpParserError as exc:
            detail = _parser_detail(exc)
            self._reject(505 if "HTTP version" in detail else 400, detail)
            return
        if self._state is HEAD:
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
        elif in_body and self._state is BODY:
            # What a chunked body sends that is not body (chunk framing, extensions, trailers)
            # is bounded like a head: httptools holds an unfinished trailer field whole.
            extra = len(data) - self._body_in_read
            self._overhead = extra if self._body_in_read else self._overhead + extra
            if self._overhead > self.ctx.settings.max_header_bytes:
                self._reject(431, "request trailer section too large")

    # == httptools callbacks =======================================================================

    def on_message_begin(self) -> None:
        if self._state >= LINGERING:
            raise _Reject(0, "connection closing")  # stop parsing; nothing more is answered
        self.cur = RequestHead()
        self._state = HEAD
        self._head_bytes = 0
        s = self.ctx.settings
        self._deadline = self.ctx.loop.time() + s.client_header_timeout
        # Read once per request, not once per field: Settings is not a compiled class, so each
        # read of it is a Python attribute lookup (two per field cost ~400 instructions).
        self._max_header_bytes = s.max_header_bytes
        self._max_header_count = s.max_header_count

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
            if self.parsing is not None:
                self._head_bytes += len(name) + len(value) + 4
                if self._head_bytes > self._max_header_bytes:
                    raise _Reject(431, "request trailer section too large")
                if len(self._trailers) >= self._max_header_count:
                    raise _Reject(431, "too many request trailer fields")
                self._trailers.append((name, value))
            return
        cur.header_bytes += len(name) + len(value) + 4
        if cur.header_bytes > self._max_header_bytes:
            raise _Reject(431, "request header section too large")
        cur.header_count += 1
        if cur.header_count > self._max_header_count:
            raise _Reject(431, "too many request header fields")
        low = name.lower()
        kind = REQUEST_FIELDS.get(low)
        if kind is None:  # most fields: forwarded as they are
            cur.lines.append(name + b": " + value + CRLF)
            cur.names.append(low)
            return
        if kind == REQ_HOST:
            cur.host_count += 1
            cur.host = value
            cur.host_line = len(cur.lines)
        elif kind == REQ_USER_AGENT:
            cur.user_agent = value
        elif kind == REQ_TRACEPARENT:
            cur.traceparent = value
        elif kind == REQ_B3_TRACE_ID:
            cur.b3_trace_id = value
        elif kind == REQ_IDEMPOTENCY_KEY:
            cur.idempotency_key = True
        else:  # not forwarded as it is: framing, hop-by-hop, or re-added by the exchange
            if kind == REQ_CONTENT_LENGTH:
                cur.content_length = int(value)  # llhttp has checked digits and duplicates
            elif kind == REQ_TRANSFER_ENCODING:
                cur.transfer_encoding.append(value)
            elif kind == REQ_CONNECTION:
                cur.connection.append(value)
            elif kind == REQ_UPGRADE:
                cur.upgrade = value
            elif kind == REQ_REQUEST_ID:
                cur.request_id = value
            elif kind == REQ_X_FORWARDED_FOR:
                cur.xff = cur.xff + b", " + value if cur.xff else value
            elif kind == REQ_X_FORWARDED_PROTO:
                cur.forwarded_proto = value
            elif kind == REQ_X_FORWARDED_HOST:
                cur.forwarded_host = value
            return
        cur.lines.append(name + b": " + value + CRLF)
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
        peer = self.tls_peer
        problem = _FORBIDDEN if peer is not None and not peer.allowed else self._check(cur)
        has_body = cur.chunked or bool(cur.content_length)
        ex = Exchange(ctx, self, cur, new_record(cur, self.remote_addr, self.tls_peer), has_body)
        self.parsing = ex
        self.queue.append(ex)
        ctx.recorder.started()
        self._trailers = []
        self._head_bytes = 0  # from here on it counts the trailer section, if any
        self._overhead = 0
        if has_body:
            self._state = BODY
            self._body_seen = 0
            self._last_body = ctx.loop.time()
        else:
            self._state = BUSY
        if problem is not None:
            self._pause(_PAUSE_REJECTED)  # before its answer, which must then close
            ex.reject(*problem)
        if len(self.queue) == 1:
            ex.start()
        else:
            self._pause(_PAUSE_PIPELINE)
        if problem is not None:
            raise _Reject(0, problem[1])  # answered in its turn; stop parsing

    def on_body(self, body: bytes) -> None:
        self._body_in_read += len(body)
        ex = self.parsing
        if ex is None or ex.finished:
            return  # answered early (413, 503, ...): the rest of its body is ignored
        self._last_body = self.ctx.loop.time()
        limit = self.ctx.settings.max_request_body_bytes
        if limit:
            self._body_seen += len(body)
            if self._body_seen > limit:
                raise _Reject(413, "request body too large")
        ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        if self._state is BODY:
            self._state = BUSY
        if not ex.req_done:
            ex.request_end(self._trailers)

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
            elif b"h2c" in cur.upgrade.lower():
                # never offered to the app: an upgrade to h2c alone is answered over HTTP/1.1
                cur.upgrade = without_h2c(cur.upgrade)
        target = cur.target
        if target.find(b"#") >= 0:  # not ``in``: see h2/heads.py, _check_fields
            return 400, "a request target has no fragment"  # RFC 9112 §3.2: servers disagree
        if target == b"*":
            if cur.method != b"OPTIONS":
                return 400, "the asterisk target is for OPTIONS only"
        elif target[:1] != b"/":
            return _absolute_form(cur)
        return None

    def _reject(self, status: int, detail: str) -> None:
        """Stop trusting the stream: answer this request with ``status`` in its turn, forward
        nothing after it, and close once the answer is out."""
        self._pause(_PAUSE_REJECTED)
        if status == 0:
            return  # the exchange that carries the rejection already has it
        ex = self.parsing
        if ex is not None and not ex.req_done and not ex.finished:
            ex.reject(status, detail)  # the request whose body was being read is the bad one
            return
        cur = self.cur or RequestHead()
        self.cur = None
        if not cur.method:
            try:
                cur.method = self._parser.get_method()
            except httptools.HttpParserError:
                cur.method = b""
        ex = Exchange(
            self.ctx,
            self,
            cur,
            new_record(cur, self.remote_addr, self.tls_peer),
            body_follows=False,
        )
        ex.reject(status, detail)
        self.parsing = ex
        self.queue.append(ex)
        self.ctx.recorder.started()
        if len(self.queue) == 1:
            ex.start()

    def _upgraded(self, rest: bytes) -> None:
        ex = self.parsing
        if ex is None or not ex.head.upgrade:
            # llhttp stops at anything that looks like an upgrade; if we decided it is not one,
            # parse on with a fresh parser from where it stopped.
            self._parser = httptools.HttpRequestParser(self)
            if rest:
                self.data_received(rest)
            return
        self._pause(_PAUSE_UPGRADE)
        if rest:
            ex.tunnel_data(rest)

    # == the ClientLeg: what the exchange at the head of the queue asks ============================

    def _keep_alive(self, ex: Exchange) -> bool:
        """Whether the connection stays open after ``ex``'s response. A rejected request is
        always the one being parsed; responses before it in the queue still keep it open."""
        head = ex.head
        return (
            head.keep_alive
            and ex.req_done
            and not self.ctx.goodbye  # shutdown has begun: every response says goodbye
            and not head.upgrade
            and not (self._read_block & _PAUSE_REJECTED and ex is self.parsing)
            and self._state < LINGERING
        )

    def send_interim(self, status: int, resp: ResponseHead) -> None:
        """1xx other than 101: relayed to HTTP/1.1 clients (an HTTP/1.0 one would not expect
        it, RFC 9110 §15.2).

        Written at once, not gathered in ``_out``: a 1xx is not the final head, so a flush of it
        must not count as one (``_sent_final``). Otherwise a malformed final response after a
        relayed 100 Continue could no longer be retracted, and the client would get a cut
        connection with no final response instead of a 502 (a 1xx then a 502 is valid HTTP).
        """
        self.write_unsent()
        t = self.transport
        if t is not None and self.queue[0].head.version == "1.1":
            t.write(b"".join([status_line(status, resp.reason), *resp.lines, CRLF]))

    def send_head(
        self, status: int, resp: ResponseHead, added: list[bytes], has_body: bool
    ) -> None:
        ex = self.queue[0]
        h = ex.head
        lines = [status_line(status, resp.reason)]
        lines += end_to_end(resp.lines, resp.names, resp.connection)
        if status == 101:
            lines += [b"Connection: upgrade\r\nUpgrade: ", resp.upgrade or h.upgrade, CRLF]
            lines += added
            lines.append(CRLF)
            self._out.append(b"".join(lines))
            self._sent_final = True
            return
        keep = self._keep_alive(ex)
        if has_body:
            if resp.content_length is not None:
                lines += [b"Content-Length: ", resp.content_length, CRLF]
            elif h.version == "1.1":
                self._chunked_out = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep = False  # HTTP/1.0 client: the end of the body is the end of the connection
        elif resp.content_length is not None and status != 204:
            lines += [b"Content-Length: ", resp.content_length, CRLF]
        lines += added
        if not keep:
            lines.append(b"Connection: close\r\n")
        elif h.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(CRLF)
        self._keep = keep
        self._out.append(b"".join(lines))

    def send_body(self, data: bytes) -> None:
        if self._chunked_out:
            self._out += [chunk_size_line(len(data)), data, CRLF]
        else:
            self._out.append(data)

    def send_end(self, trailers: Trailers | None) -> None:
        if self._chunked_out:
            self._out.append(last_chunk(trailers or ()))

    def send_local(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None,
        request_id_line: bytes,
    ) -> None:
        ex = self.queue[0]
        h = ex.head
        keep = self._keep_alive(ex)
        self._keep = keep
        self._out.append(
            local_reply(
                status,
                body,
                request_id_line=request_id_line,
                close=not keep,
                content_type=content_type,
                extra=extra,
                head_only=h.method == b"HEAD",
            )
        )

    def retract(self) -> bool:
        if self._sent_final:
            return False
        self._out.clear()
        self._chunked_out = False
        return True

    def flush(self) -> None:
        out = self._out
        if out:
            if self.transport is not None:
                if not self._unsent:
                    # Written at the end of the loop's turn with the other responses it
                    # finished, so the client is woken once for all of them (http/batch.py).
                    self.ctx.writes.add(self)
                self._unsent += out
                if len(self._unsent) > len(out):
                    # A second flush this turn: a body streaming in. Write now, so the
                    # transport's buffer limit pauses the app as soon as it did before.
                    self.write_unsent()
                self._sent_final = True
            out.clear()

    def write_unsent(self) -> None:
        """Hand the flushed bytes to the transport; every other write and every close of the
        connection calls this first, so bytes leave in the order they were given."""
        if self._unsent:
            out, self._unsent = self._unsent, []
            write_held(self.transport, out)

    def abort(self) -> None:
        self._out.clear()
        self.close_transport()

    def start_tunnel(self) -> None:
        self._state = TUNNEL
        self._resume(_PAUSE_UPGRADE)

    def send_raw(self, data: bytes) -> None:
        self.write_unsent()
        t = self.transport
        if t is not None:
            t.write(data)

    def pause_request_body(self) -> None:
        self._pause(_PAUSE_FOR_APP)

    def resume_request_body(self) -> None:
        self._resume(_PAUSE_FOR_APP)

    def exchange_done(self, ex: ClientEvents) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        else:  # a queued one, failed with its connection
            for i, queued in enumerate(queue):
                if queued is ex:
                    del queue[i]
                    break
        if self.parsing is ex and ex.req_done:
            self.parsing = None
        keep = self._keep
        self._keep = self._chunked_out = self._sent_final = False
        # Whatever paused reading for this request's body (the app's backpressure, or no app
        # connection yet) ended with it; a keep-alive client must be read again.
        self._resume(_PAUSE_FOR_APP)
        state = self._state
        if state >= LINGERING or self.transport is None:
            return
        if state is TUNNEL or not keep:
            self.close_transport()
            return
        if queue:
            # Not started from here: a run of pipelined requests answered at once would
            # otherwise recurse once per request.
            self.ctx.loop.call_soon(self._start_next)
            return
        self._resume(_PAUSE_PIPELINE)
        if self.ctx.draining:
            self.close_transport()
            return
        if state is BUSY:
            self._state = IDLE
            self._deadline = self.ctx.loop.time() + self.ctx.settings.client_idle_timeout

    def _start_next(self) -> None:
        if self._state >= LINGERING or not self.queue:
            return
        if len(self.queue) == 1:
            self._resume(_PAUSE_PIPELINE)
        try:
            self.queue[0].start()
        except IllegalTransition:
            log.exception("exchange aborted")
            self.abort()

    # == flow control ==============================================================================

    def _pause(self, reason: int) -> None:
        if not self._read_block and self.transport is not None:
            self.transport.pause_reading()
        self._read_block |= reason

    def _resume(self, reason: int) -> None:
        if self._read_block & reason:
            if reason & _HELD_BY_US:
                # the body timeout counts the client's silence from when we read again
                self._last_body = self.ctx.loop.time()
            self._read_block &= ~reason
            if reason == _PAUSE_PIPELINE and self._stash:
                self.ctx.loop.call_soon(self._resume_stash)
            if not self._read_block and self.transport is not None and self._state < LINGERING:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue:
            self.queue[0].client_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue:
            self.queue[0].client_write_paused(False)

    # == deadlines ===============================================================================

    def on_tick(self, now: float) -> None:
        """The context's ticker calls this every TICK seconds for every open connection.

        Deadlines are plain floats checked here rather than timers armed per request: arming
        and cancelling two uvloop timers per request cost more than the rest of the request's
        bookkeeping together, and the deadlines almost never fire.
        """
        state = self._state
        if state >= LINGERING:
            if state is LINGERING and now >= self._linger_until and self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            self.queue[0].on_tick(now)
        if state is BUSY or state is TUNNEL:
            return  # waiting on the app: the exchange's deadline governs
        if state is BODY:
            if self._read_block & _HELD_BY_US:
                return  # we are not reading: the body cannot come
            deadline = self._last_body + self.ctx.settings.client_body_timeout
        else:
            deadline = self._deadline
        if now < deadline:
            return
        if state is IDLE:
            self.close_transport()
        else:
            self._reject(
                408,
                "request header timeout" if state is HEAD else "request body timeout",
            )


def _absolute_form(cur: RequestHead) -> tuple[int, str] | None:
    """RFC 9112 §3.2.2: an absolute-form target is sent on in origin-form, and its authority
    replaces Host."""
    try:
        # Any, not httptools' URL: its stub types every part as bytes (the port as int), but an
        # absent part is None, which the compiled module's type checks would reject.
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
        cur.lines[cur.host_line] = b"Host: " + authority + CRLF
    cur.host = authority
    return None


def _parser_detail(exc: httptools.HttpParserError) -> str:
    detail = str(exc) or type(exc).__name__
    return detail[:100]
