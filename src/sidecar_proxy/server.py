"""Process lifecycle: event loop, listeners, admin thread, signals, the drain and reloads.

Shutdown follows what Kubernetes needs from a pod that is being removed (the endpoints update
lags the SIGTERM by a few seconds):

1. SIGTERM, SIGINT or ``POST /quitquitquit``: ``/ready`` answers 503 at once, and every response
   from then on carries ``Connection: close`` and closes its connection. The listener still
   accepts, so clients that have not yet heard of the pod's removal are served, each on a fresh
   connection that ends after its response.
2. After ``drain_delay`` the listener closes and idle keep-alive connections close.
3. In-flight requests may finish within ``shutdown_grace_period``; whatever is left is then cut.
4. The process exits 0. A second signal exits at once (exit code 1).

SIGHUP reloads the configuration and the hooks file (see :meth:`ProxyServer.reload`).

With ``WORKERS`` > 1 each worker process runs a :class:`ProxyServer` of its own, and its parent
(:mod:`sidecar_proxy.workers.supervisor`) owns the signals: it forwards SIGTERM to every worker,
which drains as above, and a reload's settings, which each applies as above, loading its own
copy of the hooks again.
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
from dataclasses import dataclass

import uvloop

from sidecar_proxy.admin.server import AdminServer
from sidecar_proxy.buildinfo import build_info
from sidecar_proxy.config import Settings
from sidecar_proxy.config.reload import ReloadRefused, SettingsSource, reload
from sidecar_proxy.hooks.load import HookLoadError, Hooks, load_hooks
from sidecar_proxy.http.context import ProxyContext
from sidecar_proxy.http.h1.client import H1ClientConnection
from sidecar_proxy.lifecycle.appcheck import AppReadyCheck, start_app_check
from sidecar_proxy.lifecycle.health import HealthState
from sidecar_proxy.observe.accesslog import FLUSH_INTERVAL, AccessLog
from sidecar_proxy.observe.logs import configure_logging, set_log_level
from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.recorder import Recorder
from sidecar_proxy.observe.slo import SloWindows
from sidecar_proxy.policy.configured import Policies
from sidecar_proxy.tls.accept import ServerTLS
from sidecar_proxy.tls.material import MaterialError
from sidecar_proxy.tls.reload import POLL_SECONDS, Reloader
from sidecar_proxy.tls.upstream import UpstreamTLS

log = logging.getLogger("sidecar_proxy.server")

BACKLOG = 2048  # the listen() backlog of the proxy port


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker of a multi-process sidecar (:mod:`sidecar_proxy.workers`) is handed by its
    parent: the pod's shared policies and the pod's access-log lock."""

    policies: Policies
    log_lock: AbstractContextManager[object]


