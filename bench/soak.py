"""Soak: mixed traffic through the real ``sidecar-proxy`` process while its app misbehaves, then a
join of what the clients sent and got against what the app received, and the proxy's resource
curve.

    .venv/bin/python -m bench.soak                 # 120 s (make soak)
    .venv/bin/python -m bench.soak --duration 300
    .venv/bin/python -m bench.soak --quick         # 15 s

One process runs the app (``bench.soak_app``), the clients (``bench.soak_client``) and the fault
schedule (``bench.soak_faults``) on one event loop, so all three share one monotonic clock and
fault windows can be compared with request times directly. The proxy runs as its own process
with the settings in :data:`PROXY_SETTINGS`, and is sampled every ``SAMPLE_INTERVAL`` seconds
from /proc and its /metrics.

The summary goes to stdout; the full result as JSON to ``bench/results/soak-<time>.json`` (and
``soak-latest.json``), beside the proxy's access log and stderr and both ledgers as JSON lines.
The exit code is 0 when every check passes, 1 when any fails, 2 when the soak could not run.
See docs/reliability.md for the checks' definitions and the latest full run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sidecar_proxy
from bench.soak_app import Faults, FaultWindow, SoakApp
from bench.soak_checks import (
    Check,
    Ledgers,
    breaker_tails,
    ledger_checks,
    load_access_log,
    resource_checks,
)
from bench.soak_client import KINDS, RESPONSE, Pacer, Traffic
from bench.soak_faults import run_schedule, schedule, watch_stalls
from bench.soak_proc import ProxyProcess, Sample, SoakSetupError

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DURATION = 120.0
QUICK_DURATION = 15.0
SAMPLE_INTERVAL = 2.0
PROGRESS_INTERVAL = 15.0

# The proxy's configuration for the soak. Short timeouts so the slow fault (2.5 s) outlasts both
# the per-try timeout (a replay-safe request is retried, anything else gets its 504) and the
# request deadline; a 1 s breaker open period so a window's breaker tail stays short; a short
# upstream idle timeout so pooled connections are swept soon after traffic stops and the fd
# count can be seen to return to its baseline within seconds.
PROXY_SETTINGS = {
    "REQUEST_TIMEOUT": "2s",
    "PER_TRY_TIMEOUT": "800ms",
    "MAX_RETRIES": "3",
    "RETRY_BACKOFF": "100ms",
    "CIRCUIT_BREAKER_THRESHOLD": "5",
    "CIRCUIT_BREAKER_TIMEOUT": "1s",
    "UPSTREAM_IDLE_TIMEOUT": "2s",
    "ACCESS_LOG": "true",
    "LOG_LEVEL": "warning",
    "DRAIN_DELAY": "0s",
    "SHUTDOWN_GRACE_PERIOD": "1s",
}
REQUEST_TIMEOUT = 2.0
BREAKER_TIMEOUT = 1.0
UPSTREAM_IDLE_TIMEOUT = 2.0
# How long after a window a proxy 503 "circuit breaker open" is still the window's doing: the
# last failure can come a request deadline after the window, the breaker then stays open for its
# timeout, and the half-open probe needs a moment to answer.
BREAKER_GRACE = REQUEST_TIMEOUT + BREAKER_TIMEOUT + 1.0
# After traffic: long enough for the idle sweep to close every pooled connection (it runs at
# most 1.5 idle timeouts after a connection's last use), with margin.
SETTLE_TIMEOUT = 2 * UPSTREAM_IDLE_TIMEOUT + 4.0


@dataclasses.dataclass
class SoakConfig:
    duration: float
    clients: int
    rate: float
    seed: int
    results_dir: Path
    breaker_threshold: int = 5

    @property
    def proxy_settings(self) -> dict[str, str]:
        return {**PROXY_SETTINGS, "CIRCUIT_BREAKER_THRESHOLD": str(self.breaker_threshold)}

    @property
    def warmup(self) -> float:
        return min(10.0, max(1.5, self.duration * 0.1))


async def _sample_every(proxy: ProxyProcess, t0: float, out: list[Sample]) -> None:
    """Sample every SAMPLE_INTERVAL until cancelled (at the end of traffic)."""
    next_at = time.monotonic()
    for _ in range(1_000_000):  # cancelled long before; the bound only stops a runaway
        out.append(await proxy.sample(time.monotonic() - t0, "traffic"))
        next_at += SAMPLE_INTERVAL
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _progress(traffic: Traffic, app: SoakApp, t0: float, duration: float) -> None:
    """A line on stderr now and then, so a long run is visibly alive."""
    for _ in range(int(duration // PROGRESS_INTERVAL)):
        await asyncio.sleep(PROGRESS_INTERVAL)
        done = sum(1 for c in traffic.ledger if c.outcome)
        print(
            f"  t={time.monotonic() - t0:5.0f}s  sent {len(traffic.ledger)}  done {done}  "
            f"app received {len(app.ledger)}",
            file=sys.stderr,
            flush=True,
        )


async def _settle(proxy: ProxyProcess, t0: float, baseline: Sample) -> list[Sample]:
    """Sample until the proxy is back at its baseline, or SETTLE_TIMEOUT passes."""
    out: list[Sample] = []
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        s = await proxy.sample(time.monotonic() - t0, "settle")
        out.append(s)
        if s.fds <= baseline.fds and s.in_flight == 0 and s.downstream == 0:
            break
        await asyncio.sleep(0.5)
    return out


async def run(cfg: SoakConfig) -> dict[str, Any]:
    """Run the soak; returns the result document (checks included)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = f"soak-{stamp}"
    cfg.results_dir.mkdir(parents=True, exist_ok=True)
    faults = Faults()
    app = SoakApp(faults, random.Random(cfg.seed + 1))
    await app.start()
    proxy: ProxyProcess | None = None
    tasks: list[asyncio.Task[None]] = []
    # Which code the proxy runs is decided when it starts; src/ may change during a long run.
    source = _proxy_source()
    try:
        proxy = ProxyProcess(app.port, cfg.proxy_settings, cfg.results_dir, stem)
        await proxy.wait_ready()
        await proxy.sample(0.0, "baseline")  # the first scrape may allocate; measure after it
        await asyncio.sleep(0.5)
        baseline = await proxy.sample(0.0, "baseline")

        t0 = time.monotonic()
        windows = schedule(cfg.duration)
        traffic = Traffic(
            proxy.port,
            cfg.clients,
            Pacer(cfg.rate, t0 + cfg.duration),
            cfg.seed,
            os.urandom(4).hex(),
        )
        samples: list[Sample] = []
        stalls: list[FaultWindow] = []
        tasks.append(asyncio.create_task(watch_stalls(stalls, t0)))
        tasks.append(asyncio.create_task(_sample_every(proxy, t0, samples)))
        injector = asyncio.create_task(run_schedule(windows, faults, app, t0))
        tasks.append(injector)
        tasks.append(asyncio.create_task(_progress(traffic, app, t0, cfg.duration)))
        await traffic.run()
        traffic_end = time.monotonic() - t0
        await asyncio.wait_for(injector, 10.0)  # every window ends before the quiet tail
        alive_after_traffic = proxy.proc.poll() is None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        settled = await _settle(proxy, t0, baseline)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proxy is not None:
            proxy.stop()
        await app.stop()

    access = load_access_log(proxy.access_log)
    led = Ledgers(traffic.ledger, app.ledger, windows + stalls, t0, BREAKER_GRACE, access)
    checks, explained = ledger_checks(led)
    checks.append(
        Check(
            "proxy-stayed-up",
            alive_after_traffic,
            "the proxy process was running at the end of traffic"
            if alive_after_traffic
            else f"the proxy exited {proxy.proc.returncode}: {proxy.stderr_tail(500)}",
            int(not alive_after_traffic),
        )
    )
    checks += resource_checks(baseline, samples, settled, cfg.warmup, traffic_end)
    ledgers_path = cfg.results_dir / f"{stem}.ledgers.jsonl"
    _write_ledgers(ledgers_path, led)

    return {
        "command": " ".join([Path(sys.executable).name, "-m", "bench.soak", *sys.argv[1:]]),
        "started_utc": stamp,
        "config": {
            "duration_s": cfg.duration,
            "clients": cfg.clients,
            "rate_per_s": cfg.rate,
            "seed": cfg.seed,
            "warmup_s": cfg.warmup,
        },
        "proxy_settings": cfg.proxy_settings,
        "proxy_source": source,
        "traffic_end_s": round(traffic_end, 2),
        "requests": _counts(traffic),
        "client": {
            "connections": traffic.connections,
            # answers read although sending had failed: the proxy closed with request bytes
            # unread, so its kernel reset the connection (see docs/reliability.md)
            "answered_despite_write_error": sum(
                1 for c in traffic.ledger if c.write_error and c.outcome == RESPONSE
            ),
            "write_errors_without_answer": sum(
                1 for c in traffic.ledger if c.write_error and c.outcome != RESPONSE
            ),
        },
        "app": _app_stats(led, app),
        "proxy": {
            "access_log_lines": len(access),
            "retried_requests": sum(1 for e in access.values() if (e.get("attempts") or 0) > 1),
            "exit_code_on_sigterm": proxy.exit_code,
            "stderr_lines": _stderr_summary(proxy),
        },
        "faults": [
            {
                "kind": w.kind,
                "start_s": round(w.start - t0, 3),
                "end_s": round(w.end - t0, 3),
                "hits": dict(w.hits),
                "breaker_open_after_end_s": tail,
            }
            for w, tail in zip(windows, breaker_tails(led, windows), strict=True)
        ],
        "stalls": [
            {"start_s": round(w.start - t0, 3), "end_s": round(w.end - t0, 3), **w.hits}
            for w in stalls
        ],
        "explained_5xx": explained,
        "checks": [dataclasses.asdict(c) for c in checks],
        "samples": {
            "baseline": dataclasses.asdict(baseline),
            "traffic": [dataclasses.asdict(s) for s in samples],
            "settle": [dataclasses.asdict(s) for s in settled],
        },
        "passed": all(c.passed for c in checks),
        "files": {
            "access_log": str(proxy.access_log),
            "proxy_stderr": str(proxy.stderr_log),
            "ledgers": str(ledgers_path),
        },
    }


