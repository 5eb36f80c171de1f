"""Error-budget burn rates, computed in process, so a page can fire without recording rules.

An SLO says which share of requests must be good over a budget period; the error budget is the
share that may be bad, ``1 - objective``. The burn rate over a window is the bad share seen in it
divided by that budget: 1 spends the budget exactly over the period, 14.4 spends 2 % of a 30-day
budget in an hour (the Google SRE workbook, chapter 5, "Alerting on SLOs"). This module keeps the
counts needed for its multi-window, multi-burn-rate alerts: the windows of the pairs 5m/1h,
30m/6h, 2h/1d and 6h/3d, and the budget period, :data:`BUDGET_PERIOD` (30 days).

What counts, for both SLOs:

* Every request the sidecar answers is an event, except the health probes it answers itself
  on the proxy port (flag ``LR``), which are the kubelet's, not the app's users'.
* **availability**: a request is bad when the status the client got is 5xx: the app's own, and
  the sidecar's 502, 503 (load shed, breaker open) and 504. A client that hung up first (499)
  is no error: the app did not fail it. Client errors (4xx) are good events.
* **latency**: a request is bad when its latency exceeds the threshold. The latency is the time
  from the request head to the app's response head (``sidecar_upstream_response_seconds``,
  retries included), not to the end of the body, whose transfer time is the size's and the
  client's; when the app gave no head (a 502, a 504, a shed or refused request, a client that
  hung up waiting) it is the whole time the request took. So a client that gave up after
  waiting longer than the threshold counts as slow, and one that gave up sooner as fast.

Memory is bounded and small: the current minute's counts, a ring of 360 one-minute buckets for
the windows up to 6 h, and a ring of 720 one-hour buckets for 1 d, 3 d and the 30-day period,
three integers a bucket. A window is the buckets whose start lies in it, the current one
included, so it covers between ``window - bucket`` and ``window`` of time: 4 to 5 minutes for
the 5-minute window, 23 to 24 hours for the day. Burn rates are ratios of counts over the same
span, so the short-by-one-bucket span changes little: the bad share of 4.5 minutes is as good
a measure as that of 5. The budget counts only what this process has seen: it starts full at
every start, and a pod restarted a day ago reports the budget of one day's traffic.

Threads and cost. :meth:`SloWindows.record` runs on the event loop for every finished request
and adds to three plain integers (0.1 us measured, CPython 3.11); once a minute it folds them
into both rings. The scrape runs :meth:`SloWindows.report` on the admin thread. The fold and the
report take one lock, so a report never sees a minute both in a ring and in the current counts,
nor in neither; the loop takes it once a minute for a few microseconds, and a report only long
enough to copy the rings (3 x 1080 integers, 7 us), summing them afterwards (0.17 ms for full
rings). The per-request increments take no lock: only the loop writes the counts, each read is
atomic under the GIL, and a report that lands between the three increments of one request is
off by that one request until the next scrape.
"""

from __future__ import annotations

import math
import threading

AVAILABILITY = "availability"
LATENCY = "latency"

MINUTE = 60
HOUR = 3600
DAY = 24 * HOUR
BUDGET_PERIOD = 30 * DAY

# (label, seconds): the short and long windows of the workbook's four alert pairs.
WINDOWS: tuple[tuple[str, int], ...] = (
    ("5m", 5 * MINUTE),
    ("30m", 30 * MINUTE),
    ("1h", HOUR),
    ("2h", 2 * HOUR),
    ("6h", 6 * HOUR),
    ("1d", DAY),
    ("3d", 3 * DAY),
)
# Windows up to this long are summed from the minute ring, the rest from the hour ring.
_FINE_SPAN = 6 * HOUR


