"""``python -m bench.profile``: where the sidecar's CPU goes under one bench scenario.

Starts the upstream nginx (core 1) and one sidecar (core 0) exactly as ``bench.run`` does, warms
it up, then runs wrk while a sampling profiler watches the sidecar:

* ``perf record`` (Linux perf, sampling the ``cpu-clock`` software event, which works inside a
  VM without a PMU): the split between kernel, interpreter and the C extensions, and the hottest
  symbols. Kernel time on loopback includes delivering each sent segment to the receiver.
* ``py-spy record --native`` when ``--py-spy PATH`` is given: which Python functions of the
  sidecar the user-space time belongs to. py-spy pauses the process for each sample, which
  slows it, so the shares are meaningful and the request rate during sampling is not.

Both report shares of samples; multiplied by the measured CPU time per request (from schedstat,
outside the profilers' own overhead only for perf) they become microseconds per request.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import nginx, wrk
from bench.nginx import SMALL_SIZE
from bench.procs import CORE_LOAD, CORE_PROXY, Supervisor, cpu_sample, free_port, wait_ready
from bench.run import RESULTS, SCENARIOS, sidecar_binary

# A frame of the sidecar's own code in py-spy's collapsed output: "func (path/module.py:line)".
_SIDECAR_FRAME = re.compile(r"^(?P<func>[\w.<>]+) \(.*sidecar_proxy/(?P<mod>[\w/]+)\.py(:\d+)?\)$")
_SYSCALL_LEAF = re.compile(r"^(read|write|writev|epoll_pwait|0x[0-9a-f]+) \(libc")
# Frames that are on every stack (start-up code around the event loop), not request handling.
_OUTER_MODULES = frozenset({"cli", "server", "__main__"})
_PERF_REPORT = ("perf", "report", "--no-children", "-g", "none", "-q", "-i")


def _perf_summary(data: Path, cpu_us: float) -> str:
    lines = [f"perf: {cpu_us:.1f} us of CPU per request, split by where it was spent"]
    for sort, top in (("dso", 6), ("sym", 20)):
        done = subprocess.run(
            [*_PERF_REPORT, str(data), "--sort", sort, "--percent-limit", "0.5"],
            capture_output=True,
            text=True,
            check=False,
        )
        rows = [row for row in done.stdout.splitlines() if row.strip()][:top]
        lines.append(f"  by {sort}:")
        for row in rows:
            share = float(row.split("%")[0])
            lines.append(
                f"    {share:5.1f}%  {share / 100 * cpu_us:6.1f} us  {row.split('%', 1)[1].strip()}"
            )
    return "\n".join(lines)


def _py_spy_summary(raw: Path, user_us: float) -> str:
    """Shares of the event-loop thread's user-space samples, by the innermost sidecar frame
    (self, including the C it calls) and by every sidecar frame on the stack (inclusive)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "Thread._bootstrap" in stack or "thread_run" in stack:
            continue  # the admin server's and the access-log writer's threads: mostly idle
        frames = stack.split(";")
        if _SYSCALL_LEAF.match(frames[-1]):
            continue  # kernel time: perf measures it without py-spy's pauses
        n = int(count)
        total += n
        names = [
            f"{m['mod'].rsplit('/', 1)[-1]}.{m['func']}"
            for f in frames
            if (m := _SIDECAR_FRAME.match(f)) and m["mod"] not in _OUTER_MODULES
        ]
        own[names[-1] if names else "(event loop and parser, outside sidecar code)"] += n
        for name in set(names):
            inclusive[name] += n
    if not total:
        return "py-spy: no samples of the event-loop thread"
    lines = [f"py-spy: user-space time of the loop thread, scaled to {user_us:.1f} us/request"]
    for title, counter in (("self (with the C it calls)", own), ("inclusive", inclusive)):
        lines.append(f"  {title}:")
        lines += [
            f"    {n / total * 100:5.1f}%  {n / total * user_us:6.1f} us  {name}"
            for name, n in counter.most_common(18)
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="small")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds sampled")
    parser.add_argument("--py-spy", type=Path, help="a py-spy binary (not a project dependency)")
    parser.add_argument("--access-log", choices=("true", "false"), default="true")
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    if shutil.which("perf") is None and args.py_spy is None:
        parser.error("needs Linux perf on PATH or --py-spy PATH")
    os.sched_setaffinity(0, {CORE_LOAD})
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")

    with tempfile.TemporaryDirectory(prefix="sidecar-profile-") as tmp:
        sup = Supervisor(Path(tmp))
        try:
            prefix = Path(tmp) / "upstream"
            prefix.mkdir()
            up_port = free_port()
            conf = nginx.write_upstream(prefix, up_port)
            upstream = sup.start("upstream", nginx.argv(prefix, conf), core=CORE_LOAD)
            wait_ready(upstream, "upstream nginx", up_port, "/small", SMALL_SIZE)
            port, admin = free_port(), free_port()
            env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
            env |= {
                "SIDECAR_LISTEN_PORT": str(port),
                "METRICS_PORT": str(admin),
                "UPSTREAM_HOST": "127.0.0.1",
                "UPSTREAM_PORT": str(up_port),
                "LOG_LEVEL": "warning",
                "ACCESS_LOG": args.access_log,
                "LISTEN_HOST": "127.0.0.1",
                "METRICS_HOST": "127.0.0.1",
                "DRAIN_DELAY": "0s",
            }
            proxy = sup.start("sidecar", [str(sidecar_binary()), "run"], core=CORE_PROXY, env=env)
            wait_ready(proxy, "sidecar-proxy", port, scenario.path, scenario.size)
            wrk.run(port, scenario.path, scenario.connections, 3, CORE_LOAD)  # warm-up

            reports: list[str] = []
            if shutil.which("perf"):
                data = RESULTS / f"profile-{stamp}-{scenario.name}.perf"
                before = cpu_sample(proxy.pid)
                recorder = subprocess.Popen(
                    [
                        *("taskset", "-c", str(CORE_LOAD), "perf", "record", "-q", "-F", "999"),
                        *("-e", "cpu-clock", "-g", "-p", str(proxy.pid), "-o", str(data)),
                        *("--", "sleep", str(args.duration)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                result = wrk.run(
                    port, scenario.path, scenario.connections, args.duration + 1, CORE_LOAD
                )
                after = cpu_sample(proxy.pid)
                recorder.wait(30)
                cpu_us = (after.on_cpu - before.on_cpu) / 1e3 / max(result.requests, 1)
                print(
                    f"{result.requests_per_s:,.0f} req/s under perf, {result.mib_per_s:,.1f} MiB/s"
                )
                reports.append(_perf_summary(data, cpu_us))
                user_share = _user_share(data)
            else:
                cpu_us, user_share = 0.0, 1.0
            if args.py_spy is not None:
                raw = RESULTS / f"profile-{stamp}-{scenario.name}.py-spy.txt"
                spy = subprocess.Popen(
                    [
                        *("taskset", "-c", str(CORE_LOAD), str(args.py_spy), "record"),
                        *("--native", "--pid", str(proxy.pid), "--format", "raw", "-r", "100"),
                        *("-d", str(int(args.duration)), "-o", str(raw)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                wrk.run(port, scenario.path, scenario.connections, args.duration + 1, CORE_LOAD)
                spy.wait(60)
                reports.append(_py_spy_summary(raw, cpu_us * user_share))
        finally:
            sup.stop_all()
    print("\n\n".join(reports))
    return 0


def _user_share(data: Path) -> float:
    """The share of perf samples outside the kernel, to turn py-spy's shares into microseconds."""
    done = subprocess.run(
        [*_PERF_REPORT, str(data), "--sort", "dso"],
        capture_output=True,
        text=True,
        check=False,
    )
    for row in done.stdout.splitlines():
        if "[kernel.kallsyms]" in row:
            return 1.0 - float(row.split("%")[0]) / 100
    return 1.0


if __name__ == "__main__":
    sys.exit(main())
