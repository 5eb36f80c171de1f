"""``python -m bench.syscalls``: system calls per request, the sidecar against nginx.

Starts the upstream nginx and the peers exactly as ``bench.run`` does (same pinning, same
settings: access log and metrics on for the sidecar), warms each peer up with wrk, then counts
every system call its processes and threads enter during one wrk run with ``perf stat`` on the
``syscalls:sys_enter_*`` tracepoints. Counting (not sampling, not tracing each call as strace
does) barely slows the peer, so the batching it does under load is the batching measured.
Counts are divided by the requests wrk completed; the calls a peer makes on its own clock (the
access log's flushes, nginx's timers) are included, as they are part of its cost per request.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import wrk
from bench.procs import CORE_LOAD, cpu_sample, descendants, pinning_available
from bench.run import Bench, parse_args

_EVENT = "syscalls:sys_enter_"
# Counted with the calls, in the peer's own context: the tasks it wakes (a write to a socket
# wakes its reader) and the interrupts it sends another core to do so, which in a VM are exits
# to the hypervisor. Per process, so other work on the machine does not show in them.
_WAKE_EVENTS = ("sched:sched_waking", "ipi:ipi_send_cpu", "ipi:ipi_send_cpumask")
_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def usage(pids: list[int]) -> tuple[float, float, int, int]:
    """User and system CPU (us) and voluntary and involuntary context switches of every thread
    of ``pids`` so far, from /proc (``stat`` counts CPU in ticks: enough over a whole run)."""
    user = system = 0.0
    voluntary = involuntary = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            task = Path(f"/proc/{pid}/task/{tid}")
            # the fields after the command's closing parenthesis; utime and stime are 14 and 15
            stat = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()
            user += int(stat[11]) * _TICK_US
            system += int(stat[12]) * _TICK_US
            for line in task.joinpath("status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
    return user, system, voluntary, involuntary


def costs(
    pids: list[int], port: int, connections: int, duration: float, core: int | None
) -> dict[str, float]:
    """CPU and context switches per request over one wrk run with nothing attached."""
    before, on_cpu = usage(pids), cpu_sample(pids[0]).on_cpu
    requests = wrk.run(port, "/small", connections, duration, core).requests
    after, on_cpu = usage(pids), cpu_sample(pids[0]).on_cpu - on_cpu
    user, system, voluntary, involuntary = (b - a for a, b in zip(before, after, strict=True))
    return {
        "req/s": requests / duration,
        "CPU us/req": on_cpu / 1e3 / requests,
        "user us/req": user / requests,
        "system us/req": system / requests,
        "voluntary cs/req": voluntary / requests,
        "involuntary cs/req": involuntary / requests,
    }


def count(
    pids: list[int], port: int, connections: int, duration: float, core: int | None
) -> tuple[dict[str, int], int]:
    """Syscalls entered by ``pids`` (all their threads) during one wrk run, and its requests."""
    perf = subprocess.Popen(
        [
            *("perf", "stat", "-x", ",", "--no-big-num", "-e", f"{_EVENT}*"),
            *("-e", ",".join(_WAKE_EVENTS)),
            "-p",
            ",".join(map(str, pids)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # perf attaches to every tracepoint before the run starts
    try:
        result = wrk.run(port, "/small", connections, duration, core)
    finally:
        perf.send_signal(signal.SIGINT)
        _, err = perf.communicate(timeout=30)
    counts = parse_perf_stat(err)
    if not counts:
        raise RuntimeError(f"perf stat counted nothing:\n{err}")
    return counts, result.requests


def parse_perf_stat(text: str) -> dict[str, int]:
    """``perf stat -x ,`` lines (``count,unit,event,...``) as counts by event, a system call by
    its bare name; events never seen, and those perf could not count (``<not counted>``), are
    left out."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit() and int(fields[0]):
            event = fields[2]
            if event.startswith(_EVENT) or event in _WAKE_EVENTS:
                counts[event.removeprefix(_EVENT)] = int(fields[0])
    return counts


def table(results: dict[str, tuple[dict[str, int], int]], floor: float) -> str:
    names = list(results)
    per_request = {
        name: {call: n / requests for call, n in counts.items()}
        for name, (counts, requests) in results.items()
    }
    calls = sorted(
        {
            c
            for rates in per_request.values()
            for c, r in rates.items()
            if r >= floor and c not in _WAKE_EVENTS
        },
        key=lambda c: -max(rates.get(c, 0.0) for rates in per_request.values()),
    )
    width = max(len("syscall"), *(len(c) for c in (*calls, *_WAKE_EVENTS)))

    def row(label: str, values: list[float]) -> str:
        return f"  {label:<{width}}" + "".join(f"  {v:>14.3f}" for v in values)

    lines = [f"  {'syscall':<{width}}" + "".join(f"  {n:>14}" for n in names)]
    lines += [row(c, [per_request[n].get(c, 0.0) for n in names]) for c in calls]
    all_calls = [sum(r for c, r in per_request[n].items() if c not in _WAKE_EVENTS) for n in names]
    lines.append(row("all", all_calls))
    lines += [row(e, [per_request[n].get(e, 0.0) for n in names]) for e in _WAKE_EVENTS]
    reqs = "".join(f"  {results[n][1]:>14,}" for n in names)
    lines.append(f"  {'(requests)':<{width}}{reqs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__)
    parser.add_argument("--peers", default="nginx-proxy,sidecar-proxy")
    parser.add_argument(
        "--pure",
        help="another build's sidecar-proxy script, measured as peer sidecar-pure (as bench.run)",
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk's connections")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds counted per peer")
    parser.add_argument("--floor", type=float, default=0.01, help="hide calls rarer per request")
    args = parser.parse_args(argv)
    pure = ["--pure", args.pure] if args.pure else []
    run_args = parse_args(["--peers", args.peers, "--keepalive", "0", "--warmup", "2", *pure])
    if pinning_available():
        os.sched_setaffinity(0, {CORE_LOAD})
    results: dict[str, tuple[dict[str, int], int]] = {}
    plain: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-syscalls-") as tmp:
        bench = Bench(run_args, Path(tmp))
        try:
            bench.start_all(run_args.peer_list)
            for name, peer in bench.peers.items():
                if peer.proc is None:
                    continue
                load = bench.core(CORE_LOAD)
                wrk.run(peer.port, "/small", args.connections, 2.0, load)
                pids = [peer.proc.pid, *descendants(peer.proc.pid)]
                plain[name] = costs(pids, peer.port, args.connections, args.duration, load)
                results[name] = count(pids, peer.port, args.connections, args.duration, load)
        finally:
            bench.sup.stop_all()
    what = f"GET /small, {args.connections} connections, {args.duration:g} s runs"
    print(f"== {what}, nothing attached ==")
    names = list(plain)
    print(f"  {'':<20}" + "".join(f"  {n:>14}" for n in names))
    for figure in plain[names[0]]:
        print(f"  {figure:<20}" + "".join(f"  {plain[n][figure]:>14.2f}" for n in names))
    print(f"== system calls per request, counted by perf stat over another {args.duration:g} s ==")
    print(table(results, args.floor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