class _Ring:
    """Counts of (events, errors, slow) per time bucket, for the last ``size`` buckets.

    Buckets are numbered by ``time // width``; slot ``n % size`` holds bucket ``n`` for the
    ``size`` buckets up to :attr:`last`, the newest added. Moving to a newer bucket zeroes the
    slots of the buckets skipped on the way, so an idle stretch reads as zero, not as the counts
    of the lap before.
    """

    __slots__ = ("errors", "events", "last", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.events = [0] * size
        self.errors = [0] * size
        self.slow = [0] * size
        self.last = -size  # no bucket added yet: every slot is zero

    def add(self, bucket: int, events: int, errors: int, slow: int) -> None:
        """Add counts to ``bucket``, which is never older than :attr:`last`: the minutes are
        folded in time order."""
        size = self.size
        if bucket > self.last:
            for n in range(max(self.last + 1, bucket - size + 1), bucket + 1):
                i = n % size
                self.events[i] = self.errors[i] = self.slow[i] = 0
            self.last = bucket
        i = bucket % size
        self.events[i] += events
        self.errors[i] += errors
        self.slow[i] += slow

    def sums(self, newest: int, span: int) -> tuple[int, int, int]:
        """Totals over the buckets ``newest - span + 1`` to ``newest``."""
        size = self.size
        events = errors = slow = 0
        for n in range(max(newest - span + 1, self.last - size + 1), min(newest, self.last) + 1):
            i = n % size
            events += self.events[i]
            errors += self.errors[i]
            slow += self.slow[i]
        return events, errors, slow

    def copy(self) -> _Ring:
        ring = _Ring(0)
        ring.size, ring.last = self.size, self.last
        ring.events, ring.errors, ring.slow = self.events[:], self.errors[:], self.slow[:]
        return ring


def _burn(bad: int, events: int, budget: float) -> float:
    # No traffic spends no budget.
    return bad / events / budget if events else 0.0


class SloWindows:
    """The windowed counts behind the SLO gauges, and the burn rates computed from them.

    ``availability`` and ``latency_objective`` are percentages below 100, ``latency`` the
    threshold in seconds; an SLO whose number is 0 is off and is not reported. Times are the
    caller's monotonic clock in seconds: the recorder passes each request's end, the scrape its
    own reading of the same clock.
    """

    __slots__ = (
        "_availability_budget",
        "_errors",
        "_events",
        "_hours",
        "_latency",
        "_latency_budget",
        "_lock",
        "_minute",
        "_minute_end",
        "_minutes",
        "_slow",
    )

    def __init__(self, availability: float, latency: float, latency_objective: float) -> None:
        for name, percent in (("availability", availability), ("latency", latency_objective)):
            if not 0.0 <= percent < 100.0:
                raise ValueError(f"{name} objective must be >= 0 and < 100, not {percent!r}")
        if not (math.isfinite(latency) and latency >= 0.0):
            raise ValueError(f"latency threshold must be a finite number >= 0, not {latency!r}")
        # Budgets as fractions; 0 means that SLO is off.
        self._availability_budget = (100.0 - availability) / 100.0 if availability else 0.0
        self._latency_budget = (100.0 - latency_objective) / 100.0 if latency else 0.0
        self._latency = latency if latency else math.inf  # off: no request is slow
        self._minutes = _Ring(_FINE_SPAN // MINUTE)
        self._hours = _Ring(BUDGET_PERIOD // HOUR)
        self._lock = threading.Lock()
        self._minute = -1  # the minute the current counts belong to
        self._minute_end = -math.inf  # the first record() folds nothing and starts a minute
        self._events = 0
        self._errors = 0
        self._slow = 0

    @property
    def slos(self) -> tuple[str, ...]:
        """The SLOs that are on, as the ``slo`` label values."""
        on = ((AVAILABILITY, self._availability_budget), (LATENCY, self._latency_budget))
        return tuple(name for name, budget in on if budget)

    def record(self, now: float, status: int, latency: float) -> None:
        """A request that ended at ``now``, answered ``status``, after ``latency`` seconds
        (see the module docstring for which latency)."""
        if now >= self._minute_end:
            self._next_minute(now)
        self._events += 1
        if status >= 500:
            self._errors += 1
        if latency > self._latency:
            self._slow += 1

    def _next_minute(self, now: float) -> None:
        minute = int(now // MINUTE)
        with self._lock:
            if self._events:
                counts = (self._events, self._errors, self._slow)
                self._minutes.add(self._minute, *counts)
                self._hours.add(self._minute // MINUTE, *counts)
                self._events = self._errors = self._slow = 0
            self._minute = minute
            self._minute_end = float((minute + 1) * MINUTE)

    def report(self, now: float) -> tuple[list[tuple[str, str, float]], list[tuple[str, float]]]:
        """``(burn rates, budgets)`` at ``now``: ``(slo, window, burn rate)`` for every window
        and ``(slo, remaining)``, the share of the budget period's error budget left (1 when
        nothing was bad, negative once overspent), for each SLO that is on."""
        minute = int(now // MINUTE)
        hour = minute // MINUTE
        with self._lock:  # a consistent copy; the sums are made outside the lock
            minutes, hours = self._minutes.copy(), self._hours.copy()
            current_minute = self._minute
            current = (self._events, self._errors, self._slow)
        # (events, errors, slow) in each window, then in the budget period.
        totals: list[tuple[int, int, int]] = []
        for _, seconds in (*WINDOWS, ("", BUDGET_PERIOD)):
            if seconds <= _FINE_SPAN:
                span = seconds // MINUTE
                counts = minutes.sums(minute, span)
                inside = current_minute > minute - span
            else:
                span = seconds // HOUR
                counts = hours.sums(hour, span)
                inside = current_minute // MINUTE > hour - span
            if inside:
                counts = (counts[0] + current[0], counts[1] + current[1], counts[2] + current[2])
            totals.append(counts)
        burn_rates: list[tuple[str, str, float]] = []
        budgets: list[tuple[str, float]] = []
        for slo, budget, bad in (
            (AVAILABILITY, self._availability_budget, 1),  # bad: errors
            (LATENCY, self._latency_budget, 2),  # bad: slow
        ):
            if not budget:
                continue
            for (window, _), counts in zip(WINDOWS, totals[:-1], strict=True):
                burn_rates.append((slo, window, _burn(counts[bad], counts[0], budget)))
            period = totals[-1]
            budgets.append((slo, 1.0 - _burn(period[bad], period[0], budget)))
        return burn_rates, budgets
