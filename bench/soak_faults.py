"""When the soak's faults happen, and the task that makes them happen.

The traffic phase is laid out as: a warm-up with no faults (the proxy's pools and the RSS
baseline settle), fault windows cycling through the four kinds with healthy gaps between them,
and a quiet tail with no faults (the proxy must be seen to recover, and the last third of the
RSS curve is not just the aftermath of a fault). Short runs pack all four kinds in with short
gaps; long runs repeat the cycle every ``PERIOD`` seconds.
"""

from __future__ import annotations

import asyncio
import time

from bench.soak_app import BURST_503, RESET, RESTART, SLOW, STALL, Faults, FaultWindow, SoakApp

# The restart comes last in each cycle: in a short run, whatever a restart leaves behind cannot
# hide the other faults' effects.
CYCLE = (RESET, BURST_503, SLOW, RESTART)
# Seconds from one window's start to the next in a long run: every healthy gap (at least 7 s) is
# longer than the breaker's tail after a window (4 s at most), and the 120 s default still gets
# two restarts, each a fresh chance for the races only a restart opens.
PERIOD = 10.0
LONG_WINDOWS = {RESET: 3.0, BURST_503: 2.0, RESTART: 1.0, SLOW: 3.0}
SHORT_WINDOWS = {RESET: 1.0, BURST_503: 0.8, RESTART: 1.0, SLOW: 1.0}
RESTART_DOWN = 1.0  # seconds the app does not listen during a restart
# How often the stall watch wakes, and how late a wake-up must be to count as a stall. The
# proxy's per-try timeout is 0.8 s; a quarter of that already shifts its verdicts.
STALL_TICK = 0.05
STALL_THRESHOLD = 0.2


def schedule(duration: float) -> list[FaultWindow]:
    """The fault windows for a traffic phase of ``duration`` seconds (offsets from its start)."""
    warmup = min(10.0, max(1.5, duration * 0.1))
    tail = min(15.0, max(2.0, duration * 0.12))
    span = duration - warmup - tail
    if span <= 0:
        return []
    windows: list[FaultWindow] = []
    if span < PERIOD * len(CYCLE):
        # Short run: each kind once, evenly spread; whatever does not fit is left out.
        step = span / len(CYCLE)
        for i, kind in enumerate(CYCLE):
            start = warmup + i * step
            length = min(SHORT_WINDOWS[kind], step * 0.6)
            if length >= 0.3:
                windows.append(FaultWindow(kind, round(start, 2), round(start + length, 2)))
        return windows
    for i in range(int(span // PERIOD)):
        kind = CYCLE[i % len(CYCLE)]
        start = warmup + i * PERIOD
        windows.append(FaultWindow(kind, start, start + LONG_WINDOWS[kind]))
    return windows


async def run_schedule(windows: list[FaultWindow], faults: Faults, app: SoakApp, t0: float) -> None:
    """Open and close each window at its planned offset from ``t0``, recording actual times."""
    for window in windows:
        delay = t0 + window.planned_start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        window.start = time.monotonic()
        if window.kind == RESTART:
            # The window is exactly the time the app is gone: from dropping its connections to
            # listening again.
            window.hits["connections dropped"] = await app.restart(RESTART_DOWN)
            window.end = time.monotonic()
            continue
        faults.open.append(window)
        try:
            await asyncio.sleep(max(0.0, t0 + window.planned_end - time.monotonic()))
        finally:
            faults.open.remove(window)
            window.end = time.monotonic()


async def watch_stalls(out: list[FaultWindow], t0: float) -> None:
    """Record every stretch in which the soak's process did not run (the machine was busy
    elsewhere, or a long collection) as a STALL window, until cancelled.

    The app runs in this process, so during a stall it neither accepts, reads nor answers, and
    the proxy rightly reports it as slow or unreachable. The window spans from the last on-time
    wake-up to the late one, which contains the stall.
    """
    for _ in range(100_000_000):  # cancelled at the end of traffic; the bound stops a runaway
        before = time.monotonic()
        await asyncio.sleep(STALL_TICK)
        now = time.monotonic()
        late = now - before - STALL_TICK
        if late > STALL_THRESHOLD:
            window = FaultWindow(STALL, round(before - t0, 3), round(now - t0, 3), before, now)
            window.hits["ms late"] = round(late * 1000)
            out.append(window)
