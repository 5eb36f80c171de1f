"""``python -m bench.h2``: HTTP/2 through the sidecar against nginx, with h2load, and the cost of
the HTTP/2 codec itself (docs/benchmarks.md, "HTTP/2").

Cases, each h2load at 16 connections x 16 streams for ``--duration`` seconds after a warm-up:

* ``direct``: h2load straight to the nginx app's h2c port (the ceiling);
* ``nginx-h2-h1``: nginx ``listen ... http2`` with ``proxy_pass`` and upstream keep-alive
  (both proxies keep up to ``POOL`` idle app connections);
* ``sidecar-h2-h1``: the sidecar in front of the app's HTTP/1.1 port;
* ``nginx-h2-h2``: nginx with ``grpc_pass`` (its only h2c upstream) to the app's h2c port;
* ``sidecar-h2-h2``: the sidecar with ``UPSTREAM_PROTOCOL=h2c`` to the app's h2c port;
* ``sidecar-h1-h1``: the same sidecar as ``sidecar-h2-h1`` over HTTP/1.1, 64 connections one
  request at a time: what a request costs through the sidecar whatever the client's protocol.

As in ``bench.run``, the proxy under test has core 0 and everything else core 1; CPU per request
is read from the proxy's schedstat, the figure a shared machine disturbs least.

``--codec`` measures instead one unary exchange through our client-side and server-side
connections (encode and decode, no I/O), the shape of ../shared/tools/h2-exchange-cost, which
measures the ``h2`` and ``jh2`` libraries.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import keepalive, nginx
from bench.procs import (
    CORE_LOAD,
    CORE_PROXY,
    HOST,
    Supervisor,
    cpu_sample,
    free_port,
    pinned,
    rss_bytes,
)
from sidecar_proxy.config import Settings
from sidecar_proxy.http.context import ProxyContext
from sidecar_proxy.http.fields import RequestHead, ResponseHead
from sidecar_proxy.http.h2.app import H2AppConnection, H2AppPool
from sidecar_proxy.http.h2.server import H2ClientStream, H2ServerConnection
from sidecar_proxy.http.legs import AppLeg, ClientEvents, Trailers
from sidecar_proxy.lifecycle.health import HealthState
from sidecar_proxy.observe.metrics import H2Counts, Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.recorder import Recorder

REPO = Path(__file__).resolve().parents[1]

# Idle app connections each proxy keeps: above the 256 streams in flight, so that an HTTP/1.1
# app leg (one request per connection at a time) is measured in its steady state, as bench.run
# does with 64 connections against pools of 100, rather than reconnecting for most requests.
POOL = 300


def write_confs(prefix: Path, h1: int, h2: int, front_h1: int, front_h2: int) -> list[Path]:
    common = nginx._common(prefix)
    temp = nginx._temp_paths(prefix)
    small = f'default_type text/plain; return 200 "{nginx.SMALL_BODY.strip()}\\n";'
    app = prefix / "app.conf"
    app.write_text(
        common + "http {\n" + temp + "  access_log off;\n  keepalive_requests 1000000;\n"
        "  http2_max_requests 1000000;\n"
        f"  server {{ listen {HOST}:{h1}; location = /small {{ {small} }} }}\n"
        f"  server {{ listen {HOST}:{h2} http2; location = /small {{ {small} }} }}\n"
        "}\n"
    )
    front = prefix / "front" / "front.conf"
    front.parent.mkdir()
    front.write_text(
        nginx._common(front.parent) + "http {\n" + nginx._temp_paths(front.parent)
        + "  access_log off;\n  keepalive_requests 1000000;\n  http2_max_requests 1000000;\n"
        f"  upstream h1 {{ server {HOST}:{h1}; keepalive {POOL}; keepalive_requests 1000000; }}\n"
        f"  upstream h2 {{ server {HOST}:{h2}; keepalive {POOL}; keepalive_requests 1000000; }}\n"
        f"  server {{ listen {HOST}:{front_h1} http2; location / {{ proxy_pass http://h1;\n"
        '    proxy_http_version 1.1; proxy_set_header Connection ""; } }\n'
        f"  server {{ listen {HOST}:{front_h2} http2; location / {{ grpc_pass grpc://h2; }} }}\n"
        "}\n"
    )  # fmt: skip
    return [app, front]


def h2load(port: int, seconds: float, warmup: float, h1: bool = False) -> tuple[float, int, int]:
    """req/s, requests done, and 2xx, from one h2load run: 16x16 over HTTP/2, or 64 HTTP/1.1
    connections one request at a time (``h1``, the shape of ``bench.run``'s small scenario)."""
    shape = ["--h1", "-c64", "-m1"] if h1 else ["-c16", "-m16"]
    return run_h2load([*shape, f"http://{HOST}:{port}/small"], seconds, warmup, CORE_LOAD)


def run_h2load(
    args: list[str], seconds: float, warmup: float, core: int | None
) -> tuple[float, int, int]:
    """req/s, requests done, and 2xx, from one h2load run of ``seconds`` with ``args`` (the
    shape, any request options and the URL), on ``core``."""
    # h2load reads a bare number as whole seconds; milliseconds allow fractions
    duration = [f"-D{seconds * 1000:.0f}ms", f"--warm-up-time={warmup * 1000:.0f}ms"]
    ran = subprocess.run(
        pinned(core, ["h2load", "-t1", *duration, *args]),
        capture_output=True,
        text=True,
        timeout=seconds + warmup + 30,
        check=False,
    )
    out = ran.stdout
    rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    if not (rps and done and ok):
        raise RuntimeError("h2load said:\n" + out + ran.stderr)
    return float(rps.group(1)), int(done.group(1)), int(ok.group(1))


def load(args: argparse.Namespace) -> None:
    if not shutil.which("h2load"):
        sys.exit("h2load not found: run `bash scripts/install-test-tools.sh`")
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        prefix = Path(tmp)
        sup = Supervisor(prefix)
        h1, h2, front_h1, front_h2 = (free_port() for _ in range(4))
        app_conf, front_conf = write_confs(prefix, h1, h2, front_h1, front_h2)
        try:
            sup.start("app", nginx.argv(prefix, app_conf), core=CORE_LOAD)
            front = sup.start("nginx", nginx.argv(front_conf.parent, front_conf), core=CORE_PROXY)
            sidecars = {}
            for name, upstream, protocol in (("h1", h1, "http1"), ("h2", h2, "h2c")):
                port = free_port()
                env = {
                    "PATH": "/usr/bin:/bin",
                    "SIDECAR_LISTEN_PORT": str(port),
                    "METRICS_PORT": str(free_port()),
                    "LISTEN_HOST": HOST,
                    "METRICS_HOST": HOST,
                    "UPSTREAM_HOST": HOST,
                    "UPSTREAM_PORT": str(upstream),
                    "UPSTREAM_PROTOCOL": protocol,
                    "UPSTREAM_MAX_IDLE_CONNECTIONS": str(POOL),
                    "LOG_LEVEL": "warning",
                    "DRAIN_DELAY": "0s",
                    "SHUTDOWN_GRACE_PERIOD": "1s",
                }
                binary = str(Path(sys.executable).parent / "sidecar-proxy")
                sidecars[name] = (sup.start(f"sidecar-{name}", [binary, "run"], core=CORE_PROXY,
                                            env=env), port)  # fmt: skip
            time.sleep(1.5)
            cases = [
                ("direct", h2, None, False),
                ("nginx-h2-h1", front_h1, front.pid, False),
                ("sidecar-h2-h1", sidecars["h1"][1], sidecars["h1"][0].pid, False),
                ("nginx-h2-h2", front_h2, front.pid, False),
                ("sidecar-h2-h2", sidecars["h2"][1], sidecars["h2"][0].pid, False),
                ("sidecar-h1-h1", sidecars["h1"][1], sidecars["h1"][0].pid, True),
            ]
            h1_sidecar, h1_port = sidecars["h1"]
            idle = rss_bytes(h1_sidecar.pid)
            held, rss = keepalive.with_connections(
                h1_port, "/small", args.idle, lambda _: rss_bytes(h1_sidecar.pid), h2=True
            )
            print(f"sidecar RSS: {idle / 2**20:.1f} MiB idle, {rss / 2**20:.1f} MiB holding "
                  f"{held} idle HTTP/2 connections")  # fmt: skip
            print("| case | req/s | 2xx of done | CPU per request |")
            print("|---|---:|---:|---:|")
            for name, port, pid, h1 in cases:
                before = cpu_sample(pid) if pid else None
                rps, done, ok = h2load(port, args.duration, args.warmup, h1)
                cpu = ""
                if pid and before is not None and done:
                    cpu = f"{(cpu_sample(pid).on_cpu - before.on_cpu) / 1e3 / done:.1f} us"
                print(f"| {name} | {rps:,.0f} | {ok}/{done} | {cpu} |", flush=True)
        finally:
            sup.stop_all()


class _Answer:
    """A client-side exchange that answers at once: only the two connections do work."""

    def __init__(self, leg: H2ClientStream, body_follows: bool, body: bytes) -> None:
        self.leg = leg
        self.body_follows = body_follows
        self.body = body
        self.finished = False
        self.request_complete = False
        resp = ResponseHead()
        resp.status = 200
        resp.lines = [b"content-type: application/grpc\r\n"]
        resp.names = [b"content-type"]
        self.resp = resp

    def start(self) -> None:
        if not self.body_follows:
            self.request_end([])  # as the exchange does: complete at once

    def reject(self, status: int, detail: str) -> None: ...

    def request_body(self, data: bytes) -> None: ...

    def request_end(self, trailers: Trailers) -> None:
        leg = self.leg
        leg.send_head(200, self.resp, [], True)
        leg.send_body(self.body)
        leg.send_end([(b"grpc-status", b"0"), (b"grpc-message", b"")])
        leg.flush()
        self.finished = True
        leg.exchange_done(self)

    def client_gone(self) -> None: ...

    def client_write_paused(self, paused: bool) -> None: ...

    def tunnel_data(self, data: bytes) -> None: ...

    def on_tick(self, now: float) -> None: ...


class _Events:
    """The app-side events of one attempt: count the ends."""

    ended = 0

    def response_head(self, app: AppLeg, resp: ResponseHead) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self, app: AppLeg, trailers: Trailers | None) -> None:
        _Events.ended += 1
        app.release(True)

    def read_done(self) -> None: ...

    def app_eof(self, app: AppLeg) -> None: ...

    def app_lost(self, app: AppLeg, exc: BaseException | None) -> None: ...

    def app_refused(self, app: AppLeg) -> None: ...

    def app_protocol_error(self, app: AppLeg, reason: str) -> None: ...

    def app_write_paused(self, paused: bool) -> None: ...

    def tunnel_data_from_app(self, data: bytes) -> None: ...


