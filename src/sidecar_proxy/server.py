"""Process lifecycle: event loop, listeners, admin thread, signals and the drain.

Shutdown follows what Kubernetes needs from a pod that is being removed (the endpoints update
lags the SIGTERM by a few seconds):

1. SIGTERM or SIGINT: ``/ready`` answers 503 at once; requests keep being served normally.
2. After ``drain_delay`` the listener closes and the proxy drains: idle keep-alive connections
   close, responses in progress carry ``Connection: close``.
3. In-flight requests may finish within ``shutdown_grace_period``; whatever is left is then cut.
4. The process exits 0. A second signal exits at once (exit code 1).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager

import uvloop

from sidecar_proxy import __version__
from sidecar_proxy.admin.health import HealthState
from sidecar_proxy.admin.server import AdminServer
from sidecar_proxy.config import Settings
from sidecar_proxy.http.context import Policies, ProxyContext
from sidecar_proxy.http.downstream import DownstreamConnection
from sidecar_proxy.observe.accesslog import FLUSH_INTERVAL, AccessLog
from sidecar_proxy.observe.logs import configure_logging
from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.recorder import Recorder

log = logging.getLogger("sidecar_proxy.server")

BACKLOG = 2048  # the listen() backlog of the proxy port


class ProxyServer:
    """One proxy: listener, admin server, shared context. Usable in-process (tests, demo).

    A worker of a multi-process sidecar (:mod:`sidecar_proxy.workers`) runs one too, with the
    pod's shared ``policies`` and access-log lock, on listening sockets its parent made, and
    without an admin server (the parent serves the pod's).
    """

    def __init__(
        self,
        settings: Settings,
        access_log_fd: int = 1,
        *,
        policies: Policies | None = None,
        log_lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.settings = settings
        self._access_log_fd = access_log_fd
        self._policies = policies
        self._log_lock = log_lock
        self.metrics = Metrics()
        self.health = HealthState()
        self.access_log: AccessLog | None = None
        self.ctx: ProxyContext | None = None
        self.admin: AdminServer | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._flusher: asyncio.TimerHandle | None = None
        self.port = 0
        self.admin_port = 0
        self.stopping = False  # a shutdown has begun

    async def start(self) -> None:
        """Listen on the proxy port, then serve the admin port."""
        s = self.settings
        # The proxy port first: /ready on the admin port must never answer 200 for a process
        # that then fails to listen.
        await self.start_proxy()
        self.admin = AdminServer(s.metrics_host, s.metrics_port, self.metrics.registry, self.health)
        self.admin.start()
        self.admin_port = self.admin.port
        log.info(
            "listening",
            extra={
                "listen": f"{s.listen_host}:{self.port}",
                "upstream": f"{s.upstream_host}:{s.upstream_port}",
                "admin": f"{s.metrics_host}:{self.admin_port}",
                "version": __version__,
            },
        )

    async def start_proxy(self, listeners: list[socket.socket] | None = None) -> None:
        """Serve the proxy port: on ``listeners`` when given (bound and listening already),
        else on sockets bound here to ``listen_host:listen_port``."""
        s = self.settings
        loop = asyncio.get_running_loop()
        if s.access_log:
            self.access_log = AccessLog(
                self._access_log_fd, on_drop=self.metrics.access_log_drop, exclusive=self._log_lock
            )
            self._flusher = loop.call_later(FLUSH_INTERVAL, self._flush_access_log)
        recorder = Recorder(self.metrics, PathLabeler(s.metrics_path_label_limit), self.access_log)
        ctx = ProxyContext(loop, s, self.metrics, recorder, self.health, policies=self._policies)
        ctx.start_ticking()
        self.ctx = ctx

        def protocol() -> DownstreamConnection:
            return DownstreamConnection(ctx)

        if listeners is None:
            self._servers = [
                await loop.create_server(
                    protocol, s.listen_host, s.listen_port, backlog=BACKLOG, reuse_address=True
                )
            ]
        else:
            self._servers = [
                await loop.create_server(protocol, sock=sock, backlog=BACKLOG) for sock in listeners
            ]
        sock: socket.socket = self._servers[0].sockets[0]
        self.port = sock.getsockname()[1]

    def _flush_access_log(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()
            loop = asyncio.get_running_loop()
            self._flusher = loop.call_later(FLUSH_INTERVAL, self._flush_access_log)

    async def shutdown(self) -> None:
        """The drain described in the module docstring; returns when the proxy has stopped."""
        s = self.settings
        ctx = self.ctx
        assert ctx is not None and self._servers
        self.stopping = True
        self.health.ready = False
        log.info("draining", extra={"drain_delay_s": s.drain_delay})
        if s.drain_delay > 0:
            await asyncio.sleep(s.drain_delay)
        for server in self._servers:
            server.close()
        ctx.draining = True
        for conn in list(ctx.connections):
            conn.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.shutdown_grace_period
        while ctx.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = len(ctx.connections)
        if left:
            log.warning("grace period over, closing connections", extra={"connections": left})
            for conn in list(ctx.connections):
                conn.close_transport()
            await asyncio.sleep(0)
        await self.close()
        log.info("stopped")

    async def close(self) -> None:
        """Release everything at once (the end of a drain, or a test's teardown)."""
        for server in self._servers:
            server.close()
        if self.ctx is not None:
            self.ctx.stop_ticking()
            for conn in list(self.ctx.connections):
                conn.close_transport()
            self.ctx.pool.close()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self.admin is not None:
            self.admin.stop()
        if self.access_log is not None:
            self.access_log.close(timeout=2.0)


def run(settings: Settings, before_start: Callable[[], None] | None = None) -> int:
    """Run a proxy until SIGTERM or SIGINT, drain, and return the exit code."""
    configure_logging(settings.log_level)
    tune_malloc()
    return uvloop.run(_main(settings, before_start))


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> None:
    """Keep large read buffers on the heap instead of a fresh mmap each.

    uvloop copies every read (up to 256 KiB) into a new bytes object. Above glibc's mmap threshold
    each one is a fresh mapping, page-faulted in and unmapped again: measured on the 1 MiB
    benchmark, that doubled the CPU per MiB (1,600 against 650 us) in about half the runs. A
    1 MiB threshold keeps such buffers on the heap, and a 16 MiB trim threshold lets freed ones
    be reused instead of returned to the kernel at once. A no-op where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    mallopt(_M_TRIM_THRESHOLD, 16 << 20)


async def _main(settings: Settings, before_start: Callable[[], None] | None) -> int:
    server = ProxyServer(settings)
    if before_start is not None:
        before_start()
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen", extra={"error": str(exc)})
        await server.close()
        return 1
    return await serve_until_signalled(server)


async def serve_until_signalled(
    server: ProxyServer,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    abandon: asyncio.Event | None = None,
) -> int:
    """Serve until one of ``signals``, then drain; a second signal exits at once (code 1).

    ``abandon`` (a worker's: its parent is gone) stops at once instead, without a drain, and
    returns 1.
    """
    loop = asyncio.get_running_loop()
    # Everything allocated so far (modules, settings, metric families) lives as long as the
    # process: take it out of the collector's view so each full collection, triggered by the
    # churn of per-request objects, does not walk it again.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal, exiting now", extra={"signal": signal.Signals(signum).name})
            if server.access_log is not None:
                server.access_log.flush()
            os._exit(1)
        log.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    waits = [asyncio.ensure_future(stop.wait())]
    if abandon is not None:
        waits.append(asyncio.ensure_future(abandon.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if not stop.is_set():
        await server.close()
        return 1
    await server.shutdown()
    return 0
