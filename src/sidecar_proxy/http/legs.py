"""What an exchange and its two legs may ask of each other: the data path's only contracts.

A request travels client leg → :class:`~sidecar_proxy.http.exchange.Exchange` → app leg and its
response comes back the same way. The legs move bytes: they parse, frame and honour flow control
for one protocol. The exchange decides: phases, attempts, deadlines, policies, the record. Each
side sees the other only through the ``typing.Protocol``\\ s below, so a second kind of leg (an
HTTP/2 stream on either side) plugs in without touching the retry, breaker, deadline or
recording logic:

- :class:`ClientLeg`: what the exchange asks of the client side. An HTTP/1.1 connection is one
  (its requests are answered strictly in order, so the connection serves the exchange at the head
  of its queue); an HTTP/2 stream would be another.
- :class:`AppLeg`: what the exchange asks of one attempt's app side, and :class:`AppPool`, where
  an attempt gets one.
- :class:`ClientEvents` and :class:`AppEvents`: what each leg tells the exchange.

Heads cross as the records of :mod:`sidecar_proxy.http.fields`. Header fields travel in the form
the HTTP/1.1 legs parse them into, because that is the hot path: ``lines`` of ready
``Name: value\\r\\n`` bytes with the lower-cased ``names`` alongside. The value of line ``i`` is
``lines[i][len(names[i]) + 2 : -2]``, which is how a leg for another protocol reads them.

This module imports nothing from the data path but the head records, so every other module may
import it (see tests/unit/test_imports.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from sidecar_proxy.http.fields import RequestHead, ResponseHead

Trailers = list[tuple[bytes, bytes]]


class ClientLeg(Protocol):
    """The client side of one exchange."""

    @property
    def peer(self) -> bytes:
        """The client's address, for ``X-Forwarded-For``."""
        ...

    @property
    def forwarded_for_line(self) -> bytes:
        """``X-Forwarded-For: <peer>\\r\\n``, made once per connection: what nearly every
        request forwards."""
        ...

    @property
    def proto_line(self) -> bytes:
        """``X-Forwarded-Proto: http|https\r\n``: how the client reached the proxy."""
        ...

    @property
    def xfcc_line(self) -> bytes:
        """``X-Forwarded-Client-Cert: ...\r\n`` for a verified client certificate, else
        empty."""
        ...

    @property
    def write_paused(self) -> bool:
        """The client reads slower than the app sends: a stalled body is not the app's fault."""
        ...

    def send_interim(self, status: int, resp: ResponseHead) -> None:
        """Relay a 1xx (other than 101) where the protocol allows it."""
        ...

    def send_head(
        self, status: int, resp: ResponseHead, added: list[bytes], has_body: bool
    ) -> None:
        """Start the response: the app's fields, plus ``added`` lines of the proxy's own. The
        leg chooses the framing (Content-Length, chunked, close-delimited) and whether the
        connection stays open."""
        ...

    def send_body(self, data: bytes) -> None: ...

    def send_end(self, trailers: Trailers | None) -> None:
        """The response is complete; trailers go out where the framing can carry them."""
        ...

    def send_local(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None,
        request_id_line: bytes,
    ) -> None:
        """A complete response of the proxy's own (an error, a rejection, a health answer)."""
        ...

    def retract(self) -> bool:
        """Take back a response head not yet written to the socket, so a clean error can go
        in its place; False when bytes of it have already left."""
        ...

    def flush(self) -> None:
        """Write what the sends since the last flush gathered, as one ``writev``."""
        ...

    def abort(self) -> None:
        """The response cannot be completed: cut the connection so the client can tell."""
        ...

    def start_tunnel(self) -> None:
        """101 sent: from now on the client's bytes go to :meth:`ClientEvents.tunnel_data`."""
        ...

    def send_raw(self, data: bytes) -> None:
        """Tunnel bytes, written as they are."""
        ...

    def pause_request_body(self) -> None:
        """The app side cannot take more request body now (or has no connection yet)."""
        ...

    def resume_request_body(self) -> None: ...

    def exchange_done(self, ex: ClientEvents) -> None:
        """The exchange is over and recorded; the leg may go on to the next request."""
        ...


