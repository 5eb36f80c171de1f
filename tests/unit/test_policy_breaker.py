"""The circuit breaker: consecutive failures, lazy half-open, bounded probes, stale verdicts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fakeclock import FakeClock

from sidecar_proxy.policy.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
OPEN_FOR = 30.0


class Harness:
    """A breaker on a fake clock that logs its transitions, checking each one as it is made."""

    def __init__(self, threshold: int = 3, probes: int = 1) -> None:
        self.clock = FakeClock(1000.0)
        self.transitions: list[tuple[BreakerState, BreakerState]] = []
        self.breaker = CircuitBreaker(threshold, OPEN_FOR, probes, self.clock, self.on_transition)

    def on_transition(self, old: BreakerState, new: BreakerState) -> None:
        # Called synchronously, with the breaker already in its new state.
        assert self.breaker.state is new
        self.transitions.append((old, new))

    def trip(self) -> None:
        """Open the breaker with consecutive failures."""
        while self.breaker.state is CLOSED:
            assert self.breaker.allow()
            self.breaker.record_failure()

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
        h.breaker.record_failure()
    assert h.breaker.state is CLOSED
    assert h.transitions == []
    assert h.breaker.allow()
    h.breaker.record_failure()
    assert h.breaker.state is OPEN
    assert h.transitions == [(CLOSED, OPEN)]


def test_a_success_in_between_resets_the_count() -> None:
    h = Harness(threshold=3)
    for outcome in "FFSFFSFF":
        assert h.breaker.allow()
        if outcome == "F":
            h.breaker.record_failure()
        else:
            h.breaker.record_success()
    assert h.breaker.state is CLOSED
    h.breaker.record_failure()
    assert h.breaker.state is OPEN


def test_the_seeds_cumulative_failure_count_is_not_reproduced() -> None:
    # The seed counted failures without resetting on success: one failure in two requests
    # opened its breaker after `threshold` failures. Here that never opens it.
    h = Harness(threshold=5)
    for _ in range(1000):
        assert h.breaker.allow()
        h.breaker.record_failure()
        h.breaker.record_success()
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
            h.breaker.record_failure()
            run += 1
        else:
            h.breaker.record_success()
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
    h.breaker.record_failure()
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
    h.breaker.record_success()
    h.breaker.record_success()
    assert h.breaker.state is HALF_OPEN
    h.breaker.record_success()
    assert h.breaker.state is CLOSED
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_closed_breaker_needs_a_full_run_of_failures_again() -> None:
    h = Harness(threshold=2)
    h.half_open()
    h.breaker.record_success()
    assert h.breaker.state is CLOSED
    h.breaker.record_failure()
    assert h.breaker.state is CLOSED
    h.breaker.record_failure()
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
        h.breaker.record_failure()
    assert h.breaker.state is CLOSED
    assert h.breaker.retry_after() == 0.0
    assert h.transitions == []


def test_failures_of_attempts_in_flight_when_it_opened_do_not_extend_the_open_period() -> None:
    h = Harness(threshold=3)
    for _ in range(10):  # ten attempts admitted while CLOSED
        assert h.breaker.allow()
    for _ in range(3):
        h.breaker.record_failure()
    assert h.breaker.state is OPEN
    h.clock.now += OPEN_FOR - 1.0
    for _ in range(7):  # the other seven fail late
        h.breaker.record_failure()
    assert h.breaker.retry_after() == 1.0
    h.clock.now += 1.0
    assert h.breaker.allow()
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_a_late_success_does_not_close_an_open_breaker() -> None:
    h = Harness()
    h.trip()
    h.breaker.record_success()
    assert h.breaker.state is OPEN
    assert not h.breaker.allow()


def test_a_late_verdict_with_no_probe_in_flight_is_ignored_in_half_open() -> None:
    h = Harness(probes=1)
    h.half_open()
    h.breaker.release()  # the probe's client hung up: no probe in flight now
    h.breaker.record_success()  # a stale attempt from before the breaker opened
    assert h.breaker.state is HALF_OPEN
    h.breaker.record_failure()  # another stale one
    assert h.breaker.state is HALF_OPEN
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert h.breaker.allow()


def test_probes_outstanding_when_it_reopens_are_forgotten() -> None:
    h = Harness(probes=2)
    h.half_open()
    assert h.breaker.allow()
    h.breaker.record_failure()  # first probe fails: OPEN again
    h.breaker.record_success()  # the second probe answers afterwards
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
    h.breaker.record_success()
    assert h.breaker.state is CLOSED
    assert h.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_run_past_a_lowered_threshold_opens_on_its_next_failure() -> None:
    h = Harness(threshold=10)
    for _ in range(5):
        assert h.breaker.allow()
        h.breaker.record_failure()
    h.breaker.reconfigure(3, OPEN_FOR, 1)
    assert h.breaker.state is CLOSED  # the reload itself says nothing about the app
    assert h.breaker.allow()
    h.breaker.record_failure()
    assert h.breaker.state is OPEN


def test_fewer_probes_needed_after_a_reload_closes_on_the_next_success() -> None:
    h = Harness(threshold=1, probes=3)
    h.half_open()
    assert h.breaker.allow()
    h.breaker.record_success()
    h.breaker.record_success()  # two of three probes succeeded
    assert h.breaker.state is HALF_OPEN
    h.breaker.reconfigure(1, OPEN_FOR, 1)
    assert h.breaker.allow()
    h.breaker.record_success()
    assert h.breaker.state is CLOSED


# A data path that keeps the contract: each step starts an attempt (if allowed), ends one in
# flight with a verdict, or lets some seconds pass.
steps = st.lists(
    st.one_of(st.sampled_from(["start", "success", "failure", "release"]), st.integers(1, 40)),
    max_size=80,
)


@given(steps, st.integers(1, 4), st.integers(1, 3))
def test_no_probe_slot_leaks_whatever_the_interleaving(
    script: list[str | int], threshold: int, probes: int
) -> None:
    h = Harness(threshold=threshold, probes=probes)
    verdicts = {
        "success": h.breaker.record_success,
        "failure": h.breaker.record_failure,
        "release": h.breaker.release,
    }
    in_flight = 0
    for step in script:
        if isinstance(step, int):
            h.clock.now += step
        elif step == "start":
            in_flight += h.breaker.allow()
        elif in_flight:
            in_flight -= 1
            verdicts[step]()
    for _ in range(in_flight):
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
