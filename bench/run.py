"""``python -m bench.run``: the sidecar against a direct connection, nginx, a naive aiohttp proxy
and the seed's Go sidecar, all through the same nginx upstream, with wrk.

Method (docs/benchmarks.md says more):

* The proxy under test runs on core 0 alone; wrk, the upstream nginx and this script share
  core 1. A proxy does more work per request than the nginx upstream answering a fixed string or
  sendfile()-ing a file, so the upstream is the cheapest place to put on the load core.
* Every peer is started once, up front, and measured in turn; the order of the peers rotates
  from round to round, so slow drift in the machine's load spreads over all of them.
* Each measured wrk run follows a short warm-up run whose figures are discarded (it fills the
  proxies' upstream pools and warms caches and the allocator).
* Each figure is the median over rounds; the ratios between peers are the headline, because the
  machine is shared and its absolute speed varies from minute to minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import keepalive, nginx, wrk
from bench.nginx import LARGE_SIZE, SMALL_SIZE
from bench.procs import (
    CORE_LOAD,
    CORE_PROXY,
    LineDrain,
    PeerError,
    Proc,
    Supervisor,
    check_answers,
    cpu_sample,
    free_port,
    http_get,
    pinning_available,
    rss_bytes,
    wait_ready,
)
from bench.report import PURE, SIDECAR, Memory, Report, Run, Scenario

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_SEED_BINARY = Path("/tmp/anchors/seed-sidecar")

SCENARIOS = {
    "small": Scenario("small", "/small", 64, SMALL_SIZE, "rps"),
    "1m": Scenario("1m", "/1m", 16, LARGE_SIZE, "mibs"),
}

PEERS = (
    "direct",
    "nginx-proxy",
    "aiohttp-naive",
    SIDECAR,
    PURE,
    "sidecar-pipe",
    "sidecar-nolog",
    "seed-go",
    "sidecar-baseline",
)
NOTES = {
    "direct": "wrk straight to the upstream nginx: the ceiling (no proxy; RSS not measured)",
    "nginx-proxy": "nginx, 1 worker, reverse proxy with a keep-alive upstream pool "
    "(keepalive 100); NO access log, NO metrics",
    "aiohttp-naive": "bench/peers/aiohttp_proxy.py: aiohttp.web + one shared ClientSession, "
    "streamed (StreamResponse, iter_chunked), uvloop; no log, no metrics",
    SIDECAR: "sidecar-proxy run: access log ON (stdout to /dev/null), metrics ON; the build "
    "this interpreter's venv has (compiled by make)",
    PURE: "the same, from the pure-Python install given with --pure (make's .venv-pure)",
    "sidecar-pipe": "sidecar-proxy run: access log ON to a pipe that this script reads "
    "(the cost of real log writes), metrics ON",
    "sidecar-nolog": "sidecar-proxy run with ACCESS_LOG=false; metrics still ON (they cannot "
    "be turned off; bench.micro measures their cost)",
    "sidecar-baseline": "sidecar-proxy run from the source of --baseline REV, as the sidecar-proxy "
    "peer (access log ON): the same interpreter and packages, another commit",
    "seed-go": "the seed's Go sidecar (one core: Go sizes GOMAXPROCS from the pin); "
    "JSON logs, 2 lines per request, to /dev/null; metrics ON; breaker threshold raised "
    "(see run.py)",
}
# The environment every peer gets: nothing from the caller's shell that could change a setting.
_BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


@dataclass
class Peer:
    name: str
    port: int
    proc: Proc | None  # None for "direct": there is no process between wrk and the upstream
    admin_port: int | None = None
    drain: LineDrain | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.sup = Supervisor(workdir)
        self.pin = pinning_available()
        self.upstream_port = 0
        self.upstream: Proc | None = None
        self.peers: dict[str, Peer] = {}
        self.memory: dict[str, Memory] = {}
        self.warmup_requests: dict[str, int] = {}

    def core(self, core: int) -> int | None:
        return core if self.pin else None

    # -- starting -----------------------------------------------------------------------------

    def start_upstream(self) -> None:
        prefix = self.workdir / "upstream"
        prefix.mkdir()
        port = free_port()
        conf = nginx.write_upstream(prefix, port)
        proc = self.sup.start("upstream", nginx.argv(prefix, conf), core=self.core(CORE_LOAD))
        wait_ready(proc, "upstream nginx", port, "/small", SMALL_SIZE)
        wait_ready(proc, "upstream nginx", port, "/1m", LARGE_SIZE)
        self.upstream, self.upstream_port = proc, port

    def start_all(self, names: list[str]) -> None:
        """The upstream, then every peer of ``names``."""
        self.start_upstream()
        for name in names:
            self.start_peer(name)

    def start_peer(self, name: str) -> Peer:
        """Start ``name`` and check it answers (and serves /metrics, where it has them)."""
        peer = self.launch(name)
        if peer.proc is not None:
            wait_ready(peer.proc, name, peer.port, "/small", SMALL_SIZE)
            check_answers(peer.proc, name, peer.port, "/1m", LARGE_SIZE)
            if peer.admin_port is not None:
                wait_metrics(peer.proc, name, peer.admin_port)
            time.sleep(1.0)  # let start-up garbage settle before the idle reading
            self.memory[name] = Memory(idle=rss_bytes(peer.proc.pid))
        self.peers[name] = peer
        return peer

    def launch(self, name: str) -> Peer:
        """Start the process of peer ``name``."""
        env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
        core = self.core(CORE_PROXY)
        if name == "direct":
            peer = Peer(name, self.upstream_port, None)
        elif name == "nginx-proxy":
            prefix = self.workdir / "nginx-proxy"
            prefix.mkdir()
            port = free_port()
            conf = nginx.write_proxy(prefix, port, self.upstream_port)
            proc = self.sup.start(name, nginx.argv(prefix, conf), core=core)
            peer = Peer(name, port, proc)
        elif name == "aiohttp-naive":
            port = free_port()
            argv = [
                sys.executable,
                "-m",
                "bench.peers.aiohttp_proxy",
                "--port",
                str(port),
                "--upstream",
                f"127.0.0.1:{self.upstream_port}",
            ]
            proc = self.sup.start(name, argv, core=core, env=env, cwd=REPO)
            peer = Peer(name, port, proc)
        elif name in (SIDECAR, PURE, "sidecar-pipe", "sidecar-nolog", "sidecar-baseline"):
            settings = {"ACCESS_LOG": "false" if name == "sidecar-nolog" else "true"}
            argv = [str(self.args.pure if name == PURE else sidecar_binary()), "run"]
            if name == "sidecar-baseline":
                # The baseline's source first on the path, ahead of this install (pure Python).
                settings["PYTHONPATH"] = str(self.baseline_source())
                argv = [sys.executable, "-m", "sidecar_proxy", "run"]
            peer = self.start_sidecar(name, settings, pipe=name == "sidecar-pipe", argv=argv)
        elif name == "seed-go":
            port, admin = free_port(), free_port()
            env |= self.seed_env(port, admin) | {
                # The seed counts a client that hangs up mid-request (wrk at the end of every
                # run) as an upstream failure and never resets its count while closed, so its
                # breaker opens after 5 such in its lifetime and answers 503 for 30 s. That is a
                # seed bug, not load: keep its breaker out of the way.
                "CIRCUIT_BREAKER_THRESHOLD": "1000000000",
            }
            proc = self.sup.start(name, [str(self.args.seed_binary)], core=core, env=env)
            peer = Peer(name, port, proc, admin_port=admin)
        else:
            raise ValueError(name)
        return peer

    def start_sidecar(
        self,
        name: str,
        settings: dict[str, str],
        *,
        pipe: bool = False,
        argv: list[str] | None = None,
    ) -> Peer:
        """``sidecar-proxy run`` (or ``argv``) on loopback with the seed's environment plus
        ``settings``; its access log goes to a pipe this script reads when ``pipe``, else to
        /dev/null."""
        env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
        port, admin = free_port(), free_port()
        env |= (
            self.seed_env(port, admin)
            | {
                "LOG_LEVEL": "warning",
                # Loopback only, and a stop that does not wait out the drain delay.
                "LISTEN_HOST": "127.0.0.1",
                "METRICS_HOST": "127.0.0.1",
                "DRAIN_DELAY": "0s",
                "SHUTDOWN_GRACE_PERIOD": "1s",
            }
            | settings
        )
        proc = self.sup.start(
            name,
            argv or [str(sidecar_binary()), "run"],
            core=self.core(CORE_PROXY),
            env=env,
            stdout=subprocess.PIPE if pipe else subprocess.DEVNULL,
        )
        stdout = proc.popen.stdout
        drain = LineDrain(stdout) if stdout is not None else None
        return Peer(name, port, proc, admin_port=admin, drain=drain)

    # -- measuring ----------------------------------------------------------------------------

    def baseline_source(self) -> Path:
        """The ``src`` folder of ``--baseline``'s commit, exported once into the work dir."""
        out = self.workdir / "baseline"
        if not out.exists():
            out.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", self.args.baseline, "src"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        return out / "src"

    def seed_env(self, port: int, admin: int) -> dict[str, str]:
        """The seed's environment variables, which both sidecars read the same way."""
        return {
            "SIDECAR_LISTEN_PORT": str(port),
            "METRICS_PORT": str(admin),
            "UPSTREAM_HOST": "127.0.0.1",
            "UPSTREAM_PORT": str(self.upstream_port),
        }

    def measure(self, round_: int, scenario: Scenario, peer: Peer) -> Run:
        check_answers(peer.proc, peer.name, peer.port, scenario.path, scenario.size)
        if self.args.warmup > 0:
            warm = wrk.run(
                peer.port,
                scenario.path,
                scenario.connections,
                self.args.warmup,
                self.core(CORE_LOAD),
            )
            self.warmup_requests[peer.name] = self.warmup_requests.get(peer.name, 0) + warm.requests
        before = cpu_sample(peer.proc.pid) if peer.proc is not None else None
        started = time.monotonic()
        result = wrk.run(
            peer.port, scenario.path, scenario.connections, self.args.duration, self.core(CORE_LOAD)
        )
        wall = time.monotonic() - started
        rss = cpu_us = waited = None
        if peer.proc is not None and before is not None:
            after = cpu_sample(peer.proc.pid)
            if result.requests:
                cpu_us = (after.on_cpu - before.on_cpu) / 1e3 / result.requests
            waited = (after.waiting - before.waiting) / 1e9 / wall
            if not peer.proc.alive():
                raise PeerError(
                    f"{peer.name}: exited with code {peer.proc.popen.returncode} during the "
                    f"{scenario.name} run\n  stderr tail:\n{peer.proc.stderr_tail()}"
                )
            rss = rss_bytes(peer.proc.pid)
        return Run(round_, scenario.name, peer.name, result, rss, cpu_us, waited)

    def hold_keepalive(self, peer: Peer) -> None:
        proc = peer.proc
        if proc is None or self.args.keepalive <= 0:
            return
        opened, rss = keepalive.with_connections(
            peer.port, "/small", self.args.keepalive, lambda _: rss_bytes(proc.pid)
        )
        memory = self.memory[peer.name]
        memory.keepalive, memory.keepalive_open = rss, opened


