"""The keep-alive pool of HTTP/1.1 app connections: an :class:`~.legs.AppPool`.

Idle connections are kept LIFO: the most recently used one is the warmest and the least likely to
have been closed by the app's own keep-alive timer. A connection idle longer than
``idle_timeout`` is never handed out; that timeout is set below the usual app keep-alive (Node's
5 s) so the proxy, not the app, closes an idle connection and a request never races the app's
close. A sweep closes stale idle connections so they do not hold file descriptors.

Only complete exchanges return a connection here (see ``H1AppConnection.release``): a response
not read to its end, a request not sent to its end, or any byte seen while idle, and the
connection is closed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from sidecar_proxy.http.batch import TurnWrites
from sidecar_proxy.http.h1.app import H1AppConnection
from sidecar_proxy.http.legs import ConnectCallback
from sidecar_proxy.tls.upstream import UpstreamTLS


class H1Pool:
    __slots__ = (
        "_closed",
        "_idle",
        "_sweeper",
        "_writes",
        "connect_timeout",
        "host",
        "idle_timeout",
        "loop",
        "max_head_bytes",
        "max_header_count",
        "max_idle",
        "on_connection",
        "port",
        "tls",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        *,
        max_idle: int,
        idle_timeout: float,
        connect_timeout: float,
        max_head_bytes: int,
        max_header_count: int,
        on_connection: Callable[[bool], None],
        tls: UpstreamTLS | None = None,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        # the app's response heads and trailers, bounded like requests'
        self.max_head_bytes = max_head_bytes
        self.max_header_count = max_header_count
        self.on_connection = on_connection  # metrics hook: True when reused
        self.tls = tls
        self._idle: list[H1AppConnection] = []
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._writes = TurnWrites(loop)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def take_idle(self) -> H1AppConnection | None:
        """The warmest idle connection still fit for use, or None."""
        idle = self._idle
        deadline = self.loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.idle_since >= deadline and conn.usable():
                self.on_connection(True)
                return conn
            conn.close()
        return None

    def connect(self, done: ConnectCallback) -> asyncio.Task[None]:
        """Open a new connection; ``done(conn, None)`` or ``done(None, error)`` follows.

        The caller may cancel the returned task (its client went away); a connection that
        completes after its requester lost interest is simply pooled by the requester.
        """
        return self.loop.create_task(self._connect(done))

    async def _connect(self, done: ConnectCallback) -> None:
        try:
            # the connect timeout bounds the TLS handshake too
            async with asyncio.timeout(self.connect_timeout):
                tls = self.tls
                _, conn = await self.loop.create_connection(
                    lambda: H1AppConnection(self),
                    self.host,
                    self.port,
                    ssl=tls.context() if tls is not None else None,
                    server_hostname=tls.server_name if tls is not None else None,
                )
        except (OSError, TimeoutError) as exc:
            done(None, exc)
            return
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.on_connection(False)
        done(conn, None)

    def defer_write(self, conn: H1AppConnection) -> None:
        self._writes.add(conn)

    def release(self, conn: H1AppConnection) -> None:
        """Take back a connection whose exchange completed cleanly."""
        if self._closed or len(self._idle) >= self.max_idle or not conn.usable():
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def forget(self, conn: H1AppConnection) -> None:
        """An idle connection closed by the app: drop it from the idle list."""
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self.loop.time() - self.idle_timeout
        keep = [c for c in self._idle if c.idle_since >= deadline]
        for conn in self._idle:
            if conn.idle_since < deadline:
                conn.close()
        self._idle = keep
        if keep:
            self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
