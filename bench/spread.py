"""``python -m bench.spread``: how the kernel and libuv spread client connections over worker
processes that accept on one port, with one shared listening socket or one ``SO_REUSEPORT``
socket per worker.

This measures the mechanism the sidecar's workers rely on, not the proxy: each worker here is a
uvloop server answering every request at once (with its worker number in a header), so the
figures show where connections land and how requests then follow them, undisturbed by what the
proxy does per request. Both ways of accepting are tried with the same client patterns:

* ``burst``: open C connections as fast as possible (as wrk and connection pools do at start),
  send one request on each, and note which worker answered; repeated ``--trials`` times.
* ``load``: wrk with C connections for a few seconds; each worker counts the requests it served.

The sidecar accepts the way this measurement favours; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

from bench.procs import HOST

MODES = ("shared", "reuseport")
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Worker: %d\r\n\r\nok"


# -- the worker side -----------------------------------------------------------------------------


class _Responder(asyncio.Protocol):
    """Answers every request head at once; counts connections and requests for its worker."""

    def __init__(self, worker: int, counts: list[int]) -> None:
        self._response = _RESPONSE % worker
        self._counts = counts
        self._pending = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._counts[0] += 1

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        data = self._pending + data
        heads = data.count(b"\r\n\r\n")
        self._pending = data[data.rfind(b"\r\n\r\n") + 4 :] if heads else data
        if heads:
            self._counts[1] += heads
            self._transport.write(self._response * heads)


def serve(fd: int, worker: int) -> None:
    """Run one worker on the inherited listening socket ``fd`` until SIGTERM, then print
    ``connections requests`` on stdout."""
    import uvloop  # noqa: PLC0415 - only the worker processes need it

    counts = [0, 0]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        sock = socket.socket(fileno=fd)
        server = await loop.create_server(lambda: _Responder(worker, counts), sock=sock)
        print("ready", flush=True)
        await stop.wait()
        server.close()

    uvloop.run(main())
    print(f"{counts[0]} {counts[1]}", flush=True)


# -- the measuring side -------------------------------------------------------------------------


@dataclass
class Workers:
    port: int
    procs: list[subprocess.Popen[str]]

    def stop(self) -> list[tuple[int, int]]:
        """Stop every worker; (connections, requests) each one served."""
        out = []
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            text, _ = proc.communicate(timeout=10)
            connections, requests = text.split()[-2:]
            out.append((int(connections), int(requests)))
        return out


def _listening(reuseport: bool, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen(2048)
    return sock


@contextmanager
def started(mode: str, count: int) -> Iterator[Workers]:
    first = _listening(mode == "reuseport")
    port = first.getsockname()[1]
    socks = [first] + [_listening(True, port) for _ in range(count - 1 if mode != "shared" else 0)]
    procs = []
    try:
        for worker in range(count):
            sock = socks[worker % len(socks)]
            argv = [sys.executable, "-m", "bench.spread", "--serve", str(sock.fileno())]
            procs.append(
                subprocess.Popen(
                    [*argv, "--worker", str(worker)],
                    pass_fds=(sock.fileno(),),
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for sock in socks:
            sock.close()  # the workers hold their own copies now
        yield Workers(port, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _burst(port: int, connections: int) -> list[int]:
    """Open ``connections`` at once, one request each; the worker that answered each."""
    pairs = await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(connections)))
    for _, writer in pairs:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    workers = []
    for reader, writer in pairs:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        workers.append(int(head.split(b"X-Worker: ")[1].split(b"\r\n")[0]))
        writer.close()
    return workers


def _wrk(port: int, connections: int, seconds: int) -> int:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: run `bash scripts/install-test-tools.sh`")
    argv = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", f"http://{HOST}:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30)
    return int(out.stdout.split(" requests in ")[0].split()[-1])


def _largest_share(counts: list[int]) -> float:
    return max(counts) / max(1, sum(counts))


def measure(workers: int, connection_counts: list[int], trials: int, seconds: int) -> str:
    lines = [
        f"{workers} workers; largest share of one worker (even = {1 / workers:.0%}); "
        f"burst: {trials} trials, mean [worst]; load: wrk -t2 for {seconds} s",
        f"  {'mode':<10} {'conns':>5}  {'burst: connections':>20}  {'load: requests':>16}",
    ]
    for mode in MODES:
        for connections in connection_counts:
            with started(mode, workers) as group:
                shares = []
                burst_requests = [0] * workers
                for _ in range(trials):
                    answered = asyncio.run(_burst(group.port, connections))
                    counts = [answered.count(w) for w in range(workers)]
                    shares.append(_largest_share(counts))
                    burst_requests = [a + b for a, b in zip(burst_requests, counts, strict=True)]
                    time.sleep(0.05)  # let the workers see the closes before the next burst
                _wrk(group.port, connections, seconds)
                served = group.stop()
            # The load share is over the wrk run alone: take away the bursts' requests.
            load = _largest_share([r - b for (_, r), b in zip(served, burst_requests, strict=True)])
            lines.append(
                f"  {mode:<10} {connections:>5}  "
                f"{statistics.mean(shares):>12.0%} [{max(shares):.0%}]  {load:>16.0%}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spread", description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.worker)
        return 0
    counts = [int(c) for c in args.connections.split(",")]
    print(measure(args.workers, counts, args.trials, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