def _proxy_source() -> dict[str, Any]:
    """Which proxy code runs: the package's path, and the commit and whether src/ has
    uncommitted changes, when it is this checkout."""
    path = Path(sidecar_proxy.__file__).resolve().parent
    out: dict[str, Any] = {"package": str(path)}
    try:
        git = ["git", "-C", str(path)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
        )
        out.update(commit=head.stdout.strip(), src_dirty=bool(dirty.stdout.strip()))
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def _counts(traffic: Traffic) -> dict[str, dict[str, int]]:
    """Per kind: how each request ended (a status, or how it failed)."""
    out: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for c in traffic.ledger:
        out[c.kind][str(c.status) if c.outcome == RESPONSE else c.outcome] += 1
    return {kind: dict(sorted(counter.items())) for kind, counter in out.items()}


def _app_stats(led: Ledgers, app: SoakApp) -> dict[str, Any]:
    copies = Counter(a.rid for a in led.app)
    replays: Counter[str] = Counter()
    for rid, n in copies.items():
        c = led.by_rid.get(rid)
        if n > 1 and c is not None:
            replays[c.kind] += n - 1
    return {
        "requests_received": len(led.app),
        "distinct_ids": len(copies),
        "connections_accepted": app.connections,
        "restarts": app.restarts,
        "actions": dict(Counter(a.action or "(no answer)" for a in led.app)),
        "replays_by_kind": dict(replays),
    }


