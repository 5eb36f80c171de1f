"""``python -m bench.grpc``: gRPC through the sidecar against nginx ``grpc_pass`` and against the
app directly (docs/benchmarks.md, "gRPC").

The app is the gRPC tests' ``grpc.aio`` Echo service (tests/support/grpcapp.py, its proto
generated at start), run by ``bench.peers.grpc_peer``. In front of it, one at a time on the proxy
core:

* ``direct``: no proxy, the ceiling;
* ``nginx``: ``listen ... http2`` with ``grpc_pass`` to an ``upstream`` with ``keepalive 100``
  (``bench.nginx.write_grpc_proxy``), no access log;
* ``sidecar``: ``UPSTREAM_PROTOCOL=h2c``, access log on (to /dev/null) and metrics on, as shipped.

Before anything is measured, one grpcio unary call through each checks the reply. Then:

* unary: h2load POSTs one length-prefixed protobuf message to ``/sidecar.test.Echo/Unary``
  (``content-type: application/grpc``, ``te: trailers``), at 16 connections x 16 streams and at
  64 connections x 1, after a discarded warm-up run; req/s, and the proxy's CPU per call from its
  schedstat (the figure a shared machine disturbs least: the Python app is the bottleneck for
  every peer, so the rates say more about the app than about the proxy);
* streaming: a grpcio client reads one server-streaming call of ``--messages`` small messages,
  checking each; messages per second (median of ``--repeats``) and the proxy's CPU per message.

The proxy has core 0, the app, h2load and the grpcio client core 1, as in ``bench.h2``; the peer
order rotates from round to round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import nginx
from bench.h2 import run_h2load
from bench.procs import (
    CORE_LOAD,
    CORE_PROXY,
    HOST,
    PeerError,
    Proc,
    Supervisor,
    cpu_sample,
    free_port,
    pinned,
    pinning_available,
)
from bench.run import REPO, RESULTS, rotated, sidecar_binary

PEERS = ("direct", "nginx", "sidecar")
SHAPES = {"16x16": ("-c16", "-m16"), "64x1": ("-c64", "-m1")}
METHOD = "/sidecar.test.Echo/Unary"
# Targets: unary req/s >= 1.0x nginx grpc_pass, streaming >= 0.5x nginx msgs/s.
UNARY_TARGET = 1.0
STREAM_TARGET = 0.5


@dataclass(frozen=True)
class Result:
    """One measured run: calls per second (unary) or messages per second (streaming), how many
    were done and how many succeeded (2xx for h2load; every message checked for grpcio), and
    the proxy's CPU time per call or message (None for direct)."""

    rate: float
    done: int
    ok: int
    cpu_us: float | None


@dataclass
class Peer:
    name: str
    port: int
    proc: Proc | None  # the proxy whose CPU is read; None for direct


