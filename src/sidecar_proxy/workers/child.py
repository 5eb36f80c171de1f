"""A worker: ``python -m sidecar_proxy.workers.child CONTROL_FD``, started by the parent.

It reads its :class:`~.channel.Hello` from the control socket, then runs the proxy of
:mod:`sidecar_proxy.server` on its own uvloop: on the listening sockets the parent bound, with
the pod's shared policies and access-log lock, without an admin server or an app readiness
check (the parent runs the pod's). It tells the parent when it serves, answers snapshot
requests with its metric families, sets its ``/ready`` on the proxy port from the parent's word
on the whole pod, and applies the settings of each reload the parent sends. It loads its TLS
files itself, from the paths in the settings, and watches them for rotation as one process does;
it loads its own copy of the hooks (``HOOKS``) too, at start and again on each reload (hooks
that fail to load then keep the worker's running settings and hooks, logged by the worker).

Signals: the parent owns them. A worker runs in its own session (Ctrl-C in a terminal reaches
the parent alone) and drains on the SIGTERM the parent forwards; a second SIGTERM exits at once,
as the single process does; SIGHUP to a worker is logged and ignored (the parent reloads every
worker). If the parent dies, the control socket reaches its end and the
worker stops at once: an orphan must not hold the port.

Liveness: with ``WORKER_HEARTBEAT_TIMEOUT`` on, a timer of the worker's loop stamps its heartbeat
in the pod's shared memory every :data:`~sidecar_proxy.policy.liveness.BEAT_INTERVAL`, from the
moment the loop starts (before the hooks load); the parent kills a worker whose heartbeat grows
too old.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from typing import cast

import uvloop

from sidecar_proxy.hooks.load import HookLoadError
from sidecar_proxy.observe.logs import configure_logging
from sidecar_proxy.policy.liveness import BEAT_INTERVAL
from sidecar_proxy.server import (
    ProxyServer,
    WorkerRole,
    handle_stop_signals,
    serve_until_stopped,
    tune_malloc,
)
from sidecar_proxy.tls.material import MaterialError
from sidecar_proxy.workers.channel import (
    Decoder,
    Hello,
    PodReady,
    Reload,
    Serving,
    Snapshot,
    SnapshotRequest,
    encode,
    read_hello,
)
from sidecar_proxy.workers.shared import PodMemory, SharedPolicies

log = logging.getLogger("sidecar_proxy.workers")


class _WorkerField(logging.Filter):
    """Adds ``worker`` to every log record of this process, so lines can be told apart."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._worker
        return True


class _Control(asyncio.Protocol):
    """The worker's end of the control channel."""

    def __init__(self, server: ProxyServer, parent_gone: asyncio.Event) -> None:
        self._server = server
        self._parent_gone = parent_gone
        self._decoder = Decoder()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, message: Serving | Snapshot) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode(message))

    def data_received(self, data: bytes) -> None:
        server = self._server
        for message in self._decoder.feed(data):
            if isinstance(message, PodReady):
                # A drain has said "not ready" for good (HealthState.shut_down): the parent's
                # word cannot undo that.
                server.health.set_pod_ready(message.ready)
            elif isinstance(message, SnapshotRequest):
                families = list(server.metrics.registry.collect())
                self.send(Snapshot(message.seq, families))
            elif isinstance(message, Reload):
                try:
                    server.apply(message.settings)
                except HookLoadError as exc:
                    # The parent does not run the hooks' code, so only the worker can find out.
                    log.error(
                        f"hooks error: {exc}", extra={"reload": "running settings and hooks kept"}
                    )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._parent_gone.set()


def _beat(loop: asyncio.AbstractEventLoop, memory: PodMemory, worker: int) -> None:
    """Stamp this loop's heartbeat now, and again in ``BEAT_INTERVAL``: a timer, so the stamps
    stop when the loop does."""
    memory.beat(worker, time.monotonic())
    loop.call_later(BEAT_INTERVAL, _beat, loop, memory, worker)


async def _serve(hello: Hello, memory: PodMemory, control: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    settings = hello.settings
    if settings.worker_heartbeat_timeout:
        _beat(loop, memory, hello.worker)
    role = WorkerRole(SharedPolicies(memory, hello.worker, loop.time), memory.log_lock)
    server = ProxyServer(settings, worker=role)  # not ready until the parent says the pod is
    listeners = [socket.socket(fileno=fd) for fd in hello.listen_fds]
    parent_gone = asyncio.Event()
    _, channel = await loop.create_connection(lambda: _Control(server, parent_gone), sock=control)
    handle_stop_signals(server, (signal.SIGTERM,))
    try:
        await server.start_proxy(listeners)
    except MaterialError as exc:  # the parent's check passed; the files changed in between
        log.error("unusable TLS files", extra={"error": str(exc)})
        await server.close()
        return 2
    except HookLoadError as exc:  # the parent's check passed; the file changed in between
        log.error(f"hooks error: {exc}")
        await server.close()
        return 2
    except OSError as exc:
        log.error("cannot serve", extra={"error": str(exc)})
        await server.close()
        return 1
    channel.send(Serving())
    code = await serve_until_stopped(server, abandon=parent_gone)
    if parent_gone.is_set() and code:
        log.error("parent gone, stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    control = socket.socket(fileno=int(args[0]))
    hello = read_hello(control)
    memory = PodMemory(hello.memory_fd, hello.workers)
    # The parent's and every worker's lines share one stderr: one line at a time, pod-wide.
    configure_logging(hello.settings.log_level, exclusive=memory.stderr_lock)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(hello.worker))
    tune_malloc()
    return uvloop.run(_serve(hello, memory, control))


if __name__ == "__main__":
    sys.exit(main())