def _stderr_summary(proxy: ProxyProcess) -> dict[str, int]:
    """The proxy's own log lines by level (it logs JSON lines to stderr)."""
    levels: Counter[str] = Counter()
    try:
        text = proxy.stderr_log.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            levels["(not json)"] += 1
            continue
        levels[str(entry.get("level", "?")) if isinstance(entry, dict) else "?"] += 1
    return dict(levels)


def _write_ledgers(path: Path, led: Ledgers) -> None:
    with open(path, "w") as f:
        for c in led.client:
            row = {"side": "client", **dataclasses.asdict(c)}
            row["t_start"], row["t_end"] = led.rel(c.t_start), led.rel(c.t_end)
            f.write(json.dumps(row) + "\n")
        for a in led.app:
            row = {"side": "app", **dataclasses.asdict(a)}
            row["t_head"] = led.rel(a.t_head)
            f.write(json.dumps(row) + "\n")


# -- report ---------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _curve_rows(doc: dict[str, Any], limit: int = 16) -> list[list[str]]:
    s = doc["samples"]
    traffic = s["traffic"]
    step = max(1, -(-len(traffic) // limit))
    picked = [s["baseline"], *traffic[::step]]
    if traffic and picked[-1] is not traffic[-1]:
        picked.append(traffic[-1])
    if s["settle"]:
        picked.append(s["settle"][-1])
    return [
        [
            f"{p['t']:.0f}",
            p["phase"],
            f"{p['rss_kib'] / 1024:.1f}",
            str(p["fds"]),
            str(p["threads"]),
            f"{p['in_flight']:g}",
            f"{p['downstream']:g}",
        ]
        for p in picked
    ]


def report(doc: dict[str, Any]) -> str:
    src = doc["proxy_source"]
    out = [
        f"soak: {doc['command']}  (traffic {doc['traffic_end_s']:.0f} s)",
        f"proxy: {src.get('package')} at {src.get('commit', '?')}"
        + (" with uncommitted changes" if src.get("src_dirty") else ""),
        "",
    ]
    rows = []
    total = 0
    for kind, counts in doc["requests"].items():
        n = sum(counts.values())
        total += n
        rows.append(
            [
                kind,
                KINDS[kind][0],
                str(n),
                "  ".join(f"{k}:{v}" for k, v in counts.items()) or "-",
            ]
        )
    out += [_table(["kind", "method", "requests", "outcomes"], rows), f"total {total}", ""]
    cl = doc["client"]
    out.append(
        f"clients: {cl['connections']} connections; answers read after a reset while sending: "
        f"{cl['answered_despite_write_error']}; resets with no answer: "
        f"{cl['write_errors_without_answer']}"
    )
    app = doc["app"]
    out.append(
        f"app: {app['requests_received']} arrivals of {app['distinct_ids']} ids on "
        f"{app['connections_accepted']} connections, {app['restarts']} restarts; "
        f"replays by kind {app['replays_by_kind']}"
    )
    px = doc["proxy"]
    out += [
        f"proxy: {px['access_log_lines']} access-log lines, {px['retried_requests']} retried; "
        f"stderr {px['stderr_lines']}; exit {px['exit_code_on_sigterm']} on SIGTERM",
        "",
    ]
    fault_rows = [
        [
            f["kind"],
            f"{f['start_s']:.1f}",
            f"{f['end_s']:.1f}",
            "-"
            if f["breaker_open_after_end_s"] is None
            else f"{f['breaker_open_after_end_s']:.2f}",
            str(f["hits"]),
        ]
        for f in doc["faults"]
    ]
    if fault_rows:
        headers = ["fault", "start s", "end s", "breaker open after s", "what the app did"]
        out += [_table(headers, fault_rows), ""]
    stalls = doc["stalls"]
    if stalls:
        longest = max(s["end_s"] - s["start_s"] for s in stalls)
        out.append(
            f"soak process stalls (app and clients not running, counted as fault windows): "
            f"{len(stalls)}, longest {longest:.2f} s: "
            + ", ".join(f"{s['start_s']:.1f}-{s['end_s']:.1f}" for s in stalls[:12])
        )
        out.append("")
    if doc["explained_5xx"]:
        out += [f"5xx explained: {doc['explained_5xx']}", ""]
    for c in doc["checks"]:
        out.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['summary']}")
        out += [f"      {json.dumps(e)}" for e in c["examples"]]
    out += [
        "",
        _table(
            ["t s", "phase", "RSS MiB", "fds", "threads", "in-flight", "conns"],
            _curve_rows(doc),
        ),
        "",
        f"result: {'PASS' if doc['passed'] else 'FAIL'}",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="traffic seconds")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION:.0f} s of traffic")
    parser.add_argument("--clients", type=int, default=48, help="concurrent client connections")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, at most")
    parser.add_argument("--seed", type=int, default=1, help="seed of the traffic mix and faults")
    parser.add_argument(
        "--breaker-threshold",
        type=int,
        default=5,
        help="CIRCUIT_BREAKER_THRESHOLD (5, the default, as deployed; 0 turns the breaker off)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    duration = QUICK_DURATION if args.quick else args.duration
    if not (5.0 <= duration <= 3600.0) or not (1 <= args.clients <= 500) or args.rate <= 0:
        parser.error("need 5 <= duration <= 3600, 1 <= clients <= 500 and rate > 0")
    cfg = SoakConfig(
        duration, args.clients, args.rate, args.seed, args.results_dir, args.breaker_threshold
    )
    # SIGTERM as Ctrl-C: asyncio.run then cancels the run, whose finally stops the proxy and the
    # app, instead of the process vanishing with its proxy still running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        doc = asyncio.run(run(cfg))
    except SoakSetupError as exc:
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted; the proxy and the app are stopped", file=sys.stderr)
        return 130
    text = json.dumps(doc, indent=1)
    path = cfg.results_dir / f"soak-{doc['started_utc']}.json"
    path.write_text(text)
    shutil.copyfile(path, cfg.results_dir / "soak-latest.json")
    print(report(doc))
    print(f"json: {path}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