class Grpc:
    """Runs ``bench.peers.grpc_peer`` with the tests' support package importable; each process
    generates the proto into a directory of its own."""

    def __init__(self, sup: Supervisor, work: Path, core: int | None) -> None:
        self.sup = sup
        self.work = work
        self.core = core
        self.env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        self.env["PYTHONPATH"] = str(REPO / "tests")
        self.made = 0

    def argv(self, *args: str) -> list[str]:
        self.made += 1
        protos = self.work / f"protos-{self.made}"
        protos.mkdir()
        return [sys.executable, "-m", "bench.peers.grpc_peer", args[0], str(protos), *args[1:]]

    def serve(self) -> tuple[Proc, int]:
        proc = self.sup.start(
            "app", self.argv("serve"), core=self.core, env=self.env, stdout=subprocess.PIPE,
            cwd=REPO,
        )  # fmt: skip
        assert proc.popen.stdout is not None
        line = proc.popen.stdout.readline()  # the port, once the app listens; b"" if it died
        if not line.strip().isdigit():
            raise PeerError(f"grpc app did not start:\n{proc.stderr_tail()}")
        return proc, int(line)

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            pinned(self.core, self.argv(*args)),
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self, peer: Peer, timeout: float = 20.0) -> None:
        """One unary call through ``peer`` whose reply must echo the request; retried until the
        peer is up or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.run("check", str(peer.port))
            if done.returncode == 0:
                return
            if time.monotonic() > deadline or (peer.proc is not None and not peer.proc.alive()):
                tail = peer.proc.stderr_tail() if peer.proc is not None else ""
                raise PeerError(f"{peer.name}: the checking call failed:\n{done.stderr}\n{tail}")
            time.sleep(0.2)


def start_peers(sup: Supervisor, work: Path, grpc: Grpc, proxy_core: int | None) -> list[Peer]:
    app, app_port = grpc.serve()
    peers = [Peer("direct", app_port, None)]
    prefix = work / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = nginx.write_grpc_proxy(prefix, port, app_port)
    peers.append(Peer("nginx", port, sup.start("nginx", nginx.argv(prefix, conf), core=proxy_core)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env |= {
        "SIDECAR_LISTEN_PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "LISTEN_HOST": HOST,
        "METRICS_HOST": HOST,
        "UPSTREAM_HOST": HOST,
        "UPSTREAM_PORT": str(app_port),
        "UPSTREAM_PROTOCOL": "h2c",
        "LOG_LEVEL": "warning",
        "DRAIN_DELAY": "0s",
        "SHUTDOWN_GRACE_PERIOD": "1s",
        # When h2load stops it cancels the calls in flight, up to 256 at once on one app
        # connection; past the 256 resets an H2 connection remembers, an answer that crossed
        # our RST_STREAM can still be taken for a protocol error, and then the app connection
        # goes and its other calls end UNAVAILABLE (docs/benchmarks.md, "gRPC"). With the
        # default breaker (5 failures) that would refuse every call of the next run for 30 s.
        "CIRCUIT_BREAKER_THRESHOLD": "0",
    }
    proc = sup.start("sidecar", [str(sidecar_binary()), "run"], core=proxy_core, env=env)
    peers.append(Peer("sidecar", port, proc))
    for peer in peers:
        grpc.check(peer)
    if not app.alive():
        raise PeerError(f"grpc app exited:\n{app.stderr_tail()}")
    return peers


def cpu_us(peer: Peer, before: int, count: int) -> float | None:
    if peer.proc is None or count == 0:
        return None
    return (cpu_sample(peer.proc.pid).on_cpu - before) / 1e3 / count


def on_cpu(peer: Peer) -> int:
    return cpu_sample(peer.proc.pid).on_cpu if peer.proc is not None else 0


def unary(peer: Peer, shape: str, body: Path, args: argparse.Namespace, core: int | None) -> Result:
    request = [
        *SHAPES[shape],
        *("-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body)),
        f"http://{HOST}:{peer.port}{METHOD}",
    ]
    if args.warmup > 0:  # a run of its own, so the CPU sample below covers only counted calls
        run_h2load(request, args.warmup, 0, core)
    before = on_cpu(peer)
    rps, done, ok = run_h2load(request, args.duration, 0, core)
    return Result(rps, done, ok, cpu_us(peer, before, done))


def streaming(peer: Peer, grpc: Grpc, messages: int) -> Result:
    before = on_cpu(peer)
    done = grpc.run("stream", str(peer.port), str(messages))
    if done.returncode != 0:
        tail = peer.proc.stderr_tail() if peer.proc is not None else ""
        raise PeerError(f"{peer.name}: the streaming call failed:\n{done.stderr}\n{tail}")
    seconds = float(json.loads(done.stdout)["seconds"])
    return Result(messages / seconds, messages, messages, cpu_us(peer, before, messages))


def fmt_us(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} us"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per h2load run")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded run before each")
    parser.add_argument("--rounds", type=int, default=2, help="unary rounds, peer order rotated")
    parser.add_argument("--messages", type=int, default=10_000, help="per streaming call")
    parser.add_argument("--repeats", type=int, default=3, help="streaming calls per peer")
    args = parser.parse_args(argv)
    if not shutil.which("h2load"):
        sys.exit("h2load not found: run `bash scripts/install-test-tools.sh`")
    pin = pinning_available()
    load_core = CORE_LOAD if pin else None
    proxy_core = CORE_PROXY if pin else None
    load_average = os.getloadavg()
    print(f"load average at start: {load_average[0]:.2f} {load_average[1]:.2f} "
          f"{load_average[2]:.2f}; pinned: {pin}", flush=True)  # fmt: skip
    # "unary 16x16", "unary 64x1", "streaming" -> peer -> its runs
    results: dict[str, dict[str, list[Result]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        work = Path(tmp)
        sup = Supervisor(work)
        try:
            grpc = Grpc(sup, work, load_core)
            peers = {peer.name: peer for peer in start_peers(sup, work, grpc, proxy_core)}
            print("one grpcio unary call through each peer: reply checked", flush=True)
            body = work / "unary.bin"
            done = grpc.run("body", str(body))
            if done.returncode != 0:
                raise PeerError(f"writing the request body failed:\n{done.stderr}")
            for round_ in range(args.rounds):
                for name in rotated(list(PEERS), round_, args.rounds):
                    for shape in SHAPES:
                        run = unary(peers[name], shape, body, args, load_core)
                        results.setdefault(f"unary {shape}", {}).setdefault(name, []).append(run)
                        print(f"round {round_ + 1} unary {shape:<5} {name:<7} {run.rate:>8,.0f} "
                              f"req/s  {run.ok}/{run.done} 2xx  {fmt_us(run.cpu_us)} CPU/call",
                              flush=True)  # fmt: skip
            for repeat in range(args.repeats):
                for name in rotated(list(PEERS), repeat, args.repeats):
                    run = streaming(peers[name], grpc, args.messages)
                    results.setdefault("streaming", {}).setdefault(name, []).append(run)
                    print(f"stream {repeat + 1} {name:<7} {run.rate:>9,.0f} msgs/s  "
                          f"{fmt_us(run.cpu_us)} CPU/message", flush=True)  # fmt: skip
        finally:
            sup.stop_all()
    failed = report(results)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench-grpc-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "load_average": load_average,
                "pinned": pin,
                "duration_s": args.duration,
                "rounds": args.rounds,
                "messages": args.messages,
                "runs": {
                    case: {name: [asdict(run) for run in got] for name, got in by_peer.items()}
                    for case, by_peer in results.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    if failed:
        print(f"answers other than 2xx: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def report(results: dict[str, dict[str, list[Result]]]) -> list[str]:
    """Print the medians as a markdown table and the targets' verdicts; return the runs that
    had answers other than 2xx."""
    print("\n| case | peer | rate (median) | x nginx | proxy CPU per call or message |")
    print("|---|---|---:|---:|---:|")
    failed = []
    ratios = {}
    for case, by_peer in results.items():
        unit = "msgs/s" if case == "streaming" else "req/s"
        rates = {name: statistics.median(run.rate for run in got) for name, got in by_peer.items()}
        ratios[case] = rates["sidecar"] / rates["nginx"]
        for name, got in by_peer.items():
            failed += [f"{case}/{name}" for run in got if run.ok != run.done]
            cpu = [run.cpu_us for run in got if run.cpu_us is not None]
            print(f"| {case} | {name} | {rates[name]:,.0f} {unit} | "
                  f"{rates[name] / rates['nginx']:.2f}x | "
                  f"{fmt_us(statistics.median(cpu) if cpu else None)} |")  # fmt: skip
    for case, ratio in ratios.items():
        target = STREAM_TARGET if case == "streaming" else UNARY_TARGET
        verdict = "met" if ratio >= target else "missed"
        print(f"{case}: sidecar {ratio:.2f}x nginx (target >= {target}x): {verdict}")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
