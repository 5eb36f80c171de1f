"""A scriptable h2c app on 127.0.0.1, made with the ``h2`` library: the app side of the tests
of ``UPSTREAM_PROTOCOL=h2c``. It answers ``200`` with ``h2 <method> <path>`` (a POST gets its
body back), sends ``grpc-status`` trailers for paths under ``/trailers``, and can refuse
streams, go away after some, hold its answers, answer a gRPC call with a few messages and then
nothing, or stop reading request bodies. It records the resets it gets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events


@dataclass
class H2App:
    max_streams: int = 100
    refuse: int = 0  # refuse this many streams first (REFUSED_STREAM)
    refuse_late: bool = False  # refuse them once their request has ended, not at its head
    goaway_after: int = 0  # the first connection goes away after this many streams
    hold: bool = False  # answer only when released
    # > 0: answer a request with a gRPC head and this many messages, then neither end nor reset
    messages_then_hang: int = 0
    read_bodies: bool = True  # False: request DATA is never credited back, nor answered
    port: int = 0
    connections: int = 0
    requests: list[dict[bytes, bytes]] = field(default_factory=list)
    held: list[tuple[_Conn, int]] = field(default_factory=list)
    resets: list[tuple[int, int]] = field(default_factory=list)  # (stream id, error code) got
    _server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def release(self) -> None:
        held, self.held = self.held, []
        for conn, sid in held:
            conn.answer(sid)


class _Conn(asyncio.Protocol):
    def __init__(self, app: H2App) -> None:
        self.app = app
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        self.refusing: set[int] = set()
        self.gone = False
        self.last = 0
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.app.connections += 1
        self.number = self.app.connections
        self.h2.initiate_connection()
        self.h2.update_settings(
            {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.app.max_streams}
        )
        self.flush()

    def flush(self) -> None:
        if self.transport is not None:
            self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self.handle(event)
        self.flush()

    def handle(self, event: Any) -> None:
        app = self.app
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            if self.gone:
                return
            if app.refuse:
                app.refuse -= 1
                if app.refuse_late:
                    self.refusing.add(sid)
                else:
                    self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            app.requests.append(dict(event.headers))
            if self.number == 1 and len(app.requests) == app.goaway_after:
                self.gone = True  # GOAWAY once this one is answered: h2 sends no more after it
                self.last = sid
            self.heads[sid] = dict(event.headers)
            self.bodies[sid] = b""
        elif isinstance(event, h2.events.StreamReset):
            app.resets.append((event.stream_id, event.error_code))
        elif isinstance(event, h2.events.DataReceived):
            if not app.read_bodies:
                return  # the window it used is never given back: the client must stop
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in self.bodies:
                self.bodies[event.stream_id] += event.data
        elif isinstance(event, h2.events.StreamEnded):
            sid = event.stream_id
            if sid in self.refusing:
                self.refusing.discard(sid)
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            if sid not in self.heads:
                return
            if app.messages_then_hang:
                self.stream_then_hang(sid, app.messages_then_hang)
            elif app.hold:
                app.held.append((self, sid))
            else:
                self.answer(sid)
            if sid == self.last:
                self.h2.close_connection(last_stream_id=sid)

    def answer(self, sid: int) -> None:
        head = self.heads.pop(sid)
        body = self.bodies.pop(sid)
        method, path = head[b":method"], head[b":path"]
        if method != b"POST":
            body = b"h2 " + method + b" " + path
        self.h2.send_headers(
            sid,
            [(b":status", b"200"), (b"content-type", b"text/plain")],
            end_stream=False,
        )
        if path == b"/cut":  # a head, some body, then a reset: the response is incomplete
            self.h2.send_data(sid, b"partial")
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        self.h2.send_data(sid, body, end_stream=not path.startswith(b"/trailers"))
        if path.startswith(b"/trailers"):
            self.h2.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        self.flush()

    def stream_then_hang(self, sid: int, messages: int) -> None:
        """A gRPC answer that starts and stops: the head, ``messages`` length-prefixed
        messages, and then nothing, whatever its ``grpc-timeout`` said."""
        self.h2.send_headers(
            sid, [(b":status", b"200"), (b"content-type", b"application/grpc")], end_stream=False
        )
        for n in range(messages):
            payload = b"message %d" % n
            self.h2.send_data(sid, b"\x00" + len(payload).to_bytes(4, "big") + payload)
