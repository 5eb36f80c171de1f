"""The SLO windows: what counts, which buckets each window sums, burn rates and the budget."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.fakeclock import FakeClock

from sidecar_proxy.observe import record as X
from sidecar_proxy.observe.metrics import Metrics, SloSeries
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.record import Record
from sidecar_proxy.observe.recorder import Recorder
from sidecar_proxy.observe.slo import (
    BUDGET_PERIOD,
    DAY,
    HOUR,
    MINUTE,
    WINDOWS,
    SloWindows,
)

T0 = 1_000_000 * MINUTE  # a monotonic reading at the start of a minute
WINDOW_NAMES = [name for name, _ in WINDOWS]


def burn_rates(w: SloWindows, now: float, slo: str = "availability") -> dict[str, float]:
    rates, _ = w.report(now)
    return {window: rate for s, window, rate in rates if s == slo}


def budget(w: SloWindows, now: float, slo: str = "availability") -> float:
    _, budgets = w.report(now)
    [left] = [left for s, left in budgets if s == slo]
    return left


def traffic(w: SloWindows, now: float, good: int, bad: int) -> None:
    for _ in range(good):
        w.record(now, 200, 0.01)
    for _ in range(bad):
        w.record(now, 503, 0.01)


def test_no_traffic_burns_nothing() -> None:
    w = SloWindows(99.9, 0.3, 99.0)
    assert burn_rates(w, T0) == dict.fromkeys(WINDOW_NAMES, 0.0)
    assert budget(w, T0) == budget(w, T0, "latency") == 1.0


def test_burn_rate_is_the_bad_share_over_the_budget() -> None:
    w = SloWindows(99.9, 0.0, 99.0)
    traffic(w, T0 + 1, good=990, bad=10)  # 1 % bad against a 0.1 % budget
    rates = burn_rates(w, T0 + 30)
    assert rates.keys() == set(WINDOW_NAMES)
    assert all(rate == pytest.approx(10.0) for rate in rates.values())
    assert budget(w, T0 + 30) == pytest.approx(-9.0)  # overspent ninefold


def test_what_counts_as_an_error() -> None:
    w = SloWindows(99.0, 0.0, 99.0)
    for status in (200, 204, 301, 404, 429, 499, 500, 502, 503, 504, 599):
        w.record(T0, status, 0.0)
    # 5 of 11 are 5xx: a 499 (the client hung up) and 4xx are good events.
    assert burn_rates(w, T0)["5m"] == pytest.approx(5 / 11 / 0.01)


def test_latency_counts_requests_slower_than_the_threshold() -> None:
    w = SloWindows(0.0, 0.3, 99.0)
    for latency in (0.1, 0.3, 0.30001, 2.0):  # exactly the threshold is fast
        w.record(T0, 200, latency)
    w.record(T0, 503, 0.01)  # an error, but fast: the availability SLO's business
    assert burn_rates(w, T0, "latency")["1h"] == pytest.approx(2 / 5 / 0.01)
    assert budget(w, T0, "latency") == pytest.approx(1 - 40.0)


@pytest.mark.parametrize(
    ("availability", "latency", "reported"),
    [
        (99.9, 0.0, ["availability"]),
        (0.0, 0.3, ["latency"]),
        (99.9, 0.3, ["availability", "latency"]),
    ],
)
def test_only_the_slos_that_are_on_are_reported(
    availability: float, latency: float, reported: list[str]
) -> None:
    w = SloWindows(availability, latency, 99.0)
    assert list(w.slos) == reported
    rates, budgets = w.report(T0)
    assert [s for s, _ in budgets] == reported
    assert [(s, window) for s, window, _ in rates] == [
        (s, n) for s in reported for n in WINDOW_NAMES
    ]


def test_a_minute_stays_in_the_5m_window_for_five_minute_boundaries() -> None:
    w = SloWindows(99.0, 0.0, 99.0)
    traffic(w, T0 + 59, good=0, bad=1)
    # Reported before and after later traffic folds the minute into the ring: counted once.
    assert burn_rates(w, T0 + 4 * MINUTE + 59)["5m"] == pytest.approx(100.0)
    traffic(w, T0 + 4 * MINUTE, good=1, bad=0)
    assert burn_rates(w, T0 + 4 * MINUTE + 59)["5m"] == pytest.approx(50.0)
    rates = burn_rates(w, T0 + 5 * MINUTE)
    assert rates["5m"] == 0.0  # minute T0 has left the window, the good minute has not
    assert rates["30m"] == pytest.approx(50.0)


def test_errors_leave_each_window_in_turn() -> None:
    w = SloWindows(99.0, 0.0, 99.0)
    traffic(w, T0, good=1, bad=1)
    traffic(w, T0 + MINUTE, good=1, bad=0)  # folds the first minute
    expected = {
        10 * MINUTE: {"5m": 0, "30m": 1, "1h": 1, "2h": 1, "6h": 1, "1d": 1, "3d": 1},
        90 * MINUTE: {"5m": 0, "30m": 0, "1h": 0, "2h": 1, "6h": 1, "1d": 1, "3d": 1},
        7 * HOUR: {"5m": 0, "30m": 0, "1h": 0, "2h": 0, "6h": 0, "1d": 1, "3d": 1},
        2 * DAY: {"5m": 0, "30m": 0, "1h": 0, "2h": 0, "6h": 0, "1d": 0, "3d": 1},
        4 * DAY: dict.fromkeys(WINDOW_NAMES, 0),
    }
    for later, inside in expected.items():
        rates = burn_rates(w, T0 + later)
        assert {name: int(rate > 0) for name, rate in rates.items()} == inside, later
    assert budget(w, T0 + 29 * DAY) < 1.0
    assert budget(w, T0 + 31 * DAY) == 1.0


def test_a_long_idle_stretch_leaves_nothing_behind() -> None:
    w = SloWindows(99.0, 0.0, 99.0)
    for minute in range(0, 3 * 24 * 60, 7):  # three days of errors, one minute in seven
        traffic(w, T0 + minute * MINUTE, good=0, bad=3)
    later = T0 + 40 * DAY
    traffic(w, later, good=5, bad=0)
    traffic(w, later + MINUTE, good=5, bad=0)
    assert burn_rates(w, later + MINUTE) == dict.fromkeys(WINDOW_NAMES, 0.0)
    assert budget(w, later + MINUTE) == 1.0


# A request: (seconds since the previous one, status 5xx?, slow?). The gaps mix the same
# minute, hours, and the jumps past a ring's length (6 h of minutes, 30 days of hours) that
# leave stale slots to clear; the report comes soon after the last request (the window edges)
# or days later.
requests = st.lists(
    st.tuples(
        st.one_of(
            st.integers(0, 90),
            st.integers(0, 3 * HOUR),
            st.integers(5 * HOUR, 13 * HOUR),
            st.integers(0, 5 * DAY),
            st.integers(20 * DAY, 40 * DAY),
        ),
        st.booleans(),
        st.booleans(),
    ),
    max_size=120,
)
report_after = st.one_of(st.integers(0, 12 * MINUTE), st.integers(0, 2 * DAY))


@settings(max_examples=200, deadline=None)
@given(requests, report_after)
def test_every_window_sums_exactly_the_buckets_it_covers(
    script: list[tuple[int, bool, bool]], report_after: int
) -> None:
    # The reference: every request kept, each window counting those whose minute (up to 6 h)
    # or hour (beyond) lies among the window's last buckets. Errors and slowness are chosen
    # independently, so the two SLOs check each other's columns too.
    w = SloWindows(99.0, 1.0, 90.0)
    now = float(T0)
    seen: list[tuple[float, bool, bool]] = []
    for gap, error, slow in script:
        now += gap
        w.record(now, 500 if error else 200, 2.0 if slow else 0.5)
        seen.append((now, error, slow))
    now += report_after
    rates, budgets = w.report(now)
    for name, seconds in (*WINDOWS, ("period", BUDGET_PERIOD)):
        width = MINUTE if seconds <= 6 * HOUR else HOUR
        newest = int(now // width)
        inside = [r for r in seen if int(r[0] // width) > newest - seconds // width]
        events = len(inside)
        bad = sum(r[1] for r in inside)
        slow_ones = sum(r[2] for r in inside)
        want_availability = bad / events / 0.01 if events else 0.0
        want_latency = slow_ones / events / 0.1 if events else 0.0
        if name == "period":
            got = dict(budgets)
            assert got["availability"] == pytest.approx(1 - want_availability)
            assert got["latency"] == pytest.approx(1 - want_latency)
        else:
            got_rates = {(s, window): rate for s, window, rate in rates}
            assert got_rates[("availability", name)] == pytest.approx(want_availability)
            assert got_rates[("latency", name)] == pytest.approx(want_latency)


@pytest.mark.parametrize(
    ("availability", "latency", "latency_objective"),
    [
        (100.0, 0.0, 99.0),
        (-1.0, 0.0, 99.0),
        (math.nan, 0.0, 99.0),
        (99.9, -1.0, 99.0),
        (99.9, math.inf, 99.0),
        (99.9, 0.3, 100.0),
    ],
)
def test_nonsense_objectives_are_refused(
    availability: float, latency: float, latency_objective: float
) -> None:
    with pytest.raises(ValueError):
        SloWindows(availability, latency, latency_objective)


# --- the gauges ------------------------------------------------------------------------------


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_gauges_are_computed_when_scraped() -> None:
    clock = FakeClock(T0)
    w = SloWindows(99.5, 0.0, 99.0)
    registry = CollectorRegistry()
    registry.register(SloSeries(w, clock))
    traffic(w, T0, good=98, bad=2)  # 2 % against 0.5 %
    samples = scrape(registry)
    for name in WINDOW_NAMES:
        key = ("sidecar_slo_burn_rate", frozenset({("slo", "availability"), ("window", name)}))
        assert samples[key] == pytest.approx(4.0)
    key = ("sidecar_slo_error_budget_remaining", frozenset({("slo", "availability")}))
    assert samples[key] == pytest.approx(-3.0)
    clock.now += 10 * MINUTE  # the scrape's own clock moves the windows
    key = ("sidecar_slo_burn_rate", frozenset({("slo", "availability"), ("window", "5m")}))
    assert scrape(registry)[key] == 0.0


def test_without_an_slo_the_gauges_are_declared_without_samples() -> None:
    metrics = Metrics()
    assert metrics.slo is None
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE sidecar_slo_burn_rate gauge" in text
    assert "# TYPE sidecar_slo_error_budget_remaining gauge" in text
    assert not [k for k in scrape(metrics.registry) if k[0].startswith("sidecar_slo")]


def exchange(status: int, ttfb: float | None, duration: float, flags: list[str]) -> Record:
    start = time.monotonic()
    ex = Record(start, time.time(), "10.0.0.1:1234", "HTTP/1.1")
    ex.method, ex.path, ex.status, ex.ttfb = "GET", "/x", status, ttfb
    ex.end = start + duration
    ex.flags = flags
    return ex


def test_the_recorder_feeds_every_request_but_the_sidecars_health_probes() -> None:
    metrics = Metrics(SloWindows(99.0, 0.3, 75.0))
    recorder = Recorder(metrics, PathLabeler(10), None)
    for ex in (
        exchange(200, 0.01, 0.02, []),
        exchange(200, 0.01, 5.0, []),  # a long body after a fast head: fast
        exchange(200, 0.5, 0.6, []),  # a slow head: slow
        exchange(504, None, 1.0, [X.UPSTREAM_TIMEOUT]),  # no head: its duration, slow
        exchange(499, None, 0.1, [X.DOWNSTREAM_DISCONNECT]),  # gave up quickly: fast, no error
        exchange(503, None, 0.0, [X.LOCAL_REPLY]),  # /ready while draining: not counted
    ):
        recorder.started()
        recorder.finished(ex)
    samples = scrape(metrics.registry)
    availability = frozenset({("slo", "availability"), ("window", "5m")})
    latency = frozenset({("slo", "latency"), ("window", "5m")})
    assert samples[("sidecar_slo_burn_rate", availability)] == pytest.approx(1 / 5 / 0.01)
    assert samples[("sidecar_slo_burn_rate", latency)] == pytest.approx(2 / 5 / 0.25)
