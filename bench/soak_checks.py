"""The soak's verdicts: the client's and the app's ledgers joined, and the resource curve judged.

Every check returns a :class:`Check` with up to ``EXAMPLES`` violations spelled out: the
request's id, kind, times (seconds from the start of traffic), what the client got, every copy
of it the app received, and the proxy's own access-log line for it (attempts, response flags),
so a failure can be traced without rerunning.

Definitions (docs/reliability.md repeats them):

* Stalls: stretches in which the soak's own process did not run for more than 0.2 s (measured by
  a task that wakes every 50 ms). The app runs in that process, so during a stall the proxy saw
  an app as unresponsive as in a slow window; stalls count as fault windows below, and the report
  lists them so that they cannot hide anything unnoticed.
* A request *overlaps* a fault window when ``t_start <= window.end`` and ``t_end >=
  window.start``: client-side start and end, and the window's actual start and end, all on the
  one monotonic clock the soak process shares with its app.
* A 5xx is *explained* when its request overlaps any fault window; or when it is the proxy's
  own 503 "circuit breaker open" and its request overlaps a window extended by
  ``breaker_grace``: failures at the end of a window open the breaker, which then refuses for
  CIRCUIT_BREAKER_TIMEOUT after the last of them, and the last can come REQUEST_TIMEOUT after
  the window closed.
* A body cut short (head received, connection closed mid-body) is explained only when its
  request overlaps a reset, restart or stall window: the only faults that cut an answer the app
  began (a stall only if it outlasts the proxy's body stall limit).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soak_app import RESET, RESTART, STALL, AppRecord, FaultWindow
from bench.soak_client import (
    HANGUP,
    HANGUP_KINDS,
    KINDS,
    RESPONSE,
    TRUNCATED,
    UNSAFE_KINDS,
    ClientRecord,
)
from bench.soak_proc import Sample

EXAMPLES = 5
RSS_GROWTH_LIMIT_KIB = 10 * 1024
# A request must not reach the app after its client already had the final answer. The app and
# the clients share one event loop, whose iterations order events from different sockets only
# roughly, so "after" means by more than this.
GHOST_TOLERANCE = 0.25
BREAKER_OPEN_TEXT = "circuit breaker open"


@dataclass
class Check:
    name: str
    passed: bool
    summary: str
    violations: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Ledgers:
    """Both ledgers indexed for the joins, plus what the examples need."""

    client: list[ClientRecord]
    app: list[AppRecord]
    windows: list[FaultWindow]
    t0: float
    breaker_grace: float
    access: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_rid: dict[str, ClientRecord] = field(init=False)
    app_by_rid: dict[str, list[AppRecord]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_rid = {c.rid: c for c in self.client}
        self.app_by_rid = defaultdict(list)
        for a in self.app:
            self.app_by_rid[a.rid].append(a)

    def rel(self, t: float) -> float:
        return round(t - self.t0, 3)

    def overlapping(self, c: ClientRecord, tail: float = 0.0) -> list[FaultWindow]:
        return [
            w
            for w in self.windows
            if w.happened and c.t_start <= w.end + tail and c.t_end >= w.start
        ]

    def example(self, c: ClientRecord | None, rid: str, why: str) -> dict[str, Any]:
        ex: dict[str, Any] = {"rid": rid, "why": why}
        if c is not None:
            ex.update(
                kind=c.kind,
                method=c.method,
                start=self.rel(c.t_start),
                end=self.rel(c.t_end),
                outcome=c.outcome,
                status=c.status,
                detail=c.detail[:160],
            )
            ex["windows"] = [
                f"{w.kind}@{self.rel(w.start)}-{self.rel(w.end)}" for w in self.overlapping(c)
            ]
        ex["app_saw"] = [
            {"t": self.rel(a.t_head), "conn": a.conn, "complete": a.complete, "action": a.action}
            for a in self.app_by_rid.get(rid, [])
        ]
        ex["proxy_log"] = self.proxy_log(rid)
        if c is not None and c.prev_rid:
            # What came before on the same connection: a connection left in a bad state shows
            # up in the request after the one that broke it.
            prev = self.by_rid[c.prev_rid]
            ex["previous_on_connection"] = {
                "rid": prev.rid,
                "kind": prev.kind,
                "end": self.rel(prev.t_end),
                "outcome": prev.outcome,
                "status": prev.status,
                "detail": prev.detail[:80],
                "proxy_log": self.proxy_log(prev.rid),
            }
        return ex

    def proxy_log(self, rid: str) -> dict[str, Any] | None:
        """The proxy's access-log line for ``rid``: None if it never logged the request."""
        line = self.access.get(rid)
        if line is None:
            return None
        return {k: line.get(k) for k in ("status", "attempts", "flags", "duration_ms")}


def load_access_log(path: Path) -> dict[str, dict[str, Any]]:
    """The proxy's access log by request id (the proxy keeps the client's X-Request-ID)."""
    lines: dict[str, dict[str, Any]] = {}
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("request_id"), str):
                    lines[entry["request_id"]] = entry
    except OSError:
        pass
    return lines