class _Wire(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data: list[bytes] = []

    def writelines(self, list_of_data: Any) -> None:
        self.data += list_of_data

    def write(self, data: Any) -> None:
        self.data.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (HOST, 1) if name == "peername" else default

    def take(self) -> bytes:
        data = b"".join(self.data)
        self.data.clear()
        return data


def codec(args: argparse.Namespace) -> None:
    loop = asyncio.new_event_loop()
    settings = Settings()
    metrics = Metrics()
    ctx = ProxyContext(
        loop, settings, metrics, Recorder(metrics, PathLabeler(10), None), HealthState()
    )
    body = b"\x00\x00\x00\x00\x07\n\x05world"

    def answer(
        conn: H2ServerConnection, leg: H2ClientStream, head: RequestHead, body_follows: bool
    ) -> ClientEvents:
        return _Answer(leg, body_follows, body)

    server = H2ServerConnection(ctx, answer)
    server_wire = _Wire()
    server.adopt(server_wire, b"X-Forwarded-Proto: http\r\n", None)
    pool = H2AppPool(loop, settings, lambda reused: None, H2Counts())
    client = H2AppConnection(pool)
    client_wire = _Wire()
    client.connection_made(client_wire)
    for _ in range(2):  # prefaces and SETTINGS both ways
        server.data_received(client_wire.take())
        client.data_received(server_wire.take())
    head = RequestHead()
    head.method, head.target, head.version = b"POST", b"/helloworld.Greeter/SayHello", "2.0"
    head.host, head.host_count = b"localhost:8080", 1
    head.lines = [
        b"content-type: application/grpc\r\n",
        b"te: trailers\r\n",
        b"grpc-timeout: 1S\r\n",
        b"user-agent: grpc-python/1.60\r\n",
    ]
    head.names = [b"content-type", b"te", b"grpc-timeout", b"user-agent"]
    events = _Events()
    n = args.count
    t0 = time.perf_counter()
    for _ in range(n):
        stream = client.new_stream()
        stream.bind(events)
        stream.send_request(head, [], [body], [])
        client.write_out()
        server.data_received(client_wire.take())
        client.data_received(server_wire.take())
        client.write_out()  # what a loop pass would write: the client's acknowledgements
        server.data_received(client_wire.take())
    dt = time.perf_counter() - t0
    assert _Events.ended == n, _Events.ended
    print(f"sidecar codec: {n / dt:,.0f} exchanges/s ({dt / n * 1e6:.1f} us per exchange)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", action="store_true", help="measure the codec only")
    parser.add_argument("--count", type=int, default=20_000, help="--codec: exchanges")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per h2load run")
    parser.add_argument("--warmup", type=float, default=1.0, help="h2load warm-up seconds")
    parser.add_argument("--idle", type=int, default=1000, help="idle HTTP/2 connections held")
    args = parser.parse_args()
    codec(args) if args.codec else load(args)


if __name__ == "__main__":
    main()
