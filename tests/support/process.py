"""Run the installed ``sidecar-proxy`` command as a real subprocess, as users do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

COMMAND = str(Path(sys.executable).with_name("sidecar-proxy"))


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick, released again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; HTTP error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


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
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field}")

    def ready(self) -> int:
        return http_get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)[0]


@contextmanager
def run_proxy(
    upstream_port: int, env: dict[str, str] | None = None, stdout: int | None = None
) -> Iterator[ProxyProcess]:
    # A port found free can be taken by another socket before the child binds it; that is the
    # test's race, not the proxy's, so pick again.
    for _ in range(3):
        try:
            proc = _start(upstream_port, env, stdout)
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


def _start(upstream_port: int, env: dict[str, str] | None, stdout: int | None) -> ProxyProcess:
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
            if p.ready() == 200:
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
