"""Local rate limiting: bucket arithmetic, bounded keys, client keys, the fields of the 429."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fakeclock import FakeClock

from sidecar_proxy.policy.ratelimit import RateLimit, TokenBuckets, client_key


def test_a_full_bucket_allows_the_burst_at_once_then_the_rate() -> None:
    clock = FakeClock(100.0)
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=1, clock=clock)
    assert [buckets.take(b"") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take(b"") == pytest.approx(0.5)  # one token every 1/rate seconds
    clock.now += 0.25
    assert buckets.take(b"") == pytest.approx(0.25)  # half a token has come back
    clock.now += 0.25
    assert buckets.take(b"") == 0.0
    assert buckets.take(b"") == pytest.approx(0.5)


def test_a_refused_request_takes_nothing() -> None:
    clock = FakeClock(0.0)
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=1, clock=clock)
    assert buckets.take(b"") == 0.0
    for _ in range(100):
        assert buckets.take(b"") == pytest.approx(1.0)  # refusals do not dig a deeper hole
    clock.now += 1.0
    assert buckets.take(b"") == 0.0


def test_refill_stops_at_the_burst() -> None:
    clock = FakeClock(0.0)
    buckets = TokenBuckets(rate=10.0, burst=2, max_keys=1, clock=clock)
    buckets.take(b"")
    clock.now += 3600.0
    assert [buckets.take(b"") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take(b"") == pytest.approx(0.1)  # an hour's refill was capped at two


@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock(0.0)
    buckets = TokenBuckets(rate, burst, max_keys=1, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += buckets.take(b"") == 0.0
    assert allowed <= burst + rate * clock.now + 1e-6


def test_keys_have_their_own_buckets() -> None:
    clock = FakeClock(0.0)
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=10, clock=clock)
    assert buckets.take(b"a") == 0.0
    assert buckets.take(b"a") > 0
    assert buckets.take(b"b") == 0.0


def test_keys_are_bounded_and_the_least_recently_used_goes() -> None:
    clock = FakeClock(0.0)
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=2, clock=clock)
    buckets.take(b"a")
    buckets.take(b"b")
    assert buckets.take(b"a") > 0  # a is now the most recently used
    buckets.take(b"c")  # room for c: b goes, a stays
    assert len(buckets) == 2
    assert buckets.take(b"a") > 0  # a kept its empty bucket
    assert buckets.take(b"b") == 0.0  # b was forgotten: a fresh, full bucket
    for n in range(1000):
        buckets.take(b"%d" % n)
    assert len(buckets) == 2


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"), [(0.0, 1, 1), (-1.0, 1, 1), (1.0, 0, 1), (1.0, 1, 0)]
)
def test_bad_parameters_are_refused(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError, match=r"rate|burst|max_keys"):
        TokenBuckets(rate, burst, max_keys, FakeClock(0.0))


# --- whom a request counts against ---------------------------------------------------------


@pytest.mark.parametrize(
    ("xff", "trust", "key"),
    [
        (b"", True, b"10.0.0.9"),
        (b"203.0.113.7", True, b"203.0.113.7"),
        (b"198.51.100.1, 203.0.113.7", True, b"203.0.113.7"),  # the one the proxy appended
        (b"203.0.113.7", False, b"10.0.0.9"),
        (b"198.51.100.1, ", True, b"10.0.0.9"),  # empty last entry
        (b"x" * 46, True, b"10.0.0.9"),  # no address is that long
        (b"2001:db8::1", True, b"2001:db8::1"),
    ],
)
def test_client_key(xff: bytes, trust: bool, key: bytes) -> None:
    assert client_key(b"10.0.0.9", xff, trust) == key


# --- the 429 -----------------------------------------------------------------------------------


def fields(refusal: list[tuple[bytes, bytes]] | None) -> dict[bytes, bytes]:
    assert refusal is not None
    return dict(refusal)


def test_refusal_fields_follow_the_ietf_draft() -> None:
    clock = FakeClock(0.0)
    limit = RateLimit(rate=10.0, burst=20, clock=clock)
    for _ in range(20):
        assert limit.check(b"10.0.0.1", b"") is None
    got = fields(limit.check(b"10.0.0.1", b""))
    assert got == {
        b"Retry-After": b"1",  # 0.1 s to the next token, rounded up to delay-seconds
        b"RateLimit-Policy": b'"sidecar";q=10;w=1',
        b"RateLimit": b'"sidecar";r=0;t=1',
    }


@pytest.mark.parametrize(
    ("rate", "burst", "policy"),
    [
        (10.0, 0, b'"sidecar";q=10;w=1'),  # burst 0 means one second's worth
        (10.0, 3, b'"sidecar";q=3;w=1'),  # never more at once than the bucket holds
        (0.5, 0, b'"sidecar";q=1;w=2'),  # below 1/s the window grows, q/w stays the rate
        (0.2, 5, b'"sidecar";q=1;w=5'),
        (2.5, 10, b'"sidecar";q=2;w=1'),  # q/w never above the rate
    ],
)
def test_advertised_policy_is_never_above_the_rate_or_the_burst(
    rate: float, burst: int, policy: bytes
) -> None:
    limit = RateLimit(rate, burst, FakeClock(0.0))
    while (refusal := limit.check(b"p", b"")) is None:
        pass
    assert fields(refusal)[b"RateLimit-Policy"] == policy


def test_retry_after_is_the_wait_for_the_next_token() -> None:
    clock = FakeClock(0.0)
    limit = RateLimit(rate=0.25, burst=1, clock=clock)
    assert limit.check(b"p", b"") is None
    got = fields(limit.check(b"p", b""))
    assert (got[b"Retry-After"], got[b"RateLimit"]) == (b"4", b'"sidecar";r=0;t=4')
    clock.now += 3.5
    got = fields(limit.check(b"p", b""))
    assert (got[b"Retry-After"], got[b"RateLimit"]) == (b"1", b'"sidecar";r=0;t=1')
    clock.now += 0.5
    assert limit.check(b"p", b"") is None


def test_global_limit_is_shared_by_every_client() -> None:
    limit = RateLimit(rate=1.0, burst=1, clock=FakeClock(0.0))
    assert limit.check(b"10.0.0.1", b"") is None
    assert limit.check(b"10.0.0.2", b"") is not None


def test_per_client_limit_names_the_partition() -> None:
    limit = RateLimit(
        rate=1.0, burst=1, clock=FakeClock(0.0), per_client=True, max_keys=100, trust_forwarded=True
    )
    assert limit.check(b"10.0.0.1", b"") is None
    assert limit.check(b"10.0.0.2", b"") is None  # another client, another bucket
    assert limit.check(b"10.0.0.1", b"203.0.113.7") is None  # forwarded: its own bucket too
    got = fields(limit.check(b"10.0.0.3", b"203.0.113.7"))
    pk = base64.b64encode(b"203.0.113.7")
    assert got[b"RateLimit"] == b'"sidecar";r=0;t=1;pk=:' + pk + b":"


@pytest.mark.parametrize(
    ("rate", "burst", "shares", "admitted", "policy"),
    [
        (10.0, 0, 2, 5, b'"sidecar";q=5;w=1'),  # the default burst (10) split, and the rate
        (10.0, 3, 2, 2, b'"sidecar";q=2;w=1'),  # a burst of 3 in two: 2 each, rounded up
        (1.0, 0, 4, 1, b'"sidecar";q=1;w=4'),  # a share never holds less than one request
    ],
)
def test_a_share_of_the_limit_gets_its_part_of_the_rate_and_the_burst(
    rate: float, burst: int, shares: int, admitted: int, policy: bytes
) -> None:
    clock = FakeClock(0.0)
    limit = RateLimit(rate, burst, clock, shares=shares)
    assert [limit.check(b"p", b"") is None for _ in range(admitted + 1)] == [True] * admitted + [
        False
    ]
    assert fields(limit.check(b"p", b""))[b"RateLimit-Policy"] == policy
    clock.now += shares / rate  # one token of the share's rate
    assert limit.check(b"p", b"") is None
    assert limit.check(b"p", b"") is not None


def test_shares_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="shares"):
        RateLimit(1.0, 1, FakeClock(0.0), shares=0)