def wait_metrics(proc: Proc, name: str, port: int, timeout: float = 10.0) -> None:
    """The admin port must serve /metrics too: a peer with a dead admin server is not whole."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _ = http_get(port, "/metrics")
            if status == 200:
                return
            why = f"status {status}"
        except OSError as exc:
            why = str(exc)
        if time.monotonic() > deadline or not proc.alive():
            raise PeerError(
                f"{name}: /metrics on port {port} not answering ({why})\n"
                f"  stderr tail ({proc.stderr_path}):\n{proc.stderr_tail()}"
            )
        time.sleep(0.1)


def sidecar_binary() -> Path:
    # `.venv/bin/python -m bench.run` puts the console script next to the interpreter.
    beside = Path(sys.executable).parent / "sidecar-proxy"
    if beside.exists():
        return beside
    found = shutil.which("sidecar-proxy")
    if found is None:
        raise PeerError("sidecar-proxy: console script not found (run `make run` once to install)")
    return Path(found)


def builds(args: argparse.Namespace) -> dict[str, str]:
    """What ``--version`` says of each sidecar build measured: "0.1.0 (compiled, CPython ...)"."""
    binaries = {SIDECAR: sidecar_binary(), PURE: args.pure}
    # The peers each binary runs as.
    peers = {SIDECAR: {SIDECAR, "sidecar-pipe", "sidecar-nolog"}, PURE: {PURE}}
    found = {}
    for name, binary in binaries.items():
        if binary is None or not peers[name] & set(args.peer_list):
            continue
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        found[name] = done.stdout.strip().removeprefix("sidecar-proxy ")
    return found


def rotated(peers: list[str], round_: int, rounds: int) -> list[str]:
    """Round r starts 1/rounds further down the list, so no peer always runs first or last."""
    offset = (round_ * len(peers)) // max(rounds, 1)
    return peers[offset:] + peers[:offset]


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def out(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "unavailable"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if (done.stdout + done.stderr).strip()
            else ""
        )

    dirty = out(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "-v"]).split(" Copyright")[0],
        "git_head": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        # Others work in the same checkout: say whether src/ had uncommitted changes.
        "src_uncommitted_changes": bool(dirty),
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 round of 3 s runs")
    parser.add_argument(
        "--peers",
        help=f"comma-separated subset of: {', '.join(PEERS)} "
        "(default: all, seed-go only if its binary exists)",
    )
    parser.add_argument("--scenarios", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of discarded warm-up per run (default 2)"
    )
    parser.add_argument("--rounds", type=int, help="rounds over all peers (default 3)")
    parser.add_argument(
        "--keepalive",
        type=int,
        default=1000,
        help="idle keep-alive connections held for the memory reading (default 1000; 0 = skip)",
    )
    parser.add_argument(
        "--seed-binary",
        type=Path,
        help=f"the seed's Go sidecar (default {DEFAULT_SEED_BINARY} when it exists)",
    )
    parser.add_argument(
        "--pure",
        type=Path,
        help=f"a pure-Python install's sidecar-proxy script, measured as the {PURE} peer beside "
        "the compiled build (make bench passes .venv-pure's)",
    )
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the sidecar from the source of git commit REV (peer sidecar-baseline), "
        "to compare two commits in one run",
    )
    args = parser.parse_args(argv)

    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.rounds = args.rounds or (1 if quick else 3)

    if args.seed_binary is None and DEFAULT_SEED_BINARY.exists():
        args.seed_binary = DEFAULT_SEED_BINARY
    if args.seed_binary is not None and not os.access(args.seed_binary, os.X_OK):
        parser.error(f"--seed-binary {args.seed_binary}: not an executable file")
    if args.pure is not None and not os.access(args.pure, os.X_OK):
        parser.error(f"--pure {args.pure}: not an executable file")

    if args.peers:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = set(peers) - set(PEERS)
        if unknown:
            parser.error(f"unknown peers: {', '.join(sorted(unknown))}; known: {', '.join(PEERS)}")
        if "sidecar-baseline" in peers and not args.baseline:
            parser.error("sidecar-baseline needs --baseline REV")
        if "seed-go" in peers and args.seed_binary is None:
            parser.error(f"seed-go needs --seed-binary (or a binary at {DEFAULT_SEED_BINARY})")
        if PURE in peers and args.pure is None:
            parser.error(f"{PURE} needs --pure PATH (a pure-Python install's sidecar-proxy)")
    else:
        optional = {"seed-go": args.seed_binary, PURE: args.pure, "sidecar-baseline": args.baseline}
        peers = [p for p in PEERS if p not in optional or optional[p] is not None]
    args.peer_list = peers

    names = [s.strip() for s in (args.scenarios or ",".join(SCENARIOS)).split(",") if s.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(
            f"unknown scenarios: {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}"
        )
    args.scenario_list = [SCENARIOS[n] for n in names]
    return args


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` that stops every peer still runs."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_file_limit()
    meta = machine()
    meta["command"] = " ".join(
        ["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]
    )
    durations = f"{args.duration:g} s x {args.rounds} round{'s' if args.rounds != 1 else ''}"
    peers = ", ".join(args.peer_list)
    dirty = " + uncommitted src/ changes" if meta["src_uncommitted_changes"] else ""
    print(f"bench: {meta['cpu']}, {meta['nproc']} cores, {meta['date']}, peers: {peers}")
    print(f"bench: code at {meta['git_head']}{dirty}; load average {meta['loadavg_start'][0]:.2f}")
    meta["builds"] = builds(args)
    for name, build in meta["builds"].items():
        print(f"bench: {name} is sidecar-proxy {build}")
    if pinning_available():
        # This script's own work (reading the log pipe, holding connections) stays off core 0.
        os.sched_setaffinity(0, {CORE_LOAD})
    else:
        print("bench: WARNING: taskset or a second core is missing; nothing is pinned")

    runs: list[Run] = []
    micro: dict[str, float] | None = None
    log_check: dict[str, int] | None = None
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp, sigterm_as_interrupt():
        bench = Bench(args, Path(tmp))
        try:
            bench.start_all(args.peer_list)
            print(
                f"bench: upstream on :{bench.upstream_port}; "
                + ", ".join(f"{p.name} on :{p.port}" for p in bench.peers.values())
            )
            for round_ in range(args.rounds):
                order = rotated(args.peer_list, round_, args.rounds)
                for scenario in args.scenario_list:
                    for name in order:
                        run = bench.measure(round_, scenario, bench.peers[name])
                        runs.append(run)
                        _progress(run, args.rounds)
            for name, peer in bench.peers.items():
                if peer.proc is not None:
                    bench.memory[name].after_runs = rss_bytes(peer.proc.pid)
            log_check = _log_lines(bench, runs)
            for peer in bench.peers.values():
                bench.hold_keepalive(peer)
        except PeerError as exc:
            print(f"bench: FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping every process it started", file=sys.stderr)
            return 130
        finally:
            bench.sup.stop_all()
        if not args.no_micro:
            micro = _micro()

    report = Report(
        args.scenario_list,
        args.peer_list,
        runs,
        bench.memory,
        {p: NOTES[p] for p in args.peer_list},
    )
    print(report.text(durations))
    if log_check is not None:
        print(
            f"\nsidecar-pipe access log: {log_check['lines']:,} lines read from the pipe for "
            f"{log_check['requests']:,} requests counted by wrk (incl. warm-ups)"
        )
    if micro is not None:
        from bench.micro import report as micro_report  # noqa: PLC0415 - optional, imports src

        print("\n" + micro_report(micro))
    meta["loadavg_end"] = os.getloadavg()
    path = _write_json(meta, args, report, micro, log_check)
    print(f"\nresults: {path.relative_to(REPO)}")
    return 0


def _raise_file_limit() -> None:
    """1,000 held connections plus the proxies' upstream sockets exceed a 1,024 default;
    children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 16384:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))


