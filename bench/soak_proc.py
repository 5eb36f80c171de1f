"""The real ``sidecar-proxy`` process under soak: start it, probe it, sample it, always stop it.

The proxy is started from the console script next to this interpreter, as users run it, with
its settings in environment variables. Any setting already in our own environment is dropped
first, so a run measures the configuration written here and nothing inherited. Its access log
(stdout) and its own log (stderr) go to files beside the soak's results: the access log is the
proxy's ledger, which the report uses to explain a violation (attempts, response flags).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.procs import free_port
from bench.soak_app import HOST
from sidecar_proxy.config import FIELDS
from sidecar_proxy.config.loader import CONFIG_ENV

COMMAND = Path(sys.executable).with_name("sidecar-proxy")
_PR_SET_PDEATHSIG = 1


try:
    # loaded here, not in the child: between fork and exec only the prctl call itself runs
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the soak dies, however the soak dies (a CI
    timeout's SIGKILL skips every finally). Linux's PR_SET_PDEATHSIG; elsewhere a no-op."""
    prctl = getattr(_LIBC, "prctl", None)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class SoakSetupError(RuntimeError):
    """The soak could not run (the proxy would not start); not a finding about the proxy."""


@dataclass
class Sample:
    """The proxy's resources at one moment."""

    t: float  # seconds since the start of traffic (negative: before it)
    phase: str  # "baseline", "traffic" or "settle"
    rss_kib: int
    fds: int
    threads: int
    in_flight: float  # sidecar_requests_in_flight; -1 if the scrape failed
    downstream: float  # sidecar_downstream_connections; -1 if the scrape failed


_GAUGE = re.compile(rb"^(sidecar_requests_in_flight|sidecar_downstream_connections) (\S+)$", re.M)


class ProxyProcess:
    def __init__(self, upstream_port: int, settings: dict[str, str], log_dir: Path, stem: str):
        if not COMMAND.exists():
            raise SoakSetupError(f"{COMMAND} not found; run `make` to install the project first")
        self.port = free_port()
        self.admin_port = free_port()
        self.settings = settings
        self.access_log = log_dir / f"{stem}.access.log"
        self.stderr_log = log_dir / f"{stem}.proxy.log"
        names = {f.env for f in FIELDS} | {CONFIG_ENV}
        env = {k: v for k, v in os.environ.items() if k not in names}
        env.update(settings)
        env.update(
            SIDECAR_LISTEN_PORT=str(self.port),
            METRICS_PORT=str(self.admin_port),
            LISTEN_HOST=HOST,
            METRICS_HOST=HOST,
            UPSTREAM_HOST=HOST,
            UPSTREAM_PORT=str(upstream_port),
        )
        with open(self.access_log, "wb") as out, open(self.stderr_log, "wb") as err:
            # its own session, so a signal aimed at the soak's terminal does not reach it and
            # the finally below is what stops it
            self.proc = subprocess.Popen(
                [str(COMMAND), "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                # The soak has no threads yet when it starts the proxy (asyncio binds the
                # literal 127.0.0.1 without its resolver thread), which is what makes a
                # preexec_fn safe here.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SoakSetupError(
                    f"sidecar-proxy exited {self.proc.returncode}: {self.stderr_tail()}"
                )
            try:
                status, _ = await asyncio.to_thread(procs.http_get, self.admin_port, "/ready", 1.0)
                if status == 200:
                    return
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise SoakSetupError(f"sidecar-proxy not ready after {timeout}s: {self.stderr_tail()}")

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return self.stderr_log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    async def sample(self, t: float, phase: str) -> Sample:
        """A sample; -1 for what could not be read (the process is gone)."""
        try:
            rss = procs.status_kib(self.pid, "VmRSS") or -1
            threads = procs.status_kib(self.pid, "Threads") or -1
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            rss = threads = fds = -1
        gauges: dict[bytes, float] = {}
        try:
            status, body = await asyncio.to_thread(procs.http_get, self.admin_port, "/metrics", 2.0)
            if status == 200:
                gauges = {m.group(1): float(m.group(2)) for m in _GAUGE.finditer(body)}
        except (OSError, TimeoutError):
            pass
        return Sample(
            t=round(t, 2),
            phase=phase,
            rss_kib=rss,
            fds=fds,
            threads=threads,
            in_flight=gauges.get(b"sidecar_requests_in_flight", -1.0),
            downstream=gauges.get(b"sidecar_downstream_connections", -1.0),
        )

    def stop(self) -> None:
        """SIGTERM (a clean drain: DRAIN_DELAY 0, a short grace), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.exit_code = self.proc.returncode