class ClientEvents(Protocol):
    """What a client leg tells its exchange."""

    @property
    def finished(self) -> bool: ...

    @property
    def request_complete(self) -> bool: ...

    def start(self) -> None:
        """The exchange's turn has come (HTTP/1.1 answers in order)."""
        ...

    def reject(self, status: int, detail: str) -> None:
        """The request is malformed, too large or too slow: answer ``status`` in its turn."""
        ...

    def request_body(self, data: bytes) -> None: ...

    def request_end(self, trailers: Trailers) -> None: ...

    def client_gone(self) -> None:
        """The client hung up, or its connection had to be cut."""
        ...

    def client_write_paused(self, paused: bool) -> None: ...

    def tunnel_data(self, data: bytes) -> None:
        """Bytes after an Upgrade request: held until the 101, then relayed."""
        ...

    def on_tick(self, now: float) -> None:
        """Deadline check; the client leg's tick calls it for the exchange it is serving."""
        ...


class AppLeg(Protocol):
    """The app side of one attempt: a connection (HTTP/1.1) or a stream on one."""

    def bind(self, events: AppEvents) -> None:
        """Start an attempt on this leg; events go to ``events`` until it is released."""
        ...

    def send_request(
        self,
        head: RequestHead,
        added: list[bytes],
        body: list[bytes],
        end: Trailers | None,
    ) -> None:
        """The request head with the proxy's ``added`` lines, the body chunks held so far and,
        when ``end`` is not None, the end of the body (with these trailers): one write."""
        ...

    def send_body(self, data: bytes) -> None: ...

    def send_end(self, trailers: Trailers) -> None: ...

    @property
    def write_paused(self) -> bool:
        """The app reads slower than the proxy sends: a replay from disk waits for it
        (:meth:`AppEvents.app_write_paused` says when it reads again)."""
        ...

    def pause_reading(self) -> None:
        """The client reads slower than the app sends."""
        ...

    def resume_reading(self) -> None: ...

    def release(self, complete: bool) -> None:
        """The attempt is over. ``complete``: the request was sent whole and the response read
        whole, so the leg may be reused if its protocol allows."""
        ...

    def abandon(self) -> None:
        """The attempt ended early (client gone, timeout, retry): never reuse."""
        ...

    def start_tunnel(self) -> None:
        """101 received: from now on the app's bytes go to :meth:`AppEvents.tunnel_data`."""
        ...

    def send_raw(self, data: bytes) -> None: ...


class AppEvents(Protocol):
    """What an app leg tells the exchange bound to it."""

    def response_head(self, app: AppLeg, resp: ResponseHead) -> None:
        """A response head (1xx included) is complete."""
        ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self, app: AppLeg, trailers: Trailers | None) -> None: ...

    def read_done(self) -> None:
        """One read from the app is handled: time to flush what it produced to the client."""
        ...

    def app_eof(self, app: AppLeg) -> None:
        """The app closed its sending side (the end of a close-delimited body, or a failure)."""
        ...

    def app_lost(self, app: AppLeg, exc: BaseException | None) -> None: ...

    def app_refused(self, app: AppLeg) -> None:
        """The app never saw this request (HTTP/2: REFUSED_STREAM, or a stream above the last
        stream id of its GOAWAY; RFC 9113 §8.7): any request may go again, as after a refused
        connection."""
        ...

    def app_protocol_error(self, app: AppLeg, reason: str) -> None: ...

    def app_write_paused(self, paused: bool) -> None: ...

    def tunnel_data_from_app(self, data: bytes) -> None: ...


ConnectCallback = Callable[[AppLeg | None, BaseException | None], None]


class AppPool(Protocol):
    """Where attempts get their app legs."""

    def take_idle(self) -> AppLeg | None:
        """A leg ready at once (a warm pooled connection), or None."""
        ...

    def connect(self, done: ConnectCallback) -> asyncio.Task[None]:
        """Make a new leg; ``done(leg, None)`` or ``done(None, error)`` follows. The caller may
        cancel the task; a leg that arrives after its requester lost interest is released."""
        ...

    @property
    def idle_count(self) -> int:
        """Legs ready for reuse, for metrics and tests."""
        ...

    def close(self) -> None: ...
