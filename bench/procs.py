"""Starting, checking, measuring and always stopping the processes a benchmark runs.

Every process is started in its own session (so its process group is its pid) and registered
with a :class:`Supervisor`; :meth:`Supervisor.stop_all` signals whole groups, so children that a
peer forks (nginx's workers) go too, even when the benchmark itself fails half-way.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
# The proxy under test gets core 0 to itself; the load generator, the upstream and this script
# share core 1. See docs/benchmarks.md for why the upstream sits with the load generator.
CORE_PROXY = 0
CORE_LOAD = 1
# The cores this process may use, read once when it starts: every benchmark script then moves
# itself onto CORE_LOAD, after which its own affinity names one core. Asked afterwards,
# pinning_available() said no, and every peer, wrk and the upstream inherited the script's
# one core: the proxy under test shared core 1 with its load.
_CORES_AT_START = frozenset(os.sched_getaffinity(0))


class PeerError(RuntimeError):
    """A process did not come up or stopped answering; the message says which and why."""


def free_port() -> int:
    """A port that was free a moment ago. Another process may take it before we bind, so the
    caller fails with a clear message (the peer's stderr says "address in use") rather than
    retrying silently."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinning_available() -> bool:
    return shutil.which("taskset") is not None and {CORE_PROXY, CORE_LOAD} <= _CORES_AT_START


def pinned(core: int | None, argv: list[str]) -> list[str]:
    """``argv`` run on one core; taskset execs the command, so the pid stays the command's."""
    if core is None:
        return argv
    return ["taskset", "-c", str(core), *argv]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no stderr captured)"
        tail = text.strip().splitlines()[-lines:]
        return "\n".join("    " + line for line in tail) if tail else "    (stderr is empty)"


class LineDrain:
    """Reads a child's stdout pipe to the end and counts lines: the access log "collector".

    A real log collector reads the pipe in another process; a thread here does the same job
    (it only wakes per 64 KiB read, and this script runs on the load core, not the proxy's).
    The line count doubles as a check that the proxy logged every request.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines = 0
        self.bytes = 0
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="log-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.bytes += len(chunk)
            self.lines += chunk.count(b"\n")


@dataclass
class Supervisor:
    """Owns every process a run starts; ``stop_all`` is called from a ``finally``."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        core: int | None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> Proc:
        stderr_path = self.workdir / f"{name}.stderr"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                pinned(core, argv),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # own process group: killpg reaches its children
            )
        proc = Proc(name, popen, stderr_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 3.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout``."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout)
        # The leader may be gone while a child (an nginx worker) lingers: always sweep the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(2.0)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren and so on, found through /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name is in parentheses and may contain spaces: split after the last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def status_kib(pid: int, field: str) -> int:
    """A /proc/PID/status figure (VmRSS and VmHWM in KiB, Threads); 0 once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` plus all its descendants (nginx: master + worker).

    Summing RSS counts pages shared between parent and child twice (nginx's master and worker
    share their code), so multi-process peers are slightly overstated; the single-process peers
    (the sidecar, aiohttp, Go) are exact.
    """
    return sum(status_kib(each, "VmRSS") for each in [pid, *descendants(pid)]) * 1024


def unique_bytes(pid: int) -> int:
    """Memory of ``pid``'s process tree with each resident page counted once: every process's
    private pages, plus the largest process's shared ones.

    :func:`rss_bytes` counts the pages the processes share (the interpreter, its libraries)
    once per process. The processes of one program share nearly the same set, which is what
    the container's memory cgroup is charged for once; the largest set stands for all of them
    (``/proc/PID/smaps_rollup``, Linux 4.14+).
    """
    private = shared = 0
    for each in [pid, *descendants(pid)]:
        fields: dict[str, int] = {}
        try:
            for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines()[1:]:
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0]) * 1024
        except (OSError, ValueError):
            continue
        private += fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        shared = max(shared, fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0))
    return private + shared


@dataclass(frozen=True)
class CpuSample:
    """Scheduler time of a process tree, summed over every thread, in nanoseconds."""

    on_cpu: int  # time spent running
    waiting: int  # time runnable but waiting for a core: other work on the proxy's core


def cpu_sample(pid: int) -> CpuSample:
    """From /proc/PID/task/TID/schedstat, which counts in nanoseconds (``stat``'s utime and
    stime are 10 ms ticks, too coarse for a per-request figure).

    CPU time per request is the figure least disturbed by a shared machine: when other work
    takes the proxy's core, requests per second fall but the CPU each request costs barely
    moves. The waiting time says how much the core was taken from the proxy.
    """
    on_cpu = waiting = 0
    for each in [pid, *descendants(pid)]:
        try:
            tids = os.listdir(f"/proc/{each}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{each}/task/{tid}/schedstat").read_text().split()
            except OSError:
                continue  # the thread exited while we looked
            on_cpu += int(fields[0])
            waiting += int(fields[1])
    return CpuSample(on_cpu, waiting)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_answers(proc: Proc | None, name: str, port: int, path: str, size: int) -> None:
    """One GET through ``port``; raise :class:`PeerError` unless it is a 200 of ``size`` bytes."""
    try:
        status, body = http_get(port, path)
    except OSError as exc:
        raise PeerError(_failure(proc, name, f"GET {path} on port {port} failed: {exc}")) from exc
    if status != 200 or len(body) != size:
        raise PeerError(
            _failure(
                proc,
                name,
                f"GET {path} on port {port}: status {status}, {len(body)} bytes, "
                f"expected 200 with {size} bytes",
            )
        )


def wait_ready(
    proc: Proc, name: str, port: int, path: str, size: int, *, timeout: float = 20.0
) -> None:
    """Poll until ``port`` answers ``path`` correctly; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    last = "never answered"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise PeerError(
                _failure(proc, name, f"exited with code {proc.popen.returncode} before answering")
            )
        try:
            check_answers(proc, name, port, path, size)
            return
        except PeerError as exc:
            last = str(exc).splitlines()[0]
        time.sleep(0.1)
    raise PeerError(_failure(proc, name, f"not ready after {timeout:.0f} s ({last})"))


def _failure(proc: Proc | None, name: str, what: str) -> str:
    if proc is None:
        return f"{name}: {what}"
    return f"{name}: {what}\n  stderr tail ({proc.stderr_path}):\n{proc.stderr_tail()}"
