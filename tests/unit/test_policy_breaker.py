"""The circuit breaker: consecutive failures, slow calls, lazy half-open, bounded probes, stale
verdicts."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fakeclock import FakeClock

from sidecar_proxy.policy.breaker import (
    BreakerState,
    CircuitBreaker,
    OpenReason,
    SlowCallWindow,
    slow_call_limit,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
FAILURES, SLOW_CALLS = OpenReason.FAILURES, OpenReason.SLOW_CALLS
OPEN_FOR = 30.0
SLOW = 2.0  # slow_call_duration, where the slow-call rule is on
FAST, SLUGGISH = 0.5, 2.5  # a call's duration either side of it


class CountingClock(FakeClock):
    """A fake clock that counts how often it is read."""

    __slots__ = ("reads",)

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class Harness:
    """A breaker on a fake clock that logs its transitions, checking each one as it is made.

    ``slow_after`` > 0 turns the slow-call rule on, with ``rate`` and ``window``.
    """

    def __init__(
        self,
        threshold: int = 3,
        probes: int = 1,
        *,
        slow_after: float = 0.0,
        rate: float = 0.5,
        window: int = 4,
    ) -> None:
        self.clock = CountingClock(1000.0)
        self.transitions: list[tuple[BreakerState, BreakerState]] = []
        self.reasons: list[OpenReason] = []
        self.breaker = CircuitBreaker(
            threshold,
            OPEN_FOR,
            probes,
            self.clock,
            self.on_transition,
            slow_call_duration=slow_after,
            slow_call_rate=rate,
            window=window,
        )

    def on_transition(
        self, old: BreakerState, new: BreakerState, reason: OpenReason | None
    ) -> None:
        # Called synchronously, with the breaker already in its new state; a reason exactly
        # when it opens.
        assert self.breaker.state is new
        assert (reason is not None) == (new is OPEN)
        self.transitions.append((old, new))
        if reason is not None:
            self.reasons.append(reason)

    def call(self, seconds: float, *, failed: bool = False) -> None:
        """One admitted attempt that takes ``seconds`` and ends with its verdict."""
        assert self.breaker.allow()
        started = self.clock.now
        self.clock.now += seconds
        if failed:
            self.breaker.record_failure(started)
        else:
            self.breaker.record_success(started)

    def calls(self, pattern: str) -> None:
        """One call per letter: ``f`` fast, ``s`` slow; upper case for a failure."""
        for c in pattern:
            self.call(SLUGGISH if c in "sS" else FAST, failed=c.isupper())

    def trip(self) -> None:
        """Open the breaker with consecutive failures."""
        while self.breaker.state is CLOSED:
            assert self.breaker.allow()
            self.breaker.record_failure(self.clock.now)

    def half_open(self) -> None:
        """Open the breaker and let the first probe in; that probe is left in flight."""
        self.trip()
        self.clock.now += OPEN_FOR
        assert self.breaker.allow()
        assert self.breaker.state is HALF_OPEN


def test_gauge_values_are_the_seeds() -> None:
    assert [int(s) for s in (CLOSED, OPEN, HALF_OPEN)] == [0, 1, 2]


def test_opens_after_exactly_threshold_consecutive_failures() -> None:
    h = Harness(threshold=3)
    for _ in range(2):
        assert h.breaker.allow()
        h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is CLOSED
    assert h.transitions == []
    assert h.breaker.allow()
    h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is OPEN
    assert h.transitions == [(CLOSED, OPEN)]


def test_a_success_in_between_resets_the_count() -> None:
    h = Harness(threshold=3)
    for outcome in "FFSFFSFF":
        assert h.breaker.allow()
        if outcome == "F":
            h.breaker.record_failure(h.clock.now)
        else:
            h.breaker.record_success(h.clock.now)
    assert h.breaker.state is CLOSED
    h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is OPEN


def test_the_seeds_cumulative_failure_count_is_not_reproduced() -> None:
    # The seed counted failures without resetting on success: one failure in two requests
    # opened its breaker after `threshold` failures. Here that never opens it.
    h = Harness(threshold=5)
    for _ in range(1000):
        assert h.breaker.allow()
        h.breaker.record_failure(h.clock.now)
        h.breaker.record_success(h.clock.now)
    assert h.breaker.state is CLOSED
    assert h.transitions == []


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 6))
def test_opens_exactly_when_a_run_of_threshold_failures_completes(
    outcomes: list[bool], threshold: int
) -> None:
    h = Harness(threshold=threshold)
    run = 0
    for failed in outcomes:
        assert h.breaker.allow()
        if failed:
            h.breaker.record_failure(h.clock.now)
            run += 1
        else:
            h.breaker.record_success(h.clock.now)
            run = 0
        if run == threshold:
            assert h.breaker.state is OPEN
            return
        assert h.breaker.state is CLOSED
    assert h.transitions == []


def test_rejects_while_open_until_open_for_has_passed() -> None:
    h = Harness()
    h.trip()
    opened = h.clock.now
    for elapsed in (0.0, 1.0, OPEN_FOR / 2, OPEN_FOR - 0.001):
        h.clock.now = opened + elapsed
        assert not h.breaker.allow()
        assert h.breaker.state is OPEN
    assert h.transitions == [(CLOSED, OPEN)]


def test_open_to_half_open_is_made_by_the_next_allow_and_reported() -> None:
    h = Harness()
    h.trip()
    h.clock.now += OPEN_FOR + 5.0
    # Time alone changes nothing: no probe has gone yet.
    assert h.breaker.state is OPEN
    assert h.transitions == [(CLOSED, OPEN)]
    assert h.breaker.allow()
    assert h.breaker.state is HALF_OPEN
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_only_half_open_probes_concurrent_probes() -> None:
    h = Harness(probes=2)
    h.half_open()
    assert h.breaker.allow()
    assert not h.breaker.allow()
    assert not h.breaker.allow()


def test_release_frees_a_probe_slot_and_counts_nothing() -> None:
    h = Harness(probes=1)
    h.half_open()
    assert not h.breaker.allow()
    h.breaker.release()
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.allow()
    assert not h.breaker.allow()


def test_a_probe_failure_reopens_with_a_fresh_timer() -> None:
    h = Harness(probes=2)
    h.half_open()
    h.clock.now += 7.0
    failed_at = h.clock.now
    h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is OPEN
    assert h.transitions[-1] == (HALF_OPEN, OPEN)
    assert h.breaker.retry_after() == OPEN_FOR
    h.clock.now = failed_at + OPEN_FOR - 0.001
    assert not h.breaker.allow()
    h.clock.now = failed_at + OPEN_FOR
    assert h.breaker.allow()
    assert h.breaker.state is HALF_OPEN


def test_half_open_probes_successes_close_it() -> None:
    h = Harness(probes=3)
    h.half_open()
    assert h.breaker.allow()
    assert h.breaker.allow()
    h.breaker.record_success(h.clock.now)
    h.breaker.record_success(h.clock.now)
    assert h.breaker.state is HALF_OPEN
    h.breaker.record_success(h.clock.now)
    assert h.breaker.state is CLOSED
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_closed_breaker_needs_a_full_run_of_failures_again() -> None:
    h = Harness(threshold=2)
    h.half_open()
    h.breaker.record_success(h.clock.now)
    assert h.breaker.state is CLOSED
    h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is CLOSED
    h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is OPEN


def test_retry_after() -> None:
    h = Harness()
    assert h.breaker.retry_after() == 0.0
    h.trip()
    assert h.breaker.retry_after() == OPEN_FOR
    h.clock.now += 12.5
    assert h.breaker.retry_after() == OPEN_FOR - 12.5
    h.clock.now += OPEN_FOR
    assert h.breaker.retry_after() == 0.0  # overdue, still OPEN until the next allow()
    assert h.breaker.allow()
    assert h.breaker.retry_after() == 0.0  # HALF_OPEN


def test_threshold_zero_disables_the_breaker() -> None:
    h = Harness(threshold=0)
    for _ in range(1000):
        assert h.breaker.allow()
        h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is CLOSED
    assert h.breaker.retry_after() == 0.0
    assert h.transitions == []


def test_failures_of_attempts_in_flight_when_it_opened_do_not_extend_the_open_period() -> None:
    h = Harness(threshold=3)
    for _ in range(10):  # ten attempts admitted while CLOSED
        assert h.breaker.allow()
    for _ in range(3):
        h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is OPEN
    h.clock.now += OPEN_FOR - 1.0
    for _ in range(7):  # the other seven fail late
        h.breaker.record_failure(h.clock.now)
    assert h.breaker.retry_after() == 1.0
    h.clock.now += 1.0
    assert h.breaker.allow()
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_a_late_success_does_not_close_an_open_breaker() -> None:
    h = Harness()
    h.trip()
    h.breaker.record_success(h.clock.now)
    assert h.breaker.state is OPEN
    assert not h.breaker.allow()


def test_a_late_verdict_with_no_probe_in_flight_is_ignored_in_half_open() -> None:
    h = Harness(probes=1)
    h.half_open()
    h.breaker.release()  # the probe's client hung up: no probe in flight now
    h.breaker.record_success(h.clock.now)  # a stale attempt from before the breaker opened
    assert h.breaker.state is HALF_OPEN
    h.breaker.record_failure(h.clock.now)  # another stale one
    assert h.breaker.state is HALF_OPEN
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert h.breaker.allow()


def test_probes_outstanding_when_it_reopens_are_forgotten() -> None:
    h = Harness(probes=2)
    h.half_open()
    assert h.breaker.allow()
    h.breaker.record_failure(h.clock.now)  # first probe fails: OPEN again
    h.breaker.record_success(h.clock.now)  # the second probe answers afterwards
    assert h.breaker.state is OPEN
    h.clock.now += OPEN_FOR
    assert h.breaker.allow()
    assert h.breaker.allow()  # both slots are free in the new half-open phase
    assert not h.breaker.allow()


@pytest.mark.parametrize(
    ("threshold", "open_for", "probes"),
    [(-1, OPEN_FOR, 1), (3, -1.0, 1), (3, math.nan, 1), (3, OPEN_FOR, 0)],
)
def test_nonsense_settings_are_refused(threshold: int, open_for: float, probes: int) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, open_for, probes, FakeClock(0.0))


@pytest.mark.parametrize(
    ("threshold", "open_for", "probes"),
    [(-1, OPEN_FOR, 1), (3, -1.0, 1), (3, math.nan, 1), (3, OPEN_FOR, 0)],
)
def test_nonsense_settings_are_refused_on_reconfigure(
    threshold: int, open_for: float, probes: int
) -> None:
    breaker = CircuitBreaker(3, OPEN_FOR, 1, FakeClock(0.0))
    with pytest.raises(ValueError):
        breaker.reconfigure(threshold, open_for, probes)


def test_reconfigure_keeps_the_state_and_the_open_period() -> None:
    h = Harness(threshold=3)
    h.trip()
    opened_at = h.clock.now
    h.breaker.reconfigure(10, OPEN_FOR * 10, 1)
    assert h.breaker.state is OPEN
    h.clock.now = opened_at + OPEN_FOR  # the open period running keeps its end
    assert h.breaker.allow()
    assert h.breaker.state is HALF_OPEN
    h.breaker.record_success(h.clock.now)
    assert h.breaker.state is CLOSED
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_run_past_a_lowered_threshold_opens_on_its_next_failure() -> None:
    h = Harness(threshold=10)
    for _ in range(5):
        assert h.breaker.allow()
        h.breaker.record_failure(h.clock.now)
    h.breaker.reconfigure(3, OPEN_FOR, 1)
    assert h.breaker.state is CLOSED  # the reload itself says nothing about the app
    assert h.breaker.allow()
    h.breaker.record_failure(h.clock.now)
    assert h.breaker.state is OPEN


def test_fewer_probes_needed_after_a_reload_closes_on_the_next_success() -> None:
    h = Harness(threshold=1, probes=3)
    h.half_open()
    assert h.breaker.allow()
    h.breaker.record_success(h.clock.now)
    h.breaker.record_success(h.clock.now)  # two of three probes succeeded
    assert h.breaker.state is HALF_OPEN
    h.breaker.reconfigure(1, OPEN_FOR, 1)
    assert h.breaker.allow()
    h.breaker.record_success(h.clock.now)
    assert h.breaker.state is CLOSED


# A data path that keeps the contract: each step starts an attempt (if allowed), ends one in
# flight with a verdict, or lets some seconds pass.
# A data path that keeps the contract: each step starts an attempt (if allowed), ends the oldest
# in flight with a verdict, or lets some seconds pass.
steps = st.lists(
    st.one_of(st.sampled_from(["start", "success", "failure", "release"]), st.integers(1, 40)),
    max_size=80,
)


@given(steps, st.integers(1, 4), st.integers(1, 3), st.sampled_from([0.0, 20.0]))
def test_no_probe_slot_leaks_whatever_the_interleaving(
    script: list[str | int], threshold: int, probes: int, slow_after: float
) -> None:
    h = Harness(threshold=threshold, probes=probes, slow_after=slow_after, window=3)

    def release(started: float) -> None:
        h.breaker.release()

    verdicts: dict[str, Callable[[float], None]] = {
        "success": h.breaker.record_success,
        "failure": h.breaker.record_failure,
        "release": release,
    }
    in_flight: list[float] = []  # when each attempt in flight was admitted
    for step in script:
        if isinstance(step, int):
            h.clock.now += step
        elif step == "start":
            if h.breaker.allow():
                in_flight.append(h.clock.now)
        elif in_flight:
            verdicts[step](in_flight.pop(0))
    for _ in in_flight:
        h.breaker.release()
    # Every transition was reported, in a chain that ends where the breaker is.
    state = CLOSED
    for old, new in h.transitions:
        assert old is state and new is not old
        state = new
    assert state is h.breaker.state
    # With nothing in flight, every probe slot must be free once the open period is over.
    h.clock.now += OPEN_FOR
    assert all(h.breaker.allow() for _ in range(probes if state is not CLOSED else 1))


# --- the slow-call rule ----------------------------------------------------------------------


def test_the_slow_call_rule_is_off_by_default_and_then_never_reads_the_clock() -> None:
    h = Harness(threshold=0)
    reads = h.clock.reads
    for _ in range(100):
        assert h.breaker.allow()
        h.breaker.record_success(h.clock.now - 3600.0)  # an hour-long call
        h.breaker.record_failure(h.clock.now - 3600.0)
    assert h.breaker.state is CLOSED and h.transitions == []
    assert h.clock.reads == reads  # nothing was timed


def test_opens_once_the_slow_share_of_a_full_window_reaches_the_rate() -> None:
    h = Harness(threshold=0, slow_after=SLOW, rate=0.5, window=4)
    h.calls("fsf")  # not judged before four calls
    assert h.breaker.state is CLOSED
    h.calls("s")  # two of four slow: 0.5 >= 0.5
    assert h.breaker.state is OPEN
    assert h.reasons == [SLOW_CALLS]
    assert h.breaker.retry_after() == OPEN_FOR


def test_no_verdict_before_the_window_is_full_even_if_every_call_was_slow() -> None:
    h = Harness(threshold=0, slow_after=SLOW, window=4)
    h.calls("sss")
    assert h.breaker.state is CLOSED
    h.calls("f")  # the fourth call completes the window: three of four slow
    assert h.breaker.state is OPEN and h.reasons == [SLOW_CALLS]


def test_a_call_of_exactly_the_duration_is_not_slow() -> None:
    h = Harness(threshold=0, slow_after=SLOW, rate=1.0, window=2)
    h.call(SLOW)
    h.call(SLOW)
    assert h.breaker.state is CLOSED
    h.call(SLOW + 0.001)
    assert h.breaker.state is CLOSED  # one of the last two
    h.call(SLOW + 0.001)
    assert h.breaker.state is OPEN


def test_the_window_slides_the_oldest_call_out() -> None:
    h = Harness(threshold=0, slow_after=SLOW, rate=0.75, window=4)
    h.calls("ssff")  # 2 of 4
    h.calls("s")  # s f f s: 2 of 4
    h.calls("s")  # f f s s: 2 of 4
    assert h.breaker.state is CLOSED
    h.calls("s")  # f s s s: 3 of 4
    assert h.breaker.state is OPEN


def test_slow_failures_are_slow_calls_and_a_failure_run_wins_a_tie() -> None:
    h = Harness(threshold=3, slow_after=SLOW, rate=0.5, window=4)
    h.calls("ffS")
    h.calls("f")  # the failure run is broken; the window holds one slow call of four
    assert h.breaker.state is CLOSED
    h.calls("S")  # two of four slow, the failure run at one
    assert h.reasons == [SLOW_CALLS]

    h = Harness(threshold=3, slow_after=SLOW, rate=0.5, window=3)
    h.calls("SSS")  # both rules are met on the third call: reported as failures
    assert h.reasons == [FAILURES]


def test_threshold_zero_leaves_the_slow_call_rule_on() -> None:
    h = Harness(threshold=0, slow_after=SLOW, window=4)
    h.calls("FFFFFFFF")  # fast failures: never open
    assert h.breaker.state is CLOSED
    h.calls("SS")
    assert h.breaker.state is OPEN and h.reasons == [SLOW_CALLS]


def test_the_window_starts_empty_after_the_breaker_closes_again() -> None:
    h = Harness(threshold=0, slow_after=SLOW, window=4)
    h.calls("ssss")
    assert h.breaker.state is OPEN
    for _ in range(10):  # slow calls from before it opened end now: ignored
        h.breaker.record_success(h.clock.now - 60.0)
    h.clock.now += OPEN_FOR
    h.calls("f")  # the probe closes it
    assert h.breaker.state is CLOSED
    h.calls("sss")  # a full window of four is needed again
    assert h.breaker.state is CLOSED
    h.calls("s")
    assert h.breaker.state is OPEN
    assert h.reasons == [SLOW_CALLS, SLOW_CALLS]


@given(
    st.lists(st.booleans(), max_size=60),
    st.integers(1, 8),
    st.sampled_from(RATES := ["0.1", "0.25", "0.3", "0.5", "0.6", "0.7", "0.75", "0.9", "1"]),
)
def test_opens_exactly_when_a_full_window_has_the_slow_share(
    slow: list[bool], window: int, rate: str
) -> None:
    h = Harness(threshold=0, slow_after=SLOW, rate=float(rate), window=window)
    for i, is_slow in enumerate(slow):
        h.call(SLUGGISH if is_slow else FAST)
        last = slow[max(0, i + 1 - window) : i + 1]
        if i + 1 >= window and Fraction(sum(last), window) >= Fraction(rate):
            assert h.breaker.state is OPEN and h.reasons == [SLOW_CALLS]
            return
        assert h.breaker.state is CLOSED
    assert h.transitions == []


@pytest.mark.parametrize(
    ("rate", "calls", "limit"),
    [("0.3", 10, 3), ("0.5", 20, 10), ("1", 20, 20), ("0.01", 20, 1), ("0.7", 3, 3), ("0.1", 1, 1)],
)
def test_slow_call_limit(rate: str, calls: int, limit: int) -> None:
    assert slow_call_limit(float(rate), calls) == limit


@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_slow_call_limit_is_exact_for_decimal_rates(per_ten_thousand: int, calls: int) -> None:
    rate = Fraction(per_ten_thousand, 10_000)
    assert slow_call_limit(float(rate), calls) == math.ceil(rate * calls)


def test_a_slow_probe_reopens_with_a_fresh_timer() -> None:
    h = Harness(threshold=3, slow_after=SLOW)
    h.trip()
    h.clock.now += OPEN_FOR
    h.call(SLUGGISH)  # the probe succeeds, slowly
    assert h.breaker.state is OPEN
    assert h.transitions[-2:] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    assert h.reasons == [FAILURES, SLOW_CALLS]
    assert h.breaker.retry_after() == OPEN_FOR
    h.clock.now += OPEN_FOR
    h.call(FAST)
    assert h.breaker.state is CLOSED


def test_probes_are_judged_by_the_slow_share() -> None:
    # Three probes, rate 0.5: two slow ones of the three reopen it.
    h = Harness(threshold=3, probes=3, slow_after=SLOW, rate=0.5)
    h.half_open()
    assert h.breaker.allow() and h.breaker.allow()
    started = h.clock.now
    h.clock.now += SLUGGISH
    h.breaker.record_success(started)
    h.breaker.record_success(h.clock.now)
    assert h.breaker.state is HALF_OPEN  # one slow of two so far
    h.breaker.record_success(started)
    assert h.breaker.state is OPEN and h.reasons == [FAILURES, SLOW_CALLS]

    # One slow probe of three is below the rate: it closes.
    h = Harness(threshold=3, probes=3, slow_after=SLOW, rate=0.5)
    h.half_open()
    assert h.breaker.allow() and h.breaker.allow()
    started = h.clock.now
    h.clock.now += SLUGGISH
    for begun in (started, h.clock.now, h.clock.now):
        h.breaker.record_success(begun)
    assert h.breaker.state is CLOSED


def test_early_reopening_on_slow_probes_forgets_the_rest() -> None:
    h = Harness(threshold=3, probes=2, slow_after=SLOW, rate=0.5)
    h.half_open()
    assert h.breaker.allow()
    started = h.clock.now
    h.clock.now += SLUGGISH
    h.breaker.record_success(started)  # one slow of two: 0.5 reached, reopen now
    assert h.breaker.state is OPEN
    h.breaker.record_success(h.clock.now)  # the other probe, fast, after the fact
    assert h.breaker.state is OPEN
    assert h.reasons == [FAILURES, SLOW_CALLS]


def test_a_slow_failing_probe_reopens_for_failures() -> None:
    h = Harness(threshold=3, slow_after=SLOW)
    h.trip()
    h.clock.now += OPEN_FOR
    h.call(SLUGGISH, failed=True)
    assert h.reasons == [FAILURES, FAILURES]


def test_window_clear_and_reuse() -> None:
    w = SlowCallWindow(3, 1.0)
    assert [w.record(True) for _ in range(3)] == [False, False, True]
    w.clear()
    assert [w.record(True) for _ in range(3)] == [False, False, True]
    assert not w.record(False)


@pytest.mark.parametrize(
    "slow_call",
    [
        {"slow_call_duration": -1.0},
        {"slow_call_duration": math.nan},
        {"slow_call_duration": math.inf},
        {"slow_call_duration": SLOW, "slow_call_rate": 0.0},
        {"slow_call_duration": SLOW, "slow_call_rate": 1.5},
        {"slow_call_duration": SLOW, "slow_call_rate": math.nan},
        {"slow_call_duration": SLOW, "window": 0},
    ],
)
def test_nonsense_slow_call_settings_are_refused(slow_call: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(3, OPEN_FOR, 1, FakeClock(0.0), **slow_call)  # type: ignore[arg-type]
