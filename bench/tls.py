"""``python -m bench.tls``: TLS termination, the sidecar against nginx with the same certificate.

Three peers in front of the same nginx upstream, one at a time on the proxy core (as in
``bench.run``): the sidecar over plain HTTP, the sidecar terminating TLS, and nginx terminating
TLS (``bench.nginx.write_tls_proxy``: the sidecar's protocol versions and ciphers, the same ECDSA
P-256 certificate, made here with the openssl CLI). Two scenarios:

* ``keepalive``: wrk over 64 keep-alive connections, small responses; over https for the TLS
  peers, so the figure is the cost of encrypting and decrypting records, not of handshakes;
* ``handshakes``: ``Connection: close`` on every request, 16 connections: each request is a new
  TCP connection and a full TLS handshake (wrk resumes no sessions), so the figure is new
  connections per second.

The access log is on for the sidecar, as in the headline benchmark; nginx logs nothing. Each
figure is the median over rounds, with the peer order rotating from round to round. Beside the
rates, the proxy's CPU time per request (from schedstat): on a shared machine the rates move with
the neighbours' load, the CPU a request costs much less.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import ssl
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import nginx, wrk
from bench.nginx import SMALL_SIZE
from bench.procs import (
    CORE_LOAD,
    CORE_PROXY,
    HOST,
    PeerError,
    Proc,
    Supervisor,
    cpu_sample,
    free_port,
    pinning_available,
    wait_ready,
)
from bench.run import RESULTS, rotated, sidecar_binary

PEERS = ("sidecar-http", "sidecar-https", "nginx-https")
SCENARIOS = {"keepalive": (64, ()), "handshakes": (16, ("Connection: close",))}


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (wrk does not verify it)."""
    cert, key = directory / "bench.crt", directory / "bench.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def wait_https(proc: Proc, name: str, port: int, timeout: float = 20.0) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the benchmark's own self-signed certificate
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise PeerError(f"{name} exited: {proc.stderr_tail()}")
        conn = http.client.HTTPSConnection(HOST, port, timeout=2, context=ctx)
        try:
            conn.request("GET", "/small")
            response = conn.getresponse()
            if response.status == 200 and len(response.read()) == SMALL_SIZE:
                return
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    raise PeerError(f"{name} did not answer over https on port {port}")


def start_peer(
    sup: Supervisor,
    work: Path,
    name: str,
    *,
    port: int,
    upstream_port: int,
    core: int | None,
    cert: Path,
    key: Path,
) -> Proc:
    """Start one peer on ``port`` and wait until it answers."""
    if name == "nginx-https":
        prefix = work / name
        prefix.mkdir()
        conf = nginx.write_tls_proxy(prefix, port, upstream_port, cert, key)
        proc = sup.start(name, nginx.argv(prefix, conf), core=core)
    else:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        env |= {
            "SIDECAR_LISTEN_PORT": str(port),
            "METRICS_PORT": str(free_port()),
            "UPSTREAM_HOST": HOST,
            "UPSTREAM_PORT": str(upstream_port),
            "LISTEN_HOST": HOST,
            "METRICS_HOST": HOST,
            "LOG_LEVEL": "warning",
            "DRAIN_DELAY": "0s",
            "SHUTDOWN_GRACE_PERIOD": "1s",
        }
        if name == "sidecar-https":
            env |= {"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key)}
        proc = sup.start(name, [str(sidecar_binary()), "run"], core=core, env=env)
    if name == "sidecar-http":
        wait_ready(proc, name, port, "/small", SMALL_SIZE)
    else:
        wait_https(proc, name, port)
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="discarded run before each")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    pin = pinning_available()
    load_core = CORE_LOAD if pin else None
    proxy_core = CORE_PROXY if pin else None
    figures: dict[tuple[str, str], list[float]] = {}
    cpu_us: dict[tuple[str, str], list[float]] = {}
    procs: dict[str, Proc] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        sup = Supervisor(work)
        try:
            cert, key = make_certificate(work)
            prefix = work / "upstream"
            prefix.mkdir()
            upstream_port = free_port()
            conf = nginx.write_upstream(prefix, upstream_port)
            upstream = sup.start("upstream", nginx.argv(prefix, conf), core=load_core)
            wait_ready(upstream, "upstream nginx", upstream_port, "/small", SMALL_SIZE)
            ports: dict[str, int] = {}
            for name in PEERS:
                port = ports[name] = free_port()
                procs[name] = start_peer(
                    sup, work, name, port=port, upstream_port=upstream_port, core=proxy_core,
                    cert=cert, key=key,
                )  # fmt: skip
            for round_ in range(args.rounds):
                for name in rotated(list(PEERS), round_, args.rounds):
                    scheme = "http" if name == "sidecar-http" else "https"
                    for scenario, (connections, headers) in SCENARIOS.items():
                        if args.warmup > 0:
                            wrk.run(
                                ports[name], "/small", connections, args.warmup, load_core,
                                scheme=scheme, headers=headers,
                            )  # fmt: skip
                        before = cpu_sample(procs[name].pid).on_cpu
                        result = wrk.run(
                            ports[name], "/small", connections, args.duration, load_core,
                            scheme=scheme, headers=headers,
                        )  # fmt: skip
                        used_ns = cpu_sample(procs[name].pid).on_cpu - before
                        cpu_us.setdefault((scenario, name), []).append(
                            used_ns / 1000 / max(result.requests, 1)
                        )
                        if result.errors:
                            raise PeerError(f"{name} {scenario}: {result.errors} errors")
                        figures.setdefault((scenario, name), []).append(result.requests_per_s)
                        print(f"round {round_ + 1} {scenario:<10} {name:<13} "
                              f"{result.requests_per_s:>9,.0f} req/s "
                              f"{cpu_us[(scenario, name)][-1]:>7.0f} us CPU/request",
                              flush=True)  # fmt: skip
        finally:
            sup.stop_all()
    medians = {key: statistics.median(values) for key, values in figures.items()}
    cpu = {key: statistics.median(values) for key, values in cpu_us.items()}
    report(medians, cpu)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench-tls-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "openssl": ssl.OPENSSL_VERSION,
                "duration_s": args.duration,
                "rounds": args.rounds,
                "pinned": pin,
                "runs": {f"{s}/{p}": v for (s, p), v in figures.items()},
                "cpu_us_per_request": {f"{s}/{p}": v for (s, p), v in cpu_us.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


def report(medians: dict[tuple[str, str], float], cpu: dict[tuple[str, str], float]) -> None:
    for (scenario, name), us in sorted(cpu.items()):
        print(
            f"{scenario:<10} {name:<13} {medians[(scenario, name)]:>9,.0f} req/s {us:>7.0f} us CPU"
        )
    keep = {name: medians[("keepalive", name)] for name in PEERS}
    new = {name: medians[("handshakes", name)] for name in PEERS}
    print(f"keep-alive https: sidecar {keep['sidecar-https']:,.0f} req/s, "
          f"{keep['sidecar-https'] / keep['nginx-https']:.2f}x nginx "
          f"({keep['nginx-https']:,.0f}), "
          f"{keep['sidecar-https'] / keep['sidecar-http']:.2f}x its plain http "
          f"({keep['sidecar-http']:,.0f})")  # fmt: skip
    print(f"new connections:  sidecar {new['sidecar-https']:,.0f}/s, "
          f"{new['sidecar-https'] / new['nginx-https']:.2f}x nginx ({new['nginx-https']:,.0f}/s); "
          f"plain http {new['sidecar-http']:,.0f}/s")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
