"""Run the installed ``sidecar-proxy`` command as a real subprocess, as users do.

Ports, HTTP calls and memory figures come from the one process toolkit, :mod:`bench.procs`,
which the benchmarks and the soak use too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procs import free_port, http_get, status_kib
from sidecar_proxy.config import FIELDS

__all__ = ["ProxyProcess", "free_port", "http_get", "run_cli", "run_proxy"]

COMMAND = str(Path(sys.executable).with_name("sidecar-proxy"))


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed script with none of the runner's own sidecar settings leaking in."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if key != "SIDECAR_CONFIG" and key not in {field.env for field in FIELDS}
    }
    return subprocess.run(
        [COMMAND, *args],
        env=clean | (env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status_kib(self, field: str) -> int:
        """A /proc/PID/status memory figure (VmRSS, VmHWM) in KiB."""
        kib = status_kib(self.pid, field)
        assert kib, f"no {field} for pid {self.pid}"
        return kib

    def ready(self) -> int:
        return self.admin("/ready")

    def admin(self, path: str) -> int:
        """The status of a GET on the admin port."""
        return http_get(self.admin_port, path, timeout=1)[0]


@contextmanager
def run_proxy(
    upstream_port: int,
    env: dict[str, str] | None = None,
    stdout: int | None = None,
    started: str = "/ready",
) -> Iterator[ProxyProcess]:
    """The proxy as a process, once ``started`` (an admin path) answers 200: ``/health`` for
    one whose ``/ready`` waits for its app."""
    # A port found free can be taken by another socket before the child binds it; that is the
    # test's race, not the proxy's, so pick again.
    for _ in range(3):
        try:
            proc = _start(upstream_port, env, stdout, started)
        except PortTaken:
            continue
        try:
            yield proc
        finally:
            _stop(proc.proc)
        return
    raise AssertionError("no free ports for sidecar-proxy after 3 tries")


class PortTaken(Exception):
    pass


def sidecar_env(port: int, admin: int, upstream_port: int, env: dict[str, str]) -> dict[str, str]:
    """This process's environment, the proxy on loopback in front of ``upstream_port``, no
    drain delay, and ``env`` over all that."""
    return {
        **os.environ,
        "SIDECAR_LISTEN_PORT": str(port),
        "METRICS_PORT": str(admin),
        "LISTEN_HOST": "127.0.0.1",
        "METRICS_HOST": "127.0.0.1",
        "UPSTREAM_HOST": "127.0.0.1",
        "UPSTREAM_PORT": str(upstream_port),
        "DRAIN_DELAY": "0s",
        "LOG_LEVEL": "warning",
        **env,
    }


def _start(
    upstream_port: int, env: dict[str, str] | None, stdout: int | None, started: str
) -> ProxyProcess:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [COMMAND, "run"],
        env=sidecar_env(port, admin, upstream_port, env or {}),
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    p = ProxyProcess(proc, port, admin)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            _stop(proc)
            if "address already in use" in err.lower():
                raise PortTaken(err)
            raise AssertionError(f"sidecar-proxy exited {proc.returncode}: {err}")
        try:
            if p.admin(started) == 200:
                return p
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            raise AssertionError("sidecar-proxy did not become ready")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
    if proc.stderr:
        proc.stderr.close()
