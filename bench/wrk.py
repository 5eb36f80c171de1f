"""Running wrk and reading its report."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from bench.procs import HOST, pinned

# wrk prints times with these suffixes and sizes in powers of 1024 (its "MB" is a MiB).
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+)(\w+)", re.M)
_PERCENTILE = re.compile(r"^\s+(\d+)%\s+([\d.]+)(\w+)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    bytes_per_s: float
    requests: int
    socket_errors: int
    non_2xx: int

    @property
    def mib_per_s(self) -> float:
        return self.bytes_per_s / 1024**2

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mib_per_s": self.mib_per_s}


class WrkError(RuntimeError):
    pass


def _time_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def _size(value: str, unit: str) -> float:
    return float(value) * _SIZE_UNITS[unit]


def parse(text: str) -> WrkResult:
    """wrk's ``--latency`` report as numbers; raises :class:`WrkError` if a line is missing."""
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    transfer = _TRANSFER.search(text)
    percentiles = {int(m[1]): _time_ms(m[2], m[3]) for m in _PERCENTILE.finditer(text)}
    if requests is None or rps is None or transfer is None or not {50, 99} <= percentiles.keys():
        raise WrkError(f"cannot parse wrk output:\n{text}")
    socket_errors = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests_per_s=float(rps[1]),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        bytes_per_s=_size(transfer[1], transfer[2]),
        requests=int(requests[1]),
        socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
    )


def run(
    port: int,
    path: str,
    connections: int,
    duration: float,
    core: int | None,
    *,
    scheme: str = "http",
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """One wrk run with one thread (one core's worth of load generator, pinned to ``core``).

    ``headers`` are sent with every request; ``Connection: close`` makes each request open
    (and, over https, handshake) a connection of its own.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkError("wrk not found: run `bash scripts/install-test-tools.sh` (make bench)")
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
        *(arg for header in headers for arg in ("-H", header)),
        f"{scheme}://{HOST}:{port}{path}",
    ]
    done = subprocess.run(
        pinned(core, argv), capture_output=True, text=True, timeout=duration + 30, check=False
    )
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse(done.stdout)