def _result(name: str, ok_text: str, bad: list[dict[str, Any]], total_bad: int) -> Check:
    passed = total_bad == 0
    summary = ok_text if passed else f"{total_bad} violation(s)"
    return Check(name, passed, summary, total_bad, bad[:EXAMPLES])


def one_response_each(led: Ledgers) -> Check:
    """Every request ended in exactly one complete response carrying its own id; the only other
    endings allowed are a hang-up the client made, or a body cut short by a reset or restart."""
    bad: list[dict[str, Any]] = []
    n = 0
    truncated_ok = 0
    for c in led.client:
        why = ""
        if c.outcome == RESPONSE:
            if c.resp_rid != c.rid:
                why = f"response carries X-Request-ID {c.resp_rid!r}"
        elif c.outcome == HANGUP and c.kind in HANGUP_KINDS:
            pass
        elif c.outcome == TRUNCATED and c.kind not in HANGUP_KINDS:
            if any(w.kind in (RESET, RESTART, STALL) for w in led.overlapping(c)):
                truncated_ok += 1
            else:
                why = "body cut short outside any reset/restart/stall window"
        else:
            why = f"ended as {c.outcome}"
        if why:
            n += 1
            if len(bad) < EXAMPLES:
                bad.append(led.example(c, c.rid, why))
    return _result(
        "one-response-each",
        f"{len(led.client)} requests, each one answer or a client hang-up "
        f"({truncated_ok} bodies cut short inside reset/restart windows)",
        bad,
        n,
    )


def statuses_expected(led: Ledgers) -> Check:
    """Every complete answer is a 200 or a 5xx (the 5xx are judged by no-unexplained-5xx)."""
    bad = [c for c in led.client if c.outcome == RESPONSE and c.status != 200 and c.status < 500]
    return _result(
        "statuses-200-or-5xx",
        "no 1xx/3xx/4xx answers",
        [led.example(c, c.rid, f"status {c.status}") for c in bad[:EXAMPLES]],
        len(bad),
    )


def at_most_once(led: Ledgers, kinds: frozenset[str], name: str, what: str) -> Check:
    """No request of these kinds reached the app more than once."""
    bad: list[dict[str, Any]] = []
    n = 0
    checked = 0
    for c in led.client:
        if c.kind not in kinds:
            continue
        checked += 1
        copies = len(led.app_by_rid.get(c.rid, []))
        if copies > 1:
            n += 1
            if len(bad) < EXAMPLES:
                bad.append(led.example(c, c.rid, f"reached the app {copies} times"))
    return _result(name, f"{checked} {what}, none reached the app twice", bad, n)


def app_saw_only_sent(led: Ledgers) -> Check:
    """Everything the app received was a request a client sent, as sent, while it was waiting."""
    bad: list[dict[str, Any]] = []
    n = 0
    for a in led.app:
        c = led.by_rid.get(a.rid)
        why = ""
        if c is None:
            why = f"unknown id (path kind {a.kind!r})"
        elif a.method != c.method or a.kind != KINDS[c.kind][1]:
            why = f"arrived as {a.method} /soak/{a.kind}/, sent as {c.method} ({c.kind})"
        elif a.header_rid != a.rid:
            why = f"X-Request-ID arrived as {a.header_rid!r}"
        elif a.complete and c.kind == "partial":
            why = "a complete body arrived, but the client sent only part of it"
        elif a.complete and a.body_sha != c.sent_sha:
            why = f"body altered ({a.body_len} bytes arrived, {c.sent_len} sent)"
        elif c.kind not in HANGUP_KINDS and a.t_head > c.t_end + GHOST_TOLERANCE:
            why = f"arrived {a.t_head - c.t_end:.3f}s after the client had its answer"
        if why:
            n += 1
            if len(bad) < EXAMPLES:
                bad.append(led.example(c, a.rid, why))
    return _result(
        "app-saw-only-what-was-sent",
        f"{len(led.app)} arrivals, all sent by a client, intact, none after its answer",
        bad,
        n,
    )


def no_unexplained_5xx(led: Ledgers) -> tuple[Check, dict[str, int]]:
    explained: Counter[str] = Counter()
    bad: list[dict[str, Any]] = []
    n = 0
    for c in led.client:
        if c.outcome != RESPONSE or c.status < 500:
            continue
        windows = led.overlapping(c)
        if windows:
            kinds = "+".join(sorted({w.kind for w in windows}))
            explained[f"{c.status} in {kinds} window"] += 1
            continue
        if (
            c.status == 503
            and BREAKER_OPEN_TEXT in c.detail
            and led.overlapping(c, led.breaker_grace)
        ):
            explained["503 breaker still open after a window"] += 1
            continue
        n += 1
        if len(bad) < EXAMPLES:
            bad.append(led.example(c, c.rid, f"{c.status} while the app was healthy"))
    total = sum(explained.values())
    return (
        _result("no-unexplained-5xx", f"{total} 5xx, every one inside a fault window", bad, n),
        dict(explained),
    )


