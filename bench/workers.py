"""``python -m bench.workers``: the sidecar with one worker and with two, and the seed's Go
sidecar, with every process (the proxy, wrk, the upstream nginx) on the same two cores.

This is the set-up of a pod with a CPU limit of 2 where the load generator and the app take
their share of the same cores: nothing is pinned. The peers are started once and measured in
turn, their order rotating from round to round, as in ``bench.run`` (whose machinery this
reuses); each figure is the median over rounds. Besides requests per second it reports the CPU
time per request of each peer's whole process tree, its memory, and, for two workers, how the
requests of each run were shared between them (from ``METRICS_PER_WORKER=true``).

The seed is left out, with a note, when its binary is absent (``../shared/tools/build-seed-go``
builds it into ``/tmp/anchors/seed-sidecar``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.nginx import SMALL_SIZE
from bench.procs import PeerError, http_get, unique_bytes
from bench.report import MIB, Memory, Report, Run, Scenario, Target, table
from bench.run import (
    DEFAULT_SEED_BINARY,
    RESULTS,
    Bench,
    Peer,
    machine,
    rotated,
    sigterm_as_interrupt,
)

ONE, TWO, SEED = "sidecar-w1", "sidecar-w2", "seed-go"
SCENARIO = Scenario("small", "/small", 64, SMALL_SIZE, "rps")
NOTES = {
    ONE: "sidecar-proxy run, WORKERS=1: one process; access log on (to /dev/null), metrics on",
    TWO: "sidecar-proxy run, WORKERS=2: a parent and two workers; access log on, metrics on "
    "(METRICS_PER_WORKER=true, to see the spread)",
    SEED: "the seed's Go sidecar, GOMAXPROCS = 2 (both cores); logs to /dev/null; breaker "
    "threshold raised (see bench/run.py)",
}
RSS_LIMIT = 80 * MIB


class WorkersBench(Bench):
    def core(self, core: int) -> int | None:
        return None  # nothing is pinned: every process shares both cores

    def launch(self, name: str) -> Peer:
        if name == ONE:
            return self.start_sidecar(name, {"WORKERS": "1"})
        if name == TWO:
            return self.start_sidecar(name, {"WORKERS": "2", "METRICS_PER_WORKER": "true"})
        return super().launch(name)


def per_worker_requests(peer: Peer) -> dict[str, float]:
    """Requests each worker of ``peer`` has answered so far, from its /metrics."""
    assert peer.admin_port is not None
    _, body = http_get(peer.admin_port, "/metrics", timeout=5.0)
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("sidecar_requests_total{"):
            worker = line.split('worker="', 1)[1].split('"', 1)[0]
            out[worker] = out.get(worker, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 round of 3 s")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    parser.add_argument("--warmup", type=float, help="discarded warm-up seconds (default 2)")
    parser.add_argument("--rounds", type=int, help="rounds over all peers (default 5)")
    parser.add_argument("--seed-binary", type=Path, help=f"default {DEFAULT_SEED_BINARY}")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    if args.seed_binary is None and DEFAULT_SEED_BINARY.exists():
        args.seed_binary = DEFAULT_SEED_BINARY
    args.peer_list = [ONE, TWO] + ([SEED] if args.seed_binary is not None else [])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = machine()
    meta["command"] = " ".join(["python -m bench.workers", *(argv or sys.argv[1:])])
    print(f"bench.workers: {meta['cpu']}, {meta['nproc']} cores, peers: {args.peer_list}")
    if args.seed_binary is None:
        print(f"bench.workers: {SEED} skipped: no binary at {DEFAULT_SEED_BINARY}")
    runs: list[Run] = []
    shares: list[float] = []  # the busier worker's share of each run of TWO
    unique: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-workers-") as tmp, sigterm_as_interrupt():
        bench = WorkersBench(args, Path(tmp))
        try:
            bench.start_all(args.peer_list)
            for round_ in range(args.rounds):
                for name in rotated(args.peer_list, round_, args.rounds):
                    peer = bench.peers[name]
                    before = per_worker_requests(peer) if name == TWO else {}
                    run = bench.measure(round_, SCENARIO, peer)
                    runs.append(run)
                    assert peer.proc is not None
                    unique[name] = max(unique.get(name, 0), unique_bytes(peer.proc.pid))
                    spread = ""
                    if name == TWO:
                        after = per_worker_requests(peer)
                        served = [after[w] - before.get(w, 0.0) for w in after]
                        shares.append(max(served) / max(1.0, sum(served)))
                        spread = f"  busier worker {shares[-1]:.0%}"
                    r = run.result
                    print(
                        f"  round {round_ + 1}/{args.rounds}  {name:<11}"
                        f"{r.requests_per_s:>9,.0f} req/s  p99 {r.p99_ms:6.2f} ms"
                        f"  cpu {run.cpu_us or 0:6.1f} us/req  errors {r.errors}{spread}",
                        flush=True,
                    )
        except PeerError as exc:
            print(f"bench.workers: FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            bench.sup.stop_all()
    memory = {
        name: Memory(after_runs=max(r.rss_after or 0 for r in runs if r.peer == name))
        for name in args.peer_list
    }
    report = Report([SCENARIO], args.peer_list, runs, memory, NOTES)
    text, targets = summary(report, unique, shares, args)
    print(text)
    _write_json(meta, args, report, unique=unique, shares=shares, targets=targets)
    return 0


def summary(
    report: Report, unique: dict[str, int], shares: list[float], args: argparse.Namespace
) -> tuple[str, list[Target]]:
    medians = report.medians[SCENARIO.name]
    rows = [["peer", "req/s", "p50 ms", "p99 ms", "CPU us/req", "RSS sum MiB", "memory MiB"]]
    for name in args.peer_list:
        m = medians[name]
        rows.append(
            [
                name,
                f"{m.rps:,.0f}",
                f"{m.p50_ms:.2f}",
                f"{m.p99_ms:.2f}",
                "-" if m.cpu_us is None else f"{m.cpu_us:.1f}",
                f"{(m.rss_after_max or 0) / MIB:.1f}",
                f"{unique[name] / MIB:.1f}",
            ]
        )
    lines = [
        f"\n== small: GET /small, 64 connections, {args.duration:g} s x {args.rounds} rounds, "
        "every process on both cores (median of rounds) ==",
        table(rows),
        "  CPU us/req: the peer's whole process tree. RSS sum: VmRSS summed over the tree "
        "(shared pages once per process). memory: each page once (private pages of every "
        "process plus the largest shared set): what the container is charged.",
    ]
    if shares:
        lines.append(
            f"  two workers: the busier one answered {statistics.median(shares):.0%} of a run's "
            f"requests (median; {min(shares):.0%}-{max(shares):.0%}; even = 50%)"
        )
    per_cpu = [
        f"{of} / {peer} = {cpu:.2f}"
        for of, peer in ((TWO, ONE), (TWO, SEED), (ONE, SEED))
        if (cpu := report.cpu_ratio(SCENARIO, peer, of=of)) is not None
    ]
    lines.append(
        "  requests per CPU-second (what the req/s ratios would be if each peer got the same "
        "CPU; the figure the machine's other load moves least): " + "; ".join(per_cpu)
    )
    targets: list[Target] = []
    ranges: dict[str, str] = {}  # target text -> the per-round range of its ratio
    for peer, goal, text in ((ONE, 1.2, "WORKERS=1"), (SEED, 2.0, "the seed")):
        ratio = report.ratio(SCENARIO, peer, of=TWO)
        if ratio:
            target = Target(f"WORKERS=2 req/s >= {goal:g} x {text}", ratio[0], goal, True, "x")
            targets.append(target)
            ranges[target.text] = f"{ratio[1]:.2f}-{ratio[2]:.2f}"
    one_cpu, two_cpu = medians[ONE].cpu_us, medians[TWO].cpu_us
    if one_cpu and two_cpu:
        targets.append(
            Target("CPU/request, 2 workers <= 1.1 x 1 worker", two_cpu / one_cpu, 1.1, False, "x")
        )
    targets.append(
        Target("memory of 2 workers <= 80 MiB", unique[TWO] / MIB, RSS_LIMIT / MIB, False, "MiB")
    )
    rows = [["target", "measured", "per-round range", "verdict"]]
    for t in targets:
        shown = f"{t.value:.2f}x" if t.unit == "x" else f"{t.value:.1f} MiB"
        rows.append([t.text, shown, ranges.get(t.text, "-"), t.describe()])
    lines += ["\n== targets ==", table(rows), "\n== peers =="]
    lines += [f"  {name:<11} {NOTES[name]}" for name in args.peer_list]
    return "\n".join(lines), targets


def _write_json(
    meta: dict[str, Any],
    args: argparse.Namespace,
    report: Report,
    *,
    unique: dict[str, int],
    shares: list[float],
    targets: list[Target],
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta["loadavg_end"] = os.getloadavg()
    document = {
        "meta": meta,
        "config": {"duration_s": args.duration, "rounds": args.rounds, "peers": args.peer_list},
        "runs": [run.to_json() for run in report.runs],
        "unique_memory": unique,
        "busier_worker_shares": shares,
        "targets": [t.to_json() for t in targets],
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"workers-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(document, indent=2))
    print(f"\nresults: {path.relative_to(RESULTS.parents[1])}")


if __name__ == "__main__":
    sys.exit(main())
