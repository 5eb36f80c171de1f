"""Micro-benchmark of the per-request observability cost: ``Recorder.started()`` +
``Recorder.finished()`` on a realistic proxied request, without and with the SLO windows.

Metrics cannot be switched off in the sidecar, so the end-to-end runs cannot show their cost by
difference the way they show the access log's (ACCESS_LOG=false); this measures it directly.
The access log is measured writing to a pipe that a thread drains, as stdout to a container
runtime would be.

It also reports what no-op Python hooks add per request (:func:`bench.dataplane.hook_cost`),
under keys starting ``hooks:``, since no end-to-end run has hooks set.

Run alone: ``python -m bench.micro``. ``bench.run`` runs it too and puts it in its report.
"""

from __future__ import annotations

import os
import subprocess
import time
import timeit
from collections.abc import Callable

from bench.dataplane import hook_cost, hook_report
from sidecar_proxy.observe.accesslog import AccessLog
from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.record import Record
from sidecar_proxy.observe.recorder import Recorder
from sidecar_proxy.observe.slo import SloWindows

_NUMBER = 20_000
_REPEAT = 5
HOOKS = "hooks: "  # the prefix of the hook-cost figures' keys


def _exchange(traced: bool) -> Record:
    """What the data path fills in for a GET proxied in one attempt with a 512-byte answer."""
    start = time.monotonic()
    ex = Record(start, time.time(), "127.0.0.1:51234", "HTTP/1.1")
    ex.method = "GET"
    ex.path = "/api/users/42"  # the labeler turns the id into a placeholder: a bounded label
    ex.status = 200
    ex.ttfb = 0.0008
    ex.end = start + 0.0011
    ex.bytes_out = 512
    ex.attempts = 1
    ex.request_id = "0af7651916cd43dd8448eb211c80319c"
    # Without a trace header the data path uses the request id as the trace id; with one, they
    # differ and the recorder may attach an exemplar.
    ex.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736" if traced else ex.request_id
    ex.traced = traced
    ex.user_agent = "wrk/4.1.0"
    return ex


def _per_call_us(call: Callable[[], None]) -> float:
    # The minimum of several repeats is the figure least disturbed by other work on the machine.
    return min(timeit.repeat(call, number=_NUMBER, repeat=_REPEAT)) / _NUMBER * 1e6


def measure() -> dict[str, float]:
    """Microseconds per request for each case, keyed by a short description."""
    results: dict[str, float] = {}
    read_fd, write_fd = os.pipe()
    # The reader is another process, as a log collector is: a reader thread here would compete
    # with the timed loop for the GIL and slow the log's own writer thread.
    drainer = subprocess.Popen(["cat"], stdin=read_fd, stdout=subprocess.DEVNULL)
    os.close(read_fd)
    dropped = [0]

    def on_drop(lines: int) -> None:
        dropped[0] += lines

    # The timed loop makes lines far faster than any real request rate; a buffer big enough
    # for all of them keeps the log from dropping lines, which would skip work and flatter
    # the figure. Drops are still counted and reported.
    access_log = AccessLog(write_fd, max_buffer=1 << 30, on_drop=on_drop)
    try:
        cases: list[tuple[str, AccessLog | None, bool, bool]] = [
            ("metrics only (ACCESS_LOG=false)", None, False, False),
            ("metrics + SLO_AVAILABILITY + SLO_LATENCY", None, False, True),
            ("metrics + access log to a pipe", access_log, False, False),
            ("metrics + access log, traced request", access_log, True, False),
        ]
        for name, log, traced, slo in cases:
            windows = SloWindows(99.9, 0.3, 99.0) if slo else None
            recorder = Recorder(Metrics(windows), PathLabeler(100), log)
            ex = _exchange(traced)

            def one(recorder: Recorder = recorder, ex: Record = ex) -> None:
                recorder.started()
                recorder.finished(ex)

            results[name] = _per_call_us(one)
            access_log.flush()
    finally:
        access_log.close(timeout=2.0)
        os.close(write_fd)
        drainer.wait(5.0)
    if dropped[0]:
        raise RuntimeError(f"the access log dropped {dropped[0]} lines: figures not valid")
    results.update({HOOKS + name: us for name, us in hook_cost().items()})
    return results


def report(results: dict[str, float]) -> str:
    recorder = {name: us for name, us in results.items() if not name.startswith(HOOKS)}
    hooks = {name[len(HOOKS) :]: us for name, us in results.items() if name.startswith(HOOKS)}
    width = max(len(name) for name in recorder)
    lines = ["Recorder.started()+finished() per request (timeit, best of 5 x 20k):"]
    lines += [f"  {name:<{width}}  {us:6.2f} us" for name, us in recorder.items()]
    if hooks:
        lines += ["", hook_report(hooks)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(measure()))
