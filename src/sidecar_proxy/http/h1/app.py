"""The HTTP/1.1 app leg: one TCP connection to the app, parsing its responses with httptools.

The protocol moves bytes and frames the request; every event goes to the exchange bound to the
connection (an :class:`~sidecar_proxy.http.legs.AppEvents`), which decides what it means. Between
exchanges the connection sits in the pool unbound; any byte or parser event then is a protocol
violation and the connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Final, Protocol, cast

import httptools

from sidecar_proxy.http.batch import write_held
from sidecar_proxy.http.fields import (
    RESP_CONNECTION,
    RESP_CONTENT_LENGTH,
    RESP_REQUEST_ID,
    RESP_RETRY_AFTER,
    RESP_TRANSFER_ENCODING,
    RESP_UPGRADE,
    RESPONSE_FIELDS,
    RequestHead,
    ResponseHead,
)
from sidecar_proxy.http.framing import CRLF, chunk_size_line, last_chunk
from sidecar_proxy.http.headers import end_to_end
from sidecar_proxy.http.legs import AppEvents, Trailers
from sidecar_proxy.http.phase import IllegalTransition

log = logging.getLogger("sidecar_proxy.exchange")


class Home(Protocol):
    """Where a connection goes back between exchanges (the pool), and the limits it keeps."""

    @property
    def max_head_bytes(self) -> int: ...

    @property
    def max_header_count(self) -> int: ...

    def release(self, conn: H1AppConnection) -> None: ...

    def forget(self, conn: H1AppConnection) -> None: ...

    def defer_write(self, conn: H1AppConnection) -> None:
        """Call ``conn.write_unsent()`` once the loop has run the callbacks of this read."""


class AppState(enum.IntEnum):
    IDLE = 0  # unbound: fresh, or in the pool
    WAITING = 1  # bound; the request is (being) sent, no response byte yet
    HEAD = 2  # inside a response head
    BODY = 3  # inside a response body (or its trailers)
    DONE = 4  # the bound exchange's response is complete; release follows
    TUNNEL = 5  # after a 101: raw bytes both ways
    CLOSED = 6  # closed, or unfit for reuse: never pooled again


# The members as module constants: see sidecar_proxy.http.phase for why.
IDLE: Final = AppState.IDLE
WAITING: Final = AppState.WAITING
HEAD: Final = AppState.HEAD
BODY: Final = AppState.BODY
DONE: Final = AppState.DONE
TUNNEL: Final = AppState.TUNNEL
CLOSED: Final = AppState.CLOSED


class H1AppConnection(asyncio.Protocol):
    __slots__ = (
        "_chunked",
        "_feeding",
        "_head_request",
        "_parser",
        "_release_pending",
        "_resp",
        "_state",
        "_trailers",
        "_unsent",
        "body_in_read",
        "events",
        "head_bytes",
        "idle_since",
        "pool",
        "reset_parser",
        "transport",
        "write_paused",
    )

    def __init__(self, pool: Home) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.events: AppEvents | None = None
        self._state = IDLE
        self._resp = ResponseHead()  # the response being parsed, or the last one
        self._trailers: Trailers | None = None
        self._unsent: list[bytes] = []  # a request waiting for the end of the loop's read batch
        self._head_request = False  # the request was HEAD: its response has no body
        self._chunked = False  # the request body is sent chunked
        self.idle_since = 0.0
        self.reset_parser = False  # the parser was left mid-message (HEAD): replace on reuse
        self.write_paused = False
        self.head_bytes = 0  # bytes of the head, then of non-body framing, held by the parser
        self.body_in_read = 0
        self._feeding = False
        self._release_pending = False

    # -- lifecycle ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        events = self.events
        if events is not None:
            self.events = None
            events.app_lost(self, exc)
        else:
            self.pool.forget(self)

    def eof_received(self) -> bool:
        events = self.events
        if events is not None and self._state is not DONE:
            events.app_eof(self)
        return False  # close our side too: an app that half-closes is done with us

    @property
    def tunneling(self) -> bool:
        return self._state is TUNNEL

    def usable(self) -> bool:
        t = self.transport
        return self._state is IDLE and t is not None and not t.is_closing()

    def close(self) -> None:
        self._state = CLOSED
        self._unsent = []  # nobody waits for the request any more
        if self.transport is not None:
            self.transport.close()

    # -- the AppLeg: what the exchange asks ----------------------------------------------------

    def bind(self, events: AppEvents) -> None:
        self.events = events
        self._state = WAITING
        if self.reset_parser:
            self._parser = httptools.HttpResponseParser(self)
            self.reset_parser = False

    def send_request(
        self,
        head: RequestHead,
        added: list[bytes],
        body: list[bytes],
        end: Trailers | None,
    ) -> None:
        t = self.transport
        if t is None:
            return
        self._head_request = head.method == b"HEAD"
        self._chunked = chunked = head.chunked
        lines = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
        lines += end_to_end(head.lines, head.names, head.connection)
        lines += added
        if head.upgrade:
            lines += [b"Connection: upgrade\r\nUpgrade: ", head.upgrade, CRLF]
        if chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif head.content_length is not None:
            lines.append(b"Content-Length: %d\r\n" % head.content_length)
        lines.append(CRLF)
        out = [b"".join(lines)]
        for data in body:
            if chunked:
                out += [chunk_size_line(len(data)), data, CRLF]
            else:
                out.append(data)
        if end is not None and chunked:
            out.append(last_chunk(end))
        # Written at the end of the loop's turn with the other requests it started, so the app
        # is woken once for all of them (see http/batch.py).
        if not self._unsent:
            self.pool.defer_write(self)
        self._unsent += out

    def write_unsent(self) -> None:
        """Hand the deferred request to the transport; anything later on this connection goes
        after it, so every other write calls this first."""
        if self._unsent:
            out, self._unsent = self._unsent, []
            write_held(self.transport, out)

    def send_body(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            return
        self.write_unsent()  # written now, not gathered: the transport's buffer limits apply
        if self._chunked:
            t.writelines([chunk_size_line(len(data)), data, CRLF])
        else:
            t.write(data)

    def send_end(self, trailers: Trailers) -> None:
        self.write_unsent()
        if self._chunked and self.transport is not None:
            self.transport.write(last_chunk(trailers))

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def release(self, complete: bool) -> None:
        """Pool the connection if the exchange was complete and the app keeps it alive.

        A HEAD response leaves llhttp expecting a body we know will not come, so the parser is
        replaced before the next exchange. When called from inside a parser callback the release
        waits until ``feed_data`` returns: bytes after the response in the same read must mark
        the connection unfit before anyone can take it from the pool.
        """
        self.events = None
        # IDLE: never bound (a connection that came after its requester gave up); else the
        # app's response said whether it keeps the connection.
        if not complete or (self._state is not IDLE and not self._resp.keep_alive):
            self.close()
            return
        self.reset_parser = self._head_request
        self._state = DONE
        if self._feeding:
            self._release_pending = True
        else:
            self._release()

    def _release(self) -> None:
        if self.write_paused or self._state is not DONE:
            self.close()
            return
        self._state = IDLE
        self.pool.release(self)

    def abandon(self) -> None:
        self.events = None
        self.close()

    def start_tunnel(self) -> None:
        self._state = TUNNEL

    def send_raw(self, data: bytes) -> None:
        self.write_unsent()
        if self.transport is not None:
            self.transport.write(data)

    # -- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        events = self.events
        if events is None:
            self.close()  # bytes from an idle connection: the app is confused, drop it
            return
        if self._state is TUNNEL:
            events.tunnel_data_from_app(data)
            return
        in_body = self._state is BODY
        self.body_in_read = 0
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._feeding = False
            if self.tunneling and self.events is not None:
                rest = data[exc.args[0] :]
                if rest:
                    self.events.tunnel_data_from_app(rest)
            else:
                self._protocol_error("unexpected upgrade")
            return
        except httptools.HttpParserCallbackError as exc:
            self._feeding = False
            self._release_pending = False
            cause = exc.__context__
            if isinstance(cause, IllegalTransition):
                # A bug of ours, not the app's: say so loudly and cut this connection (the
                # exchange hears of it through connection_lost); every other one goes on.
                log.error("exchange aborted", exc_info=cause)
                self.close()
                return
            self._protocol_error(str(exc))
            return
        except httptools.HttpParserError as exc:
            self._feeding = False
            self._release_pending = False
            self._protocol_error(str(exc))
            return
        self._feeding = False
        state = self._state
        if state is HEAD:
            # httptools holds an unfinished head until it is complete: bound it like the
            # client's (an upper bound: every read that ended inside it counts whole).
            self.head_bytes += len(data)
            if self.head_bytes > self.pool.max_head_bytes:
                self._release_pending = False
                self._protocol_error("response head too large")
                return
        elif in_body and state is BODY:
            # Chunk framing and trailers are not body; bounded the same way, since httptools
            # holds an unfinished trailer field whole.
            extra = len(data) - self.body_in_read
            self.head_bytes = extra if self.body_in_read else self.head_bytes + extra
            if self.head_bytes > self.pool.max_head_bytes:
                self._protocol_error("response trailer section too large")
                return
        if self._release_pending:
            self._release_pending = False
            self._release()
        elif self.events is not None:
            self.events.read_done()

    def _protocol_error(self, reason: str) -> None:
        events = self.events
        self.events = None
        self.close()
        if events is not None:
            events.app_protocol_error(self, reason)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head_bytes = 0
        if self.events is None or self._state is not WAITING:
            self._state = CLOSED  # a second response to one request
            return
        self._state = HEAD
        self._resp = ResponseHead()
        self._trailers = None

    def on_status(self, reason: bytes) -> None:
        if self._state is HEAD:
            self._resp.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state is not HEAD:
            if self._state is BODY:  # trailers after a chunked body
                self._trailer(name, value)
            return
        resp = self._resp
        low = name.lower()
        kind = RESPONSE_FIELDS.get(low)
        if kind is not None:
            if kind == RESP_REQUEST_ID:
                resp.has_request_id = True
            elif kind == RESP_RETRY_AFTER:
                resp.retry_after = value
            else:  # framing and hop-by-hop fields are the proxy's to set
                if kind == RESP_CONTENT_LENGTH:
                    resp.content_length = value  # llhttp has validated the digits
                elif kind == RESP_CONNECTION:
                    resp.connection = _added(resp.connection, value)
                elif kind == RESP_TRANSFER_ENCODING:
                    resp.transfer_encoding = _added(resp.transfer_encoding, value)
                elif kind == RESP_UPGRADE:
                    resp.upgrade = value
                return
        resp.lines.append(name + b": " + value + CRLF)
        resp.names.append(low)

    def _trailer(self, name: bytes, value: bytes) -> None:
        trailers = self._trailers
        if trailers is None:
            trailers = self._trailers = []
        elif len(trailers) >= self.pool.max_header_count:
            raise ValueError("too many trailer fields")  # a protocol error of the app's
        trailers.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self._resp
        events = self.events
        if self._state is not HEAD or events is None:
            return
        p = self._parser
        resp.status = p.get_status_code()
        resp.keep_alive = p.should_keep_alive()
        self._state = BODY
        events.response_head(self, resp)

    def on_body(self, body: bytes) -> None:
        self.body_in_read += len(body)
        if self._state is BODY and self.events is not None:
            self.events.response_body(body)
        else:
            self._state = CLOSED  # body bytes after we considered the response complete

    def on_message_complete(self) -> None:
        events = self.events
        if self._state is not BODY or events is None:
            return
        status = self._resp.status
        if 100 <= status < 200 and status != 101:
            self._state = WAITING  # a 1xx is over; the final response follows
            events.response_end(self, None)
            return
        events.response_end(self, self._trailers)

    # -- flow control: the client leg pauses us when it cannot keep up -------------------------

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.events is not None:
            self.events.app_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.events is not None:
            self.events.app_write_paused(False)


def _added(values: list[bytes] | None, value: bytes) -> list[bytes]:
    """Append to a list that is only made once something arrives for it."""
    if values is None:
        return [value]
    values.append(value)
    return values
