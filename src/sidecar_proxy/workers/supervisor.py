"""The parent of a multi-process sidecar: it owns the ports, the signals and the workers.

Start-up: bind one listening socket per worker with ``SO_REUSEPORT``, create the shared memory
of the pod-wide policies, serve the admin port, then start the workers. Each worker is a fresh
interpreter (``python -m sidecar_proxy.workers.child``) given its socket, the shared memory and
one end of a socket pair for the control channel, all as inherited descriptors.

Why a fresh interpreter rather than ``fork()`` alone: the parent runs the admin server's
threads, and a worker that dies is restarted while they run. ``fork()`` in a multi-threaded
process copies locks that other threads may hold at that instant (stdio buffers, for one), so
the child can hang on its first log line; Python 3.12 warns on it for that reason. Exec'ing
costs ~0.3 s of start-up per worker and the memory the interpreters cannot share (measured in
docs/benchmarks.md).

Why one ``SO_REUSEPORT`` socket per worker rather than one shared socket: measured with
``python -m bench.spread`` (docs/benchmarks.md), a burst of 64 new connections to one shared
socket went three quarters to one worker on average and all to one in the worst trial, because
the worker that wakes first accepts everything queued; the kernel's per-connection hash put at
most 62% on one worker. The parent keeps its copy of every socket, so connections the kernel
queued on a dead worker's socket wait there for its replacement instead of being reset.

Supervision: a worker that exits is restarted after a backoff (exponential with full jitter,
0.1 s doubling to 5 s, reset once a worker has lived 10 s), and logged. Its in-flight requests
are lost with it; the parent zeroes its in-flight count, frees any half-open probe slots it
held, and keeps its last metrics as the base of its replacement's. A worker that fails before
it ever served, during start-up, stops the sidecar (exit 1): it cannot serve as configured.

A worker that is alive but whose event loop has stopped running (a hook that blocks, an endless
loop, a SIGSTOP) serves nothing, and the connections the kernel hands its socket wait. Each
worker's loop stamps a heartbeat in the shared memory; when one is older than
``WORKER_HEARTBEAT_TIMEOUT`` (:class:`~sidecar_proxy.policy.liveness.HangWatch`), the parent
kills the worker with SIGKILL (the one signal a stuck or stopped process cannot ignore or
postpone), logs it, and restarts it as it restarts one that exited. During a drain it is killed and
not replaced: a stuck worker would never finish draining. ``sidecar_worker_restarts_total``
counts the restarts by reason.

Readiness: ``/ready`` (admin port, and each worker's proxy port) answers 200 only while every
worker serves and, with ``APP_READY_CHECK``, the app is ready: the parent runs the one check
for the pod and tells the workers its verdict. Shutdown: the first SIGTERM or SIGINT (or
``POST /quitquitquit`` on the admin port) turns ``/ready`` to 503, closes the parent's copies
of the listening sockets, and forwards SIGTERM to every worker, which drains exactly as a single
process does; the parent exits 0 once the last worker has. A second signal is forwarded too
(each worker exits at once) and the parent exits 1 at once.

Reload: SIGHUP to the parent loads the configuration again, as one process does, and plans it
once (a bad file keeps every running setting; settings that are not live keep their value and
are reported). The parent then sends the planned settings to every worker, which applies them
as one process does, and starts any later worker with them. It is counted once in
``sidecar_config_reloads_total``. Each worker applies it on its own loop, so for a moment
(milliseconds) some workers run with the new settings and some with the old; the pod-wide
policies stay consistent meanwhile (docs/resilience.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from sidecar_proxy.admin.server import AdminServer
from sidecar_proxy.buildinfo import build_info
from sidecar_proxy.config import Settings
from sidecar_proxy.config.reload import SettingsSource, reload
from sidecar_proxy.lifecycle.appcheck import AppReadyCheck, start_app_check
from sidecar_proxy.lifecycle.health import HealthState
from sidecar_proxy.observe.logs import configure_logging, set_log_level
from sidecar_proxy.policy.backoff import Backoff
from sidecar_proxy.policy.breaker import BreakerState, OpenReason
from sidecar_proxy.policy.configured import budget_settings
from sidecar_proxy.policy.liveness import BEAT_INTERVAL, HangWatch
from sidecar_proxy.workers.channel import (
    Hello,
    Message,
    PodReady,
    Reload,
    Serving,
    Snapshot,
    SnapshotRequest,
    encode,
    receive,
)
from sidecar_proxy.workers.podmetrics import (
    APP_READY,
    BREAKER_STATE,
    CONFIG_RELOADS,
    SNAPSHOT_INTERVAL,
    WORKER_RESTARTS,
    PodMetrics,
)
from sidecar_proxy.workers.shared import (
    BOOK_INTERVAL,
    PodMemory,
    SharedCircuitBreaker,
    SharedRetryBudget,
)

log = logging.getLogger("sidecar_proxy.workers")

BACKLOG = 2048
RESTART_BACKOFF = 0.1
RESTART_MAX_BACKOFF = 5.0
STABLE_AFTER = 10.0  # a worker that lived this long starts its restart backoff afresh
SNAPSHOT_TIMEOUT = 1.0  # a worker slower than this to answer is reported from its last snapshot
# Exit statuses of a worker that count as a clean end of a drain (SIGTERM before it had its
# handler installed ends it with the signal).
_DRAINED = (0, -signal.SIGTERM)
_NOT_STARTED = 127  # the exit status of a worker whose process could not be created
# sidecar_config_reloads_total's result label values (observe/metrics.py's RELOAD_RESULTS)
RELOAD_SUCCESS, RELOAD_FAILURE = "success", "failure"
# sidecar_worker_restarts_total's reason label values (observe/metrics.py's RESTART_REASONS)
EXITED, HUNG = "exited", "hung"


def run(
    settings: Settings, workers: int, why: str, reload_from: SettingsSource | None = None
) -> int:
    """Run ``workers`` worker processes as one sidecar until SIGTERM; the exit code.
    ``reload_from`` is what a SIGHUP reads, as for one process."""
    supervisor = Supervisor(settings, workers, why, reload_from)
    # Every worker's lines and the parent's share one stderr: one line at a time, pod-wide.
    configure_logging(settings.log_level, exclusive=supervisor.memory.stderr_lock)
    try:
        return asyncio.run(supervisor.run())
    finally:
        configure_logging(settings.log_level)  # the lock goes with the region: no one is left
        supervisor.memory.close()


def bind_listeners(settings: Settings, workers: int) -> list[list[socket.socket]]:
    """For each worker, a listening socket on each address of ``listen_host``, all in one
    ``SO_REUSEPORT`` group per address (port 0 means any free port, the same for all)."""
    infos = socket.getaddrinfo(
        settings.listen_host or None,
        settings.listen_port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    addresses = list(dict.fromkeys((info[0], info[4]) for info in infos))
    groups: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for family, address in addresses:
            port = address[1]
            for group in groups:
                sock = socket.socket(family, socket.SOCK_STREAM)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                sock.listen(BACKLOG)
                port = sock.getsockname()[1]
    except OSError:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


class _Worker:
    """One worker's place in the pod: its listening sockets, its current process and channel,
    and its restarts."""

    def __init__(self, pod: Supervisor, index: int, listeners: list[socket.socket]) -> None:
        self._pod = pod
        self.index = index
        self._listeners = listeners
        self._process: asyncio.subprocess.Process | None = None
        self._channel: asyncio.StreamWriter | None = None
        self.serving = False
        self.told_ready = False  # the last PodReady this process was sent
        self.served = False  # has served at least once
        self.hung = False  # this process was killed for its stuck loop
        self._failures = 0  # consecutive short lives
        self._backoff = Backoff(RESTART_BACKOFF, RESTART_MAX_BACKOFF)
        self._snapshots: dict[int, asyncio.Future[None]] = {}  # requests awaiting an answer

    async def keep(self) -> int:
        """Run the worker, restarting it whenever it exits, until the drain; its last exit."""
        pod = self._pod
        while True:
            started = time.monotonic()
            code = await self._run_once()
            if pod.draining:
                return code
            if not self.served and not pod.every_worker_served():
                log.error("worker failed to start", extra={"worker": self.index, **_ended(code)})
                pod.abort()
                return code
            lived = time.monotonic() - started
            self._failures = 1 if lived >= STABLE_AFTER else self._failures + 1
            delay = self._backoff.delay(self._failures)
            reason = HUNG if self.hung else EXITED
            pod.restarting(reason)
            log.warning(
                "worker exited, restarting",
                extra={
                    "worker": self.index,
                    **_ended(code),
                    "reason": reason,
                    "lived_s": round(lived, 3),
                    "restart_in_s": round(delay, 3),
                },
            )
            if await pod.stops_within(delay):
                return 0  # it was already gone when the drain began

    def tell(self, message: PodReady | SnapshotRequest | Reload) -> None:
        if self._channel is not None:
            self._channel.write(encode(message))

    def ask_snapshot(self, seq: int) -> asyncio.Future[None] | None:
        """Ask a serving worker for its metrics; the future is done when they have come."""
        if self._channel is None or not self.serving:
            return None
        waiting = self._snapshots[seq] = asyncio.get_running_loop().create_future()
        self.tell(SnapshotRequest(seq))
        return waiting

    def signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()

    def kill_hung(self, silent: float) -> None:
        """Its loop has not beaten for ``silent`` seconds: kill it (once), to be replaced."""
        if self.hung or self._process is None:
            return
        self.hung = True
        # Killed before the line is logged: a worker stopped in the middle of its own write to
        # stderr holds the pod's stderr lock until it dies.
        self.signal(signal.SIGKILL)
        log.error(
            "worker hung, killed it",
            extra={"worker": self.index, "pid": self._process.pid, "silent_s": round(silent, 3)},
        )

    async def _run_once(self) -> int:
        """Start the worker's process, serve its channel until it ends; its exit status."""
        pod = self._pod
        ours, theirs = socket.socketpair()
        listen_fds = tuple(sock.fileno() for sock in self._listeners)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sidecar_proxy.workers.child",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(), *listen_fds, pod.memory.fd),
                stdin=subprocess.DEVNULL,
                # Out of the terminal's process group: Ctrl-C reaches the parent alone, which
                # forwards it as the one signal each worker acts on.
                start_new_session=True,
            )
        except OSError as exc:  # out of processes or descriptors: as if it died at once
            log.error("cannot start worker", extra={"worker": self.index, "error": str(exc)})
            ours.close()
            return _NOT_STARTED
        finally:
            theirs.close()
        hello = Hello(self.index, pod.count, pod.settings, listen_fds, pod.memory.fd)
        ours.sendall(encode(hello))  # small: it fits the socket buffer, so this cannot block
        reader, self._channel = await asyncio.open_connection(sock=ours)
        self._process = process
        self.hung = False
        log.debug("worker started", extra={"worker": self.index, "pid": process.pid})
        try:
            while True:
                self._received(await receive(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker is gone (or going): its end of the channel is closed
        self.serving = False
        self.told_ready = False
        self._channel.close()
        self._channel = None
        pod.metrics.retire(self.index)
        for waiting in self._snapshots.values():
            waiting.cancel()
        self._snapshots.clear()
        pod.readiness()
        code = await process.wait()
        self._process = None
        pod.worker_gone(self.index)
        return code

    def _received(self, message: Message) -> None:
        if isinstance(message, Serving):
            self.serving = self.served = True
            log.info("worker serving", extra={"worker": self.index})
            self._pod.readiness()
        elif isinstance(message, Snapshot):
            self._pod.metrics.update(self.index, message.families)
            waiting = self._snapshots.pop(message.seq, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)


class _PodCollector(Collector):
    """The registry's one collector: fresh snapshots from the workers, summed."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        # The admin server's thread: the snapshots are taken, and summed, on the event loop.
        supervisor = self._supervisor
        if supervisor.loop is None:
            return []
        try:
            future = asyncio.run_coroutine_threadsafe(supervisor.metrics_now(), supervisor.loop)
            return future.result(SNAPSHOT_TIMEOUT + 1.0)
        except (RuntimeError, TimeoutError):  # the loop is gone: the parent is exiting
            return []


class Supervisor:
    """The pod: its workers, its shared memory, its admin server, readiness and metrics."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        why: str,
        reload_from: SettingsSource | None = None,
    ) -> None:
        self.settings = settings
        self.why = why
        self.count = workers
        self._reload_from = reload_from
        # Not ready until every worker serves (and, with a check, the app is ready).
        self.health = HealthState(app_ready=settings.app_ready_check == "none", pod_ready=False)
        self.memory = PodMemory.create(workers)
        self.budget = SharedRetryBudget(self.memory, None, settings, time.monotonic)
        self.budget.initialise()
        self.breaker = SharedCircuitBreaker(self.memory, settings, time.monotonic, _no_transition)
        self._reloads = {RELOAD_SUCCESS: 0, RELOAD_FAILURE: 0}
        self._restarts = {EXITED: 0, HUNG: 0}
        self.metrics = PodMetrics(
            workers,
            settings.metrics_per_worker,
            {
                BREAKER_STATE: self._breaker_state,
                APP_READY: self._app_ready,
                CONFIG_RELOADS: self._reload_count,
                WORKER_RESTARTS: self._restart_count,
            },
        )
        self._app_check: AppReadyCheck | None = None
        self._app_ready_now = (
            settings.app_ready_check == "none"
        )  # the verdict, as the gauge shows it
        self.registry = CollectorRegistry()
        self.registry.register(_PodCollector(self))
        self.workers: list[_Worker] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # run()'s
        self.draining = False
        self.aborted = False
        self._stop = asyncio.Event()
        self._signals = 0
        self._seq = 0

    async def run(self) -> int:
        s = self.settings
        self.loop = loop = asyncio.get_running_loop()
        try:
            groups = bind_listeners(s, self.count)
        except OSError as exc:
            log.error("cannot listen", extra={"error": str(exc)})
            return 1
        self.workers = [_Worker(self, i, group) for i, group in enumerate(groups)]
        admin = AdminServer(
            s.metrics_host,
            s.metrics_port,
            self.registry,
            self.health,
            allow=s.admin_allow,
            on_quit=self.quit,
        )
        try:
            admin.start()
        except OSError as exc:
            log.error("cannot listen", extra={"error": str(exc)})
            self._close_listeners()
            return 1
        port = groups[0][0].getsockname()[1]
        log.info(
            "listening",
            extra={
                "listen": f"{s.listen_host}:{port}",
                "upstream": f"{s.upstream_host}:{s.upstream_port}",
                "admin": f"{s.metrics_host}:{admin.port}",
                "tls": bool(s.tls_cert_file),
                "upstream_tls": s.upstream_tls,
                "version": build_info().version,
                "build": build_info().kind,
                "workers": self.count,
                "workers_from": self.why,
            },
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._app_check = start_app_check(s, self.health, self._app_ready_changed)
        timers = [asyncio.create_task(self._book()), asyncio.create_task(self._snapshots())]
        if s.worker_heartbeat_timeout:
            timers.append(asyncio.create_task(self._watch(s.worker_heartbeat_timeout)))
        try:
            codes = await asyncio.gather(*(worker.keep() for worker in self.workers))
        finally:
            for timer in timers:
                timer.cancel()
            if self._app_check is not None:
                self._app_check.stop()
            admin.stop()
            self._close_listeners()
        if self.aborted:
            return 1
        log.info("stopped")
        return 0 if all(code in _DRAINED for code in codes) else 1

    # -- the pod --------------------------------------------------------------------------------

    def every_worker_served(self) -> bool:
        return all(worker.served for worker in self.workers)

    def readiness(self) -> None:
        """Ready while every worker serves, the app is ready and no drain has begun: tell each
        worker whenever that is not what it was last told."""
        self.health.set_pod_ready(all(worker.serving for worker in self.workers))
        ready = self.health.ready
        for worker in self.workers:
            if worker.serving and worker.told_ready != ready:
                worker.told_ready = ready
                worker.tell(PodReady(ready))

    def worker_gone(self, index: int) -> None:
        """Worker ``index`` has exited: its requests in flight went with it, and so did any
        probes it had sent."""
        self.memory.worker_gone(index)
        if self.memory.breaker_state is BreakerState.HALF_OPEN:
            self.breaker.forget_probes()

    async def stops_within(self, seconds: float) -> bool:
        """Wait ``seconds`` or until a stop begins; whether it has."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self.draining

    async def metrics_now(self) -> list[Metric]:
        """Fresh snapshots from every worker that answers within ``SNAPSHOT_TIMEOUT``, summed."""
        waits = []
        for worker in self.workers:
            self._seq += 1
            waiting = worker.ask_snapshot(self._seq)
            if waiting is not None:
                waits.append(waiting)
        if waits:
            await asyncio.wait(waits, timeout=SNAPSHOT_TIMEOUT)
        return self.metrics.collect()

    async def _snapshots(self) -> None:
        # Between scrapes too, so that a worker that dies takes at most this much of its
        # counts with it.
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            await self.metrics_now()

    async def _book(self) -> None:
        while True:
            await asyncio.sleep(BOOK_INTERVAL)
            self.budget.book()

    async def _watch(self, timeout: float) -> None:
        """Kill every worker whose loop has stopped beating (the module docstring)."""
        watch = HangWatch(timeout, time.monotonic)
        while True:
            await asyncio.sleep(BEAT_INTERVAL)
            for index, silent in watch.hung(self.memory.heartbeats):
                self.workers[index].kill_hung(silent)

    def restarting(self, reason: str) -> None:
        """A worker is about to be restarted, for ``reason`` (``EXITED`` or ``HUNG``)."""
        self._restarts[reason] += 1

    def _breaker_state(self, labels: Mapping[str, str]) -> float:
        return float(self.memory.breaker_state)

    def _app_ready(self, labels: Mapping[str, str]) -> float:
        return 1.0 if self._app_ready_now else 0.0

    def _reload_count(self, labels: Mapping[str, str]) -> float:
        return float(self._reloads.get(labels.get("result", ""), 0))

    def _restart_count(self, labels: Mapping[str, str]) -> float:
        return float(self._restarts.get(labels.get("reason", ""), 0))

    def _app_ready_changed(self, ready: bool) -> None:
        """The app readiness check changed its verdict (it has told ``health`` already)."""
        self._app_ready_now = ready
        self.readiness()

    # -- reloads --------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: load the configuration again, plan it once, and send it to every worker (see
        the module docstring). The log lines are one process's."""
        reload(self._reload_from, self.settings, self._apply, self._count_reload, log)

    def _apply(self, settings: Settings) -> None:
        old, self.settings = self.settings, settings
        if budget_settings(old) != budget_settings(settings):
            # The workers' budgets start afresh, so the region's does, and the parent books
            # by the new settings.
            self.budget = SharedRetryBudget(self.memory, None, settings, time.monotonic)
            self.budget.initialise()
        if settings.log_level != old.log_level:
            set_log_level(settings.log_level)
        for worker in self.workers:
            worker.tell(Reload(settings))

    def _count_reload(self, ok: bool) -> None:
        self._reloads[RELOAD_SUCCESS if ok else RELOAD_FAILURE] += 1

    # -- stopping -------------------------------------------------------------------------------

    def quit(self) -> None:
        """``POST /quitquitquit``, called on the admin thread: a stop, as the first signal."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._request_stop, "quitquitquit")

    def _request_stop(self, cause: str) -> None:
        if not self.draining:
            log.info("shutdown requested", extra={"by": cause})
            self._begin_stop()
            self._signal_workers(signal.SIGTERM)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal, exiting now", extra={"signal": name})
            self._signal_workers(signal.SIGTERM)  # each worker's second: it exits at once
            os._exit(1)
        self._request_stop(name)

    def abort(self) -> None:
        """A worker could not start: stop every worker at once, and exit 1."""
        self.aborted = True
        self._begin_stop()
        self._signal_workers(signal.SIGKILL)

    def _begin_stop(self) -> None:
        self.draining = True
        self._stop.set()
        self.health.shut_down()
        self.readiness()
        # The workers' copies are the last: the port closes when they close theirs.
        self._close_listeners()

    def _signal_workers(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            worker.signal(signum)

    def _close_listeners(self) -> None:
        for worker in self.workers:
            worker.close_listeners()


def _no_transition(old: BreakerState, new: BreakerState, reason: OpenReason | None) -> None:
    """The parent only frees probe slots, which is no transition."""


def _ended(code: int) -> dict[str, object]:
    """How a process ended, for a log line: ``exit`` code or ``signal`` name."""
    if code < 0:
        return {"signal": signal.Signals(-code).name}
    return {"exit": code}
