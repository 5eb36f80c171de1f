"""Backoff with full jitter, and Retry-After parsing."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_proxy.policy.backoff import Backoff, parse_retry_after

# 1994-11-06 08:49:37 UTC, the example date of RFC 9110 §5.6.7.
EXAMPLE_DATE = 784111777.0


def ceiling(base: float, cap: float, retry: int) -> float:
    """min(cap, base * 2**(retry-1)), computed exactly so huge retries do not overflow."""
    return float(min(Fraction(cap), Fraction(base) * 2 ** (retry - 1)))


@given(
    base=st.floats(0.0, 10.0),
    cap=st.floats(0.0, 100.0),
    retry=st.integers(1, 5000),
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_delay_is_within_the_full_jitter_interval(
    base: float, cap: float, retry: int, u: float
) -> None:
    delay = Backoff(base, cap, rand=lambda: u).delay(retry)
    assert 0.0 <= delay <= ceiling(base, cap, retry)


@given(base=st.floats(0.0, 10.0), cap=st.floats(0.0, 100.0), retry=st.integers(1, 5000))
def test_the_top_of_the_interval_is_the_capped_exponential(
    base: float, cap: float, retry: int
) -> None:
    assert Backoff(base, cap, rand=lambda: 1.0).delay(retry) == ceiling(base, cap, retry)


def test_ceilings_double_from_base_until_the_cap() -> None:
    backoff = Backoff(0.1, 5.0, rand=lambda: 1.0)
    assert [backoff.delay(retry) for retry in range(1, 9)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
        5.0,
    ]


def test_delay_scales_the_random_draw_over_the_whole_interval() -> None:
    assert Backoff(1.0, 100.0, rand=lambda: 0.0).delay(3) == 0.0
    assert Backoff(1.0, 100.0, rand=lambda: 0.25).delay(3) == 1.0
    assert Backoff(1.0, 4.0, rand=lambda: 0.5).delay(10) == 2.0  # past the cap too


def test_the_default_randomness_spreads_retries_instead_of_lock_step() -> None:
    backoff = Backoff(1.0, 10.0)
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(0.0 <= delay <= 4.0 for delay in delays)
    assert len(set(delays)) > 150
    assert min(delays) < 1.0 and max(delays) > 3.0


def test_a_huge_retry_number_is_just_the_cap() -> None:
    assert Backoff(0.1, 5.0, rand=lambda: 1.0).delay(10**6) == 5.0


def test_zero_base_means_no_wait() -> None:
    backoff = Backoff(0.0, 5.0, rand=lambda: 1.0)
    assert [backoff.delay(retry) for retry in (1, 2, 100)] == [0.0, 0.0, 0.0]


def test_retries_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        Backoff(0.1, 5.0).delay(0)


@pytest.mark.parametrize(
    ("base", "cap"), [(-0.1, 5.0), (0.1, -1.0), (math.nan, 5.0), (0.1, math.inf)]
)
def test_nonsense_settings_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (b"120", 120.0), ("0", 0.0), (" 7\t", 7.0), (b"007", 7.0)],
)
def test_retry_after_delay_seconds(value: str | bytes, expected: float) -> None:
    assert parse_retry_after(value, EXAMPLE_DATE) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime: no zone, so UTC
        b"Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 10:49:37 +0200",
    ],
)
def test_retry_after_http_date_in_the_future(value: str | bytes) -> None:
    assert parse_retry_after(value, EXAMPLE_DATE - 90.0) == 90.0


@pytest.fixture
def local_zone_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A POSIX zone rule, so it needs no zone database: local time is UTC+5:30.
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_far_from_utc")
def test_a_date_without_a_zone_is_utc_not_local_time() -> None:
    assert time.localtime(0).tm_hour == 5  # the fixture took effect
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", EXAMPLE_DATE - 90.0) == 90.0


def test_retry_after_http_date_in_the_past_is_now() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", EXAMPLE_DATE + 3600.0) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "٣",
        b"\xff\xfe",
        "Sun, 99 Nov 1994 08:49:37 GMT",
    ],
)
def test_unparseable_retry_after_is_none(value: str | bytes) -> None:
    assert parse_retry_after(value, EXAMPLE_DATE) is None


def test_an_absurd_delay_is_infinite_rather_than_an_error() -> None:
    assert parse_retry_after("9" * 5000, EXAMPLE_DATE) == math.inf


@given(st.one_of(st.text(), st.binary()))
def test_retry_after_never_raises_and_is_never_negative(value: str | bytes) -> None:
    delay = parse_retry_after(value, EXAMPLE_DATE)
    assert delay is None or delay >= 0.0
