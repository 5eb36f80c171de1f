"""The retry budget: ratio of requests plus a per-second floor, over a sliding window."""

from __future__ import annotations

import math

import pytest
from support.fakeclock import FakeClock

from sidecar_proxy.policy.budget import RetryBudget

TTL = 10.0


def withdraw_all(budget: RetryBudget) -> int:
    """Spend everything the budget allows right now; how many retries that was."""
    spent = 0
    while budget.try_withdraw():
        spent += 1
    return spent


@pytest.mark.parametrize("start", [0.0, 7.777, 1000.05])
def test_a_failure_storm_gets_ratio_of_requests_plus_the_floor_and_never_more(
    start: float,
) -> None:
    # 100 requests a second for 30 s, every attempt failing, each request wanting 3 retries.
    # The start times put the storm at different phases of the budget's time buckets.
    ratio, floor, rate, seconds = 0.2, 10, 100, 30
    clock = FakeClock(start)
    budget = RetryBudget(ratio, floor, TTL, clock)
    requests = admitted = 0
    for i in range(rate * seconds):
        clock.now = start + i / rate
        budget.deposit()
        requests += 1
        for _ in range(3):
            admitted += budget.try_withdraw()
    allowed = ratio * requests + floor * seconds
    assert allowed == 900
    assert 0.98 * allowed <= admitted <= allowed


def test_the_reserve_comes_back_once_the_retries_that_spent_it_expire() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(0.0, 5, TTL, clock)
    assert withdraw_all(budget) == 50  # min_per_second * ttl
    # Bookings count for more than ttl and at most 1.1 * ttl (the bucket they were made in).
    clock.now = 100.0 + TTL
    assert not budget.try_withdraw()
    clock.now = 100.0 + 1.1 * TTL - 1e-6
    assert not budget.try_withdraw()
    clock.now = 100.0 + 1.1 * TTL
    assert withdraw_all(budget) == 50


def test_each_request_earns_ratio_of_a_retry() -> None:
    budget = RetryBudget(0.25, 0, TTL, FakeClock(0.0))
    for _ in range(3):
        budget.deposit()
        assert not budget.try_withdraw()
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.7])
def test_credit_is_exact_over_many_requests(ratio: float) -> None:
    budget = RetryBudget(ratio, 0, TTL, FakeClock(0.0))
    for _ in range(100_000):
        budget.deposit()
    assert withdraw_all(budget) == round(ratio * 100_000)


def test_a_fractional_reserve_is_not_rounded_away() -> None:
    # Half a retry of reserve plus half a retry earned by one request make one retry.
    budget = RetryBudget(0.5, 1, 0.5, FakeClock(0.0))
    budget.deposit()
    assert withdraw_all(budget) == 1


def test_credit_from_long_ago_expires() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(0.2, 1, TTL, clock)
    for _ in range(10_000):
        budget.deposit()
    clock.now = 1.1 * TTL
    assert withdraw_all(budget) == 10  # only the reserve


def test_credit_earned_within_the_window_is_kept() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(0.2, 0, TTL, clock)
    for _ in range(100):
        budget.deposit()
    clock.now = TTL - 0.001
    assert withdraw_all(budget) == 20


def test_credit_counts_from_when_it_was_earned() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(0.2, 0, TTL, clock)
    clock.now = 5.0
    for _ in range(100):
        budget.deposit()
    clock.now = 5.0 + TTL - 0.001
    assert withdraw_all(budget) == 20


def test_a_long_silence_leaves_a_fresh_budget() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(0.2, 1, TTL, clock)
    for _ in range(50):
        budget.deposit()
    withdraw_all(budget)
    clock.now = 1e6 * TTL
    assert withdraw_all(budget) == 10


def test_no_ratio_and_no_floor_allows_no_retries() -> None:
    budget = RetryBudget(0.0, 0, TTL, FakeClock(0.0))
    for _ in range(1000):
        budget.deposit()
    assert not budget.try_withdraw()


@pytest.mark.parametrize(
    ("ratio", "floor", "ttl"),
    [(-0.1, 10, TTL), (math.nan, 10, TTL), (0.2, -1, TTL), (0.2, 10, 0.0), (0.2, 10, math.inf)],
)
def test_nonsense_settings_are_refused(ratio: float, floor: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio, floor, ttl, FakeClock(0.0))
