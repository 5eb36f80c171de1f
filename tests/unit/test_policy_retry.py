"""The retry decision: what is retried, in which order the checks refuse, and how long to wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_proxy.policy.backoff import Backoff
from sidecar_proxy.policy.budget import RetryBudget
from sidecar_proxy.policy.retry import IDEMPOTENT_METHODS, Decision, Failure, RetryPolicy

RETRY_ON = frozenset({"connect-failure", "timeout", "503", "429"})
BASE = 0.1
CAP = 1.0


def budget(retries: int = 1000) -> RetryBudget:
    """A budget holding exactly ``retries`` retries for the test's lifetime (the clock stands)."""
    return RetryBudget(0.0, retries, 1.0, lambda: 0.0)


def policy(max_retries: int = 3, retries_in_budget: int = 1000) -> RetryPolicy:
    # rand 1.0 puts every backoff at the top of its interval: base * 2**(retry-1), capped.
    return RetryPolicy(
        max_retries, RETRY_ON, Backoff(BASE, CAP, rand=lambda: 1.0), budget(retries_in_budget)
    )


def after(
    p: RetryPolicy,
    outcome: Failure | int = 503,
    *,
    attempt: int = 1,
    replayable: bool = True,
    retry_after: float | None = None,
    remaining: float = 30.0,
) -> Decision:
    """The decision after an attempt that ended with ``outcome``: a response status, or a
    failure that left none."""
    failure, status = (outcome, None) if isinstance(outcome, Failure) else (None, outcome)
    return p.decide(
        attempt=attempt,
        failure=failure,
        status=status,
        replayable=replayable,
        retry_after=retry_after,
        remaining=remaining,
    )


def test_idempotent_methods_are_rfc_9110s() -> None:
    assert frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}) == IDEMPOTENT_METHODS


@pytest.mark.parametrize(
    ("method", "key", "safe"),
    [
        ("GET", False, True),
        ("PUT", False, True),
        ("DELETE", False, True),
        ("POST", False, False),
        ("PATCH", False, False),
        ("CONNECT", False, False),
        ("get", False, False),  # method names are case-sensitive
        ("POST", True, True),
        ("PATCH", True, True),
    ],
)
def test_replay_safe(method: str, key: bool, safe: bool) -> None:
    assert policy().replay_safe(method, key) is safe


def test_retryable_status_is_the_configured_codes() -> None:
    p = policy()
    assert [s for s in (200, 429, 500, 502, 503, 504) if p.retryable_status(s)] == [429, 503]


@pytest.mark.parametrize("token", ["5xx", "bogus", "Reset", "600", "099", "50", "5030", "٥٠٣"])
def test_unknown_retry_on_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match=repr(token)):
        RetryPolicy(3, frozenset({token}), Backoff(BASE, CAP), budget())


def test_negative_max_retries_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(-1, RETRY_ON, Backoff(BASE, CAP), budget())


def test_exactly_one_of_failure_and_status() -> None:
    p = policy()
    for failure, status in ((None, None), (Failure.TIMEOUT, 503)):
        with pytest.raises(ValueError, match="exactly one"):
            p.decide(
                attempt=1,
                failure=failure,
                status=status,
                replayable=True,
                retry_after=None,
                remaining=30.0,
            )


def test_a_retry_waits_the_backoff_of_its_retry_number() -> None:
    p = policy()
    assert after(p, attempt=1) == Decision(True, 0.1, "retry")
    assert after(p, attempt=2) == Decision(True, 0.2, "retry")
    assert after(p, Failure.CONNECT, attempt=3) == Decision(True, 0.4, "retry")


def test_retry_after_replaces_the_backoff_even_beyond_its_cap() -> None:
    assert after(policy(), retry_after=7.5) == Decision(True, 7.5, "retry")


def test_not_retryable_failure_or_status() -> None:
    p = policy()
    assert after(p, Failure.RESET) == Decision(False, 0.0, "not-retryable")
    assert after(p, 500) == Decision(False, 0.0, "not-retryable")


def test_exhausted_after_max_retries() -> None:
    p = policy(max_retries=2)
    assert after(p, attempt=2).retry
    assert after(p, attempt=3) == Decision(False, 0.0, "exhausted")


def test_zero_max_retries_never_retries() -> None:
    assert after(policy(max_retries=0), Failure.CONNECT).reason == "exhausted"


def test_unsafe_when_not_replayable() -> None:
    assert after(policy(), replayable=False) == Decision(False, 0.0, "unsafe")


def test_retry_after_longer_than_the_deadline() -> None:
    p = policy()
    assert after(p, retry_after=10.0, remaining=9.0) == Decision(False, 0.0, "retry-after-too-long")


def test_deadline_when_the_retry_could_not_start_before_it() -> None:
    p = policy()
    # attempt 3 waits 0.4 s: it needs strictly more than that left.
    assert after(p, attempt=3, remaining=0.41).retry
    assert after(p, attempt=3, remaining=0.4) == Decision(False, 0.0, "deadline")
    assert after(p, retry_after=0.0, remaining=0.0).reason == "deadline"
    assert after(p, retry_after=2.0, remaining=2.0).reason == "deadline"
    assert after(p, remaining=-1.0).reason == "deadline"


def test_budget_refuses_when_spent() -> None:
    p = policy(retries_in_budget=2)
    assert after(p).retry
    assert after(p).retry
    assert after(p) == Decision(False, 0.0, "budget")


def test_order_of_checks() -> None:
    # Each call fails every check from its reason onwards (and the budget is empty): the first
    # check in the documented order wins.
    p = policy(retries_in_budget=0)
    assert after(p, 500, attempt=9, replayable=False, remaining=0.0).reason == "not-retryable"
    assert after(p, attempt=4, replayable=False, remaining=0.0).reason == "exhausted"
    assert after(p, replayable=False, retry_after=60.0, remaining=0.0).reason == "unsafe"
    assert after(p, retry_after=60.0, remaining=1.0).reason == "retry-after-too-long"
    assert after(p, remaining=0.0).reason == "deadline"
    assert after(p).reason == "budget"


def test_the_budget_is_only_spent_by_retries_that_would_go() -> None:
    p = policy(retries_in_budget=1)
    for refused in (
        after(p, 500),
        after(p, attempt=4),
        after(p, replayable=False),
        after(p, retry_after=60.0, remaining=1.0),
        after(p, remaining=0.0),
    ):
        assert not refused.retry
    assert after(p).retry
    assert after(p).reason == "budget"


@given(
    attempt=st.integers(1, 10),
    outcome=st.one_of(st.sampled_from(Failure), st.integers(100, 599)),
    retry_after=st.one_of(st.none(), st.floats(0.0, 100.0)),
    remaining=st.floats(-10.0, 100.0),
)
def test_a_post_that_is_not_replayable_is_never_retried(
    attempt: int, outcome: Failure | int, retry_after: float | None, remaining: float
) -> None:
    p = policy(max_retries=10)
    replayable = p.replay_safe("POST", has_idempotency_key=False)
    decision = after(
        p,
        outcome,
        attempt=attempt,
        replayable=replayable,
        retry_after=retry_after,
        remaining=remaining,
    )
    assert not decision.retry
    assert decision.delay == 0.0


def test_a_post_that_never_reached_the_app_is_retried() -> None:
    # The data path passes replayable=True for a connect failure, whatever the method.
    assert after(policy(), Failure.CONNECT, replayable=True).retry


def test_refusals_carry_no_delay() -> None:
    decision = after(policy(), retry_after=60.0, remaining=1.0)
    assert not decision.retry
    assert decision.delay == 0.0
