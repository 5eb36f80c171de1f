"""The app readiness check (``APP_READY_CHECK``): ``/ready`` follows the app, not just the proxy.

Every ``APP_READY_INTERVAL`` the app is probed on its own port, on the proxy's event loop:

* ``tcp``: the port accepts a connection (the kubelet's ``tcpSocket`` probe);
* ``http:/path``: ``GET /path`` answers 2xx (the kubelet's ``httpGet`` probe, which takes
  200-399; redirects are not followed here, and a health endpoint that redirects is a
  misconfiguration better reported than hidden).

A probe has the interval to finish, else it fails; probes start an interval apart, start to
start. The results go through :class:`~sidecar_proxy.policy.readiness.ReadinessGate`, and each
change of the verdict is pushed to the :class:`~.health.HealthState` (which both ports' ``/ready``
read), to the ``sidecar_app_ready`` gauge and to the log. Probes use fresh connections, never the
proxy's pool: a pooled connection proves nothing about the app accepting new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable

from sidecar_proxy import __version__
from sidecar_proxy.config import Settings
from sidecar_proxy.lifecycle.health import HealthState
from sidecar_proxy.policy.readiness import ReadinessGate

log = logging.getLogger("sidecar_proxy.appcheck")

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[ \r\n]")
_MAX_STATUS_LINE = 8192


async def probe(check: str, host: str, port: int, timeout: float) -> bool:
    """One check of the app; any failure, timeout included, is ``False``."""
    try:
        return await asyncio.wait_for(_probe(check, host, port), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False


async def _probe(check: str, host: str, port: int) -> bool:
    reader, writer = await asyncio.open_connection(host, port, limit=_MAX_STATUS_LINE)
    try:
        if check == "tcp":
            return True
        path = check.removeprefix("http:")
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: sidecar-proxy/{__version__} app-ready-check\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        match = _STATUS_LINE.match(await reader.readuntil(b"\n"))
        return match is not None and 200 <= int(match.group(1)) < 300
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class AppReadyCheck:
    """Probes the app on a schedule and reports readiness changes; :meth:`start` and
    :meth:`stop` run on the event loop."""

    def __init__(
        self,
        check: str,
        host: str,
        port: int,
        *,
        interval: float,
        failures: int,
        health: HealthState,
        on_change: Callable[[bool], None],
    ) -> None:
        self._check = check
        self._host = host
        self._port = port
        self._interval = interval
        self._gate = ReadinessGate(failures)
        self._health = health
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._health.set_app_ready(self._gate.ready)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="app-ready-check")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval
        while True:
            started = loop.time()
            ok = await probe(self._check, self._host, self._port, interval)
            if self._gate.record(ok):
                ready = self._gate.ready
                self._health.set_app_ready(ready)
                self._on_change(ready)
                level = logging.INFO if ready else logging.WARNING
                log.log(
                    level,
                    "app ready" if ready else "app not ready",
                    extra={"check": self._check, "app": f"{self._host}:{self._port}"},
                )
            await asyncio.sleep(max(0.0, started + interval - loop.time()))


def start_app_check(
    s: Settings, health: HealthState, on_change: Callable[[bool], None]
) -> AppReadyCheck | None:
    """Start the check ``APP_READY_CHECK`` asks for (on the running loop), or ``None`` when it
    is ``none``. A multi-process sidecar runs it once, in the parent."""
    if s.app_ready_check == "none":
        return None
    check = AppReadyCheck(
        s.app_ready_check,
        s.upstream_host,
        s.upstream_port,
        interval=s.app_ready_interval,
        failures=s.app_ready_failures,
        health=health,
        on_change=on_change,
    )
    check.start()
    return check
