"""The app leg: one TCP connection to the app, parsing its responses with httptools (llhttp).

The protocol only moves bytes. Every event is handed to the :class:`Forward` currently bound to
the connection, which decides what it means. Between exchanges the connection sits in the pool
with no Forward; any byte or parser event then is a protocol violation and the connection is
closed, never reused.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from sidecar_proxy.http.forward import Forward
    from sidecar_proxy.http.pool import UpstreamPool


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_feeding",
        "_parser",
        "_release_pending",
        "body_in_read",
        "broken",
        "done",
        "forward",
        "head_bytes",
        "idle_since",
        "in_head",
        "pool",
        "reset_parser",
        "transport",
        "tunnel",
        "write_paused",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.forward: Forward | None = None
        self.idle_since = 0.0
        self.done = False  # the bound Forward's response is complete
        self.broken = False  # a byte or event outside an exchange: never reuse
        self.reset_parser = False  # the parser was left mid-message (HEAD): replace on reuse
        self.tunnel = False
        self.write_paused = False
        self.in_head = False
        self.head_bytes = 0  # bytes of the head, then of non-body framing, held by the parser
        self.body_in_read = 0
        self._feeding = False
        self._release_pending = False

    # -- lifecycle ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        forward = self.forward
        if forward is not None:
            self.forward = None
            forward.upstream_lost(self, exc)
        else:
            self.pool.forget(self)

    def eof_received(self) -> bool:
        forward = self.forward
        if forward is not None and not self.done:
            forward.upstream_eof(self)
        return False  # close our side too: an app that half-closes is done with us

    def usable(self) -> bool:
        t = self.transport
        return not self.broken and t is not None and not t.is_closing()

    def close(self) -> None:
        self.broken = True
        if self.transport is not None:
            self.transport.close()

    def bind(self, forward: Forward) -> None:
        """Start an exchange on this connection."""
        self.forward = forward
        self.done = False
        if self.reset_parser:
            self._parser = httptools.HttpResponseParser(self)
            self.reset_parser = False

    def finish(self, *, mid_message: bool = False) -> None:
        """The bound Forward is done with its response: pool or close.

        ``mid_message``: the parser still expects bytes we know will not come (a HEAD response
        with a Content-Length), so it is replaced before the next exchange.

        When called from inside a parser callback the release waits until ``feed_data``
        returns: bytes after the response in the same read must mark the connection broken
        before anyone can take it from the pool.
        """
        self.forward = None
        self.done = True
        self.reset_parser = mid_message
        if self._feeding:
            self._release_pending = True
        else:
            self._release()

    def _release(self) -> None:
        if self.write_paused or self.tunnel or self.broken:
            self.close()
        else:
            self.pool.release(self)

    def abandon(self) -> None:
        """The exchange ended early (client gone, timeout, retry): never reuse."""
        self.forward = None
        self.close()

    # -- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        forward = self.forward
        if forward is None:
            self.close()  # bytes from an idle connection: the app is confused, drop it
            return
        if self.tunnel:
            forward.tunnel_from_upstream(data)
            return
        in_body = not self.in_head and not self.done
        self.body_in_read = 0
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._feeding = False
            forward = self.forward
            if self.tunnel and forward is not None:
                rest = data[exc.args[0] :]
                if rest:
                    forward.tunnel_from_upstream(rest)
            else:
                self._protocol_error("unexpected upgrade")
            return
        except httptools.HttpParserError as exc:
            self._feeding = False
            self._release_pending = False
            self._protocol_error(str(exc))
            return
        self._feeding = False
        if self.in_head:
            # httptools holds an unfinished head until it is complete: bound it like the
            # client's (an upper bound: every read that ended inside it counts whole).
            self.head_bytes += len(data)
            if self.head_bytes > self.pool.max_head_bytes:
                self._release_pending = False
                self._protocol_error("response head too large")
                return
        elif in_body and not self.done:
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
        elif self.forward is not None:
            self.forward.flush_to_client()

    def _protocol_error(self, reason: str) -> None:
        self.broken = True
        forward = self.forward
        if forward is not None:
            self.forward = None
            forward.upstream_protocol_error(self, reason)
        self.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head_bytes = 0
        self.in_head = True
        if self.forward is None or self.done:
            self.broken = True  # a second response to one request

    def on_status(self, reason: bytes) -> None:
        if self.forward is not None and not self.done:
            self.forward.resp_reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.forward is not None and not self.done:
            self.forward.response_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.forward is not None and not self.done:
            p = self._parser
            self.forward.response_head(self, p.get_status_code(), p.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.body_in_read += len(body)
        if self.forward is not None and not self.done:
            self.forward.response_body(body)
        else:
            self.broken = True  # body bytes after we considered the response complete

    def on_message_complete(self) -> None:
        if self.forward is not None and not self.done:
            self.forward.response_end(self)

    # -- flow control: the client leg pauses us when it cannot keep up -------------------------

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.forward is not None:
            self.forward.app_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.forward is not None:
            self.forward.app_write_paused(False)