def _progress(run: Run, rounds: int) -> None:
    r = run.result
    errors = f"  ERRORS {r.errors}" if r.errors else ""
    cpu = ""
    if run.cpu_us is not None and run.waited is not None:
        cpu = f"  cpu {run.cpu_us:7.1f} us/req  waited {run.waited:4.0%}"
    print(
        f"  round {run.round + 1}/{rounds}  {run.scenario:<5}  {run.peer:<14}"
        f"{r.requests_per_s:>10,.0f} req/s {r.mib_per_s:>8,.1f} MiB/s"
        f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:7.2f} ms{cpu}{errors}",
        flush=True,
    )


def _log_lines(bench: Bench, runs: list[Run]) -> dict[str, int] | None:
    """Lines the sidecar-pipe peer logged against the requests wrk saw complete: a sidecar that
    skipped or lost log lines under load would look faster than it is."""
    peer = bench.peers.get("sidecar-pipe")
    if peer is None or peer.drain is None:
        return None
    time.sleep(0.3)  # the access log is flushed every 50 ms
    requests = sum(r.result.requests for r in runs if r.peer == peer.name)
    requests += bench.warmup_requests.get(peer.name, 0)
    return {"lines": peer.drain.lines, "requests": requests}


def _micro() -> dict[str, float] | None:
    try:
        from bench import micro  # noqa: PLC0415 - needs the observe modules of src/

        return micro.measure()
    except (ImportError, RuntimeError, TypeError, AttributeError) as exc:
        # The recorder's API may be mid-change in src/; the end-to-end figures still stand.
        print(f"bench: micro-benchmarks skipped: {exc!r}", file=sys.stderr)
        return None


def _write_json(
    meta: dict[str, Any],
    args: argparse.Namespace,
    report: Report,
    micro: dict[str, float] | None,
    log_check: dict[str, int] | None,
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "meta": meta,
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "keepalive_connections": args.keepalive,
            "peers": args.peer_list,
            "scenarios": {
                s.name: {"path": s.path, "connections": s.connections} for s in args.scenario_list
            },
            "pinned": pinning_available(),
            "seed_binary": str(args.seed_binary) if args.seed_binary else None,
        },
        **report.to_json(),
        "micro_us": micro,
        "access_log_check": log_check,
    }
    path = RESULTS / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    text = json.dumps(document, indent=2)
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    return path


if __name__ == "__main__":
    sys.exit(main())