class ProxyServer:
    """One proxy: listener, admin server, shared context. Usable in-process (tests, demo).

    ``reload_from`` loads the configuration again the way start-up did (same flags, env and
    file); without it a reload has nothing to read and is refused. ``hooks`` are the hooks the
    CLI loaded while checking the configuration (so their code runs once at start-up); without
    them, :meth:`start_proxy` loads what ``settings.hooks`` names.

    A worker of a multi-process sidecar runs one too, given its ``worker`` role: it serves the
    proxy port alone (:meth:`start_proxy`, on sockets its parent bound), and its parent runs the
    admin port, the app readiness check and reloads for the whole pod. Its ``/ready`` on the
    proxy port follows the parent's word on the pod (:meth:`HealthState.set_pod_ready`).
    """

    def __init__(
        self,
        settings: Settings,
        access_log_fd: int = 1,
        reload_from: SettingsSource | None = None,
        hooks: Hooks | None = None,
        *,
        worker: WorkerRole | None = None,
    ) -> None:
        self.settings = settings
        self._access_log_fd = access_log_fd
        self._reload_from = reload_from
        self._worker = worker
        self.hooks = hooks
        self.metrics = Metrics(_slo_windows(settings))
        if worker is None:
            self.health = HealthState(app_ready=settings.app_ready_check == "none")
        else:  # the parent checks the app, and says when the whole pod is ready
            self.health = HealthState(pod_ready=False)
        self.access_log: AccessLog | None = None
        self.recorder: Recorder | None = None
        self.ctx: ProxyContext | None = None
        self.admin: AdminServer | None = None
        self.stopping = asyncio.Event()  # a shutdown was asked for (signal or quit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._flusher: asyncio.TimerHandle | None = None
        self._app_check: AppReadyCheck | None = None
        self.tls: ServerTLS | None = None
        self.upstream_tls: UpstreamTLS | None = None
        self._reloaders: dict[str, Reloader] = {}
        self._tls_poller: asyncio.TimerHandle | None = None
        self.port = 0
        self.admin_port = 0

    async def start(self) -> None:
        """Start serving; raises :class:`MaterialError` for unusable TLS files,
        :class:`HookLoadError` for unusable hooks, and OSError when the ports cannot be
        bound."""
        s = self.settings
        # The proxy port first: /ready on the admin port must never answer 200 for a process
        # that then fails to listen.
        await self.start_proxy()
        if s.app_ready_check != "none":
            self.metrics.app_ready_changed(False)
        self._app_check = start_app_check(s, self.health, self.metrics.app_ready_changed)
        self.admin = AdminServer(
            s.metrics_host,
            s.metrics_port,
            self.metrics.registry,
            self.health,
            allow=s.admin_allow,
            on_quit=self.quit,
        )
        self.admin.start()
        self.admin_port = self.admin.port
        log.info(
            "listening",
            extra={
                "listen": f"{s.listen_host}:{self.port}",
                "upstream": f"{s.upstream_host}:{s.upstream_port}",
                "admin": f"{s.metrics_host}:{self.admin_port}",
                "tls": self.tls is not None,
                "upstream_tls": self.upstream_tls is not None,
                "hooks": self.hooks.describe() if self.hooks is not None else "",
                "version": build_info().version,
                "build": build_info().kind,  # "compiled" or "pure Python"
            },
        )

    async def start_proxy(self, listeners: list[socket.socket] | None = None) -> None:
        """Serve the proxy port: on ``listeners`` when given (bound and listening already, one
        per address: a worker's), else on sockets bound here to ``listen_host:listen_port``.
        Raises as :meth:`start` does."""
        s = self.settings
        loop = self._loop = asyncio.get_running_loop()
        if s.hooks and self.hooks is None:
            self.hooks = load_hooks(s.hooks)
        self._start_tls()
        self.recorder = recorder = Recorder(
            self.metrics, PathLabeler(s.metrics_path_label_limit), None
        )
        self._use_access_log(s.access_log)
        policies = None if self._worker is None else self._worker.policies
        ctx = ProxyContext(
            loop,
            s,
            self.metrics,
            recorder,
            self.health,
            upstream_tls=self.upstream_tls,
            policies=policies,
            hooks=self.hooks,
        )
        ctx.start_ticking()
        self.ctx = ctx
        tls = self.tls
        factory: Callable[[], asyncio.Protocol] = (
            (lambda: H1ClientConnection(ctx))
            if tls is None
            else tls.acceptor(lambda: H1ClientConnection(ctx, tls))
        )
        if listeners is None:
            self._servers = [
                await loop.create_server(
                    factory, s.listen_host, s.listen_port, backlog=BACKLOG, reuse_address=True
                )
            ]
        else:
            self._servers = [
                await loop.create_server(factory, sock=sock, backlog=BACKLOG) for sock in listeners
            ]
        sock: socket.socket = self._servers[0].sockets[0]
        self.port = sock.getsockname()[1]

    def _use_access_log(self, on: bool) -> None:
        """Turn the access log on or off. Its writer, once made, is kept until close(): turning
        it off only detaches it, so a reload never blocks the loop waiting for stdout."""
        assert self.recorder is not None and self._loop is not None
        if on and self.access_log is None:
            self.access_log = AccessLog(
                self._access_log_fd,
                on_drop=self.metrics.access_log_drop,
                exclusive=None if self._worker is None else self._worker.log_lock,
            )
            self._flusher = self._loop.call_later(FLUSH_INTERVAL, self._flush_access_log)
        self.recorder.set_access_log(self.access_log if on else None)

    def _start_tls(self) -> None:
        s = self.settings
        if s.tls_cert_file:
            self.tls = ServerTLS(s, self.metrics.tls_handshake_error)
            self._reloaders["proxy port"] = self.tls.reloader
        if s.upstream_tls:
            self.upstream_tls = UpstreamTLS(s)
            self._reloaders["app connections"] = self.upstream_tls.reloader
        for reloader in self._reloaders.values():
            self.metrics.tls_loaded(reloader.current.certs)
        if self._reloaders:
            loop = asyncio.get_running_loop()
            self._tls_poller = loop.call_later(POLL_SECONDS, self._poll_tls)

    def _poll_tls(self) -> None:
        """Pick up rotated TLS files (see tls/reload.py); log and count what happened."""
        for name, reloader in self._reloaders.items():
            outcome = reloader.poll()
            failing = sum(r.failing for r in self._reloaders.values())
            if outcome.loaded is not None:
                self.metrics.tls_loaded(outcome.loaded.certs)
                self.metrics.tls_reload(True, failing)
                log.info("TLS files reloaded", extra={"for": name})
            elif outcome.error is not None:
                self.metrics.tls_reload(False, failing)
                log.error(
                    "TLS files rejected, the previous ones stay in use",
                    extra={"for": name, "error": outcome.error},
                )
        self._tls_poller = asyncio.get_running_loop().call_later(POLL_SECONDS, self._poll_tls)

    def _flush_access_log(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()
            loop = asyncio.get_running_loop()
            self._flusher = loop.call_later(FLUSH_INTERVAL, self._flush_access_log)

    def request_stop(self, cause: str) -> None:
        """Ask for the drain (on the loop thread); asking again changes nothing."""
        if not self.stopping.is_set():
            log.info("shutdown requested", extra={"by": cause})
            self.stopping.set()

    def quit(self) -> None:
        """``POST /quitquitquit``, called on the admin thread: hand the request to the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.request_stop, "quitquitquit")

    def reload(self) -> None:
        """SIGHUP: load the configuration and the hooks again and apply what may change.

        The new settings come from the same flags, env and file as at start-up, and the hooks
        file they name is executed again. A bad value, or hooks that fail to load, keep every
        running setting and the running hooks, and log the one-line error start-up would have
        printed; settings that are not live (``Field.live``) keep their running value and are
        reported.
        The rest is applied in one step on the loop thread (see ``ProxyContext.reconfigure``),
        so no request sees half of a reload. Reading the file blocks the loop for as long as a
        small local file takes to read and parse: well under a millisecond.
        """
        if self._worker is not None:
            log.warning(
                "reload requested of one worker: send SIGHUP to the parent, which reloads all"
            )
            return
        reload(
            self._reload_from, self.settings, self._apply_reload, self.metrics.config_reloaded, log
        )

    def _apply_reload(self, settings: Settings) -> None:
        try:
            self.apply(settings)
        except HookLoadError as exc:
            raise ReloadRefused(f"hooks error: {exc}") from exc

    def apply(self, settings: Settings) -> None:
        """Run with ``settings`` from now on: a reload's, planned already (its own, or for a
        worker its parent's), with the hooks ``settings.hooks`` names loaded again. Raises
        :class:`HookLoadError` for hooks that fail to load, having changed nothing."""
        hooks = load_hooks(settings.hooks) if settings.hooks else None
        old, self.settings = self.settings, settings
        self.hooks = hooks
        if self.ctx is not None:
            self.ctx.reconfigure(settings, hooks)
        if settings.log_level != old.log_level:
            set_log_level(settings.log_level)
        if settings.access_log != old.access_log:
            self._use_access_log(settings.access_log)

    async def shutdown(self) -> None:
        """The drain described in the module docstring; returns when the proxy has stopped."""
        ctx = self.ctx
        assert ctx is not None and self._servers
        self.health.shut_down()
        ctx.say_goodbye()
        drain_delay = self.settings.drain_delay
        log.info("draining", extra={"drain_delay_s": drain_delay})
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        for server in self._servers:
            server.close()
        ctx.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_period
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
        if self._app_check is not None:
            self._app_check.stop()
        if self.ctx is not None:
            self.ctx.stop_ticking()
            for conn in list(self.ctx.connections):
                conn.close_transport()
            self.ctx.pool.close()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._tls_poller is not None:
            self._tls_poller.cancel()
            self._tls_poller = None
        if self.tls is not None:
            self.tls.close()
        if self.admin is not None:
            self.admin.stop()
        if self.access_log is not None:
            self.access_log.close(timeout=2.0)


def _slo_windows(s: Settings) -> SloWindows | None:
    """The SLO windows when an SLO is set; with none set nothing is kept or counted."""
    if not (s.slo_availability or s.slo_latency):
        return None
    return SloWindows(s.slo_availability, s.slo_latency, s.slo_latency_objective)


def run(
    settings: Settings,
    before_start: Callable[[], None] | None = None,
    reload_from: SettingsSource | None = None,
    hooks: Hooks | None = None,
) -> int:
    """Run a proxy until SIGTERM, SIGINT or a quit, drain, and return the exit code."""
    configure_logging(settings.log_level)
    tune_malloc()
    return uvloop.run(_main(settings, before_start, reload_from, hooks))


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


async def _main(
    settings: Settings,
    before_start: Callable[[], None] | None,
    reload_from: SettingsSource | None,
    hooks: Hooks | None,
) -> int:
    server = ProxyServer(settings, reload_from=reload_from, hooks=hooks)
    handle_stop_signals(server)
    if before_start is not None:
        before_start()
    try:
        await server.start()
    except MaterialError as exc:
        # The CLI checked the files already; they changed in between.
        log.error("unusable TLS files", extra={"error": str(exc)})
        await server.close()
        return 2
    except HookLoadError as exc:
        log.error(f"hooks error: {exc}")
        await server.close()
        return 2
    except OSError as exc:
        log.error("cannot listen", extra={"error": str(exc)})
        await server.close()
        return 1
    return await serve_until_stopped(server)


def handle_stop_signals(
    server: ProxyServer, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """The first of ``signals`` asks ``server`` to stop (the drain); a second exits at once
    (code 1). Installed before the server starts: once it answers ``/ready``, a SIGTERM must
    drain it, never kill it with the signal's default action."""
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal, exiting now", extra={"signal": signal.Signals(signum).name})
            if server.access_log is not None:
                server.access_log.flush()
            os._exit(1)
        server.request_stop(signal.Signals(signum).name)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)


async def serve_until_stopped(server: ProxyServer, abandon: asyncio.Event | None = None) -> int:
    """Serve a started ``server`` until a stop is asked for (a signal, a quit), then drain;
    SIGHUP reloads (:meth:`ProxyServer.reload`).

    ``abandon`` (a worker's: its parent is gone) stops at once instead, without a drain, and
    returns 1.
    """
    loop = asyncio.get_running_loop()
    # Everything allocated so far (modules, settings, metric families) lives as long as the
    # process: take it out of the collector's view so each full collection, triggered by the
    # churn of per-request objects, does not walk it again.
    gc.collect()
    gc.freeze()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    waits = [asyncio.ensure_future(server.stopping.wait())]
    if abandon is not None:
        waits.append(asyncio.ensure_future(abandon.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if not server.stopping.is_set():
        await server.close()
        return 1
    await server.shutdown()
    return 0