def bodies_intact(led: Ledgers) -> Check:
    bad: list[dict[str, Any]] = []
    n = 0
    oks = 0
    for c in led.client:
        if c.outcome != RESPONSE or c.status != 200:
            continue
        why = ""
        if not c.body_ok:
            why = c.detail or "body not as expected"
        elif not any(a.complete for a in led.app_by_rid.get(c.rid, [])):
            why = "a 200 the app has no complete request for"
        if why:
            n += 1
            if len(bad) < EXAMPLES:
                bad.append(led.example(c, c.rid, why))
        else:
            oks += 1
    return _result("bodies-intact", f"{oks} 200s, every byte as the app sent it, both ways", bad, n)


def faults_took_effect(windows: list[FaultWindow]) -> Check:
    """Not a finding about the proxy: a window that hit nothing would make the run vacuous."""
    scheduled = [w for w in windows if w.kind != STALL]
    bad = [
        {"kind": w.kind, "planned": [w.planned_start, w.planned_end], "hits": dict(w.hits)}
        for w in scheduled
        if not w.happened or (w.kind != RESTART and not w.hits)
    ]
    return _result(
        "faults-took-effect", f"{len(scheduled)} fault windows, each hit requests", bad, len(bad)
    )


def ledger_checks(led: Ledgers) -> tuple[list[Check], dict[str, int]]:
    five, explained = no_unexplained_5xx(led)
    checks = [
        faults_took_effect(led.windows),
        one_response_each(led),
        statuses_expected(led),
        at_most_once(
            led, UNSAFE_KINDS, "post-without-key-at-most-once", "POSTs without Idempotency-Key"
        ),
        at_most_once(
            led, frozenset({"put"}), "oversize-put-at-most-once", "PUTs over the replay buffer"
        ),
        app_saw_only_sent(led),
        five,
        bodies_intact(led),
    ]
    return checks, explained


def breaker_tails(led: Ledgers, windows: list[FaultWindow]) -> list[float | None]:
    """Per window (in time order): how long after its end the proxy still refused with "circuit
    breaker open" (the start of the last such request before the next window), or None."""
    refused = sorted(
        c.t_start
        for c in led.client
        if c.outcome == RESPONSE and c.status == 503 and BREAKER_OPEN_TEXT in c.detail
    )
    tails: list[float | None] = []
    for i, w in enumerate(windows):
        following = windows[i + 1].start if i + 1 < len(windows) else float("inf")
        after = [t for t in refused if w.end < t < following]
        tails.append(round(after[-1] - w.end, 3) if after else None)
    return tails


# -- resources ----------------------------------------------------------------------------------


def _thirds(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The first and last thirds (by time) of the traffic phase after the warm-up."""
    if len(samples) < 3:
        return samples, samples
    lo, hi = samples[0].t, samples[-1].t
    third = (hi - lo) / 3
    first = [s for s in samples if s.t <= lo + third]
    last = [s for s in samples if s.t >= hi - third]
    return first, last


def resource_checks(
    baseline: Sample,
    traffic: list[Sample],
    settled: list[Sample],
    warmup: float,
    traffic_end: float,
) -> list[Check]:
    checks: list[Check] = []
    steady = [s for s in traffic if s.t >= warmup] or traffic
    first, last = _thirds(steady)
    if first and last:
        a = max(s.rss_kib for s in first)
        b = max(s.rss_kib for s in last)
        growth = b - a
        checks.append(
            Check(
                "rss-flat",
                growth <= RSS_GROWTH_LIMIT_KIB,
                f"max RSS first third {a / 1024:.1f} MiB, last third {b / 1024:.1f} MiB "
                f"({growth / 1024:+.1f} MiB; limit +{RSS_GROWTH_LIMIT_KIB / 1024:.0f})",
                int(growth > RSS_GROWTH_LIMIT_KIB),
            )
        )
        ta = max(s.threads for s in first)
        tb = max(s.threads for s in last)
        checks.append(
            Check(
                "threads-flat",
                tb <= ta,
                f"max threads first third {ta}, last third {tb}",
                int(tb > ta),
            )
        )
    end = settled[-1] if settled else None
    if end is None or end.fds < 0:
        why = "the proxy could not be sampled after traffic"
        checks.append(Check("fds-back-to-baseline", False, why, 1))
        checks.append(Check("in-flight-back-to-zero", False, why, 1))
        return checks
    peak = max((s.fds for s in traffic), default=baseline.fds)
    checks.append(
        Check(
            "fds-back-to-baseline",
            end.fds <= baseline.fds,
            f"baseline {baseline.fds}, peak {peak} under traffic, {end.fds} at "
            f"{end.t - traffic_end:.1f}s after traffic",
            int(end.fds > baseline.fds),
        )
    )
    zero = end.in_flight == 0 and end.downstream == 0
    checks.append(
        Check(
            "in-flight-back-to-zero",
            zero,
            f"sidecar_requests_in_flight {end.in_flight:g}, "
            f"sidecar_downstream_connections {end.downstream:g} after traffic",
            int(not zero),
        )
    )
    return checks
