"""A sidecar with several workers, run as the real process tree users get, and ways to see
inside it: its workers' pids, its metrics, which worker a connection landed on, its log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from support.client import read_responses
from support.process import COMMAND, free_port, http_get, sidecar_env

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Pod:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    stderr: Path

    def workers(self) -> list[int]:
        """The pids of the worker processes now (children of the parent)."""
        return children(self.proc.pid)

    def ready(self) -> int:
        return http_get(self.admin_port, "/ready", timeout=2)[0]

    def samples(self) -> Samples:
        status, body = http_get(self.admin_port, "/metrics", timeout=5)
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def total(self, name: str, **labels: str) -> float:
        """The sum of every ``name`` sample whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, k), v in self.samples().items() if n == name and want <= k)

    def per_worker(self, name: str, **labels: str) -> dict[str, float]:
        """``name`` summed per ``worker`` label (METRICS_PER_WORKER=true)."""
        out: dict[str, float] = {}
        want = set(labels.items())
        for (n, k), v in self.samples().items():
            if n == name and want <= k:
                worker = dict(k)["worker"]
                out[worker] = out.get(worker, 0.0) + v
        return out

    def which_worker(self, sock: socket.socket, path: str = "/ok") -> str:
        """Send one GET on ``sock`` and tell which worker answered it, by the per-worker count
        of requests that rose (METRICS_PER_WORKER=true)."""
        before = self.per_worker("sidecar_requests_total")
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        (response,), _ = read_responses(sock, 1)
        assert response.status == 200, response
        after = self.per_worker("sidecar_requests_total")
        (worker,) = [w for w in after if after[w] > before.get(w, 0.0)]
        return worker

    def connections_by_worker(self, each: int, path: str = "/ok") -> dict[str, list[socket.socket]]:
        """Keep-alive connections, at least ``each`` on every worker."""
        found: dict[str, list[socket.socket]] = {}
        for _ in range(64):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            found.setdefault(self.which_worker(sock, path), []).append(sock)
            if len(found) > 1 and all(len(socks) >= each for socks in found.values()):
                return found
        raise AssertionError(f"64 connections did not reach every worker {each} times: {found}")

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line]


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate: Any, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(step)
    return True


@contextlib.contextmanager
def run_pod(
    upstream_port: int,
    env: dict[str, str],
    stdout: int | None = None,
    workers: int = 2,
    started: str = "/ready",
    *,
    stderr_to: int | None = None,
) -> Iterator[Pod]:
    """``sidecar-proxy run`` with ``WORKERS=workers``, once ``started`` (an admin path) answers
    200: ``/ready`` means every worker serves; killed, workers and all, on the way out.
    ``stderr_to``: a descriptor for its stderr instead of the file :meth:`Pod.log` reads."""
    with tempfile.TemporaryDirectory(prefix="pod-") as tmp:
        stderr = Path(tmp) / "stderr"
        pod = _start(
            upstream_port, env, stdout, workers, stderr, started=started, stderr_to=stderr_to
        )
        try:
            yield pod
        finally:
            pids = pod.workers()
            if pod.proc.poll() is None:
                pod.proc.kill()  # the workers stop when their control channel closes
            pod.proc.wait(5)
            if not wait_for(lambda: not any(alive(p) for p in pids), 5):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                raise AssertionError("workers outlived their parent")


def _start(
    upstream_port: int,
    env: dict[str, str],
    stdout: int | None,
    workers: int,
    stderr: Path,
    *,
    started: str,
    stderr_to: int | None,
) -> Pod:
    for _ in range(3):  # a port found free may be taken before the parent binds it
        port, admin = free_port(), free_port()
        settings = {"WORKERS": str(workers), "LOG_LEVEL": "info", **env}
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                [COMMAND, "run"],
                env=sidecar_env(port, admin, upstream_port, settings),
                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                stderr=err if stderr_to is None else stderr_to,
            )
        pod = Pod(proc, port, admin, stderr)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if http_get(admin, started, timeout=2)[0] == 200:
                    return pod
            time.sleep(0.05)
        text = stderr.read_text()
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if "address already in use" not in text.lower():
            raise AssertionError(f"sidecar-proxy with {workers} workers did not start:\n{text}")
    raise AssertionError("no free ports for sidecar-proxy after 3 tries")
