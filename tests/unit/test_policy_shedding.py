"""Load shedding: a hard cap on requests in flight."""

from __future__ import annotations

import pytest

from sidecar_proxy.policy.shedding import ConcurrencyLimit


def test_sheds_at_the_limit_and_admits_again_after_a_release() -> None:
    limit = ConcurrencyLimit(2)
    assert limit.try_acquire()
    assert limit.try_acquire()
    assert not limit.try_acquire()
    assert limit.in_flight == 2  # a refusal takes no place
    limit.release()
    assert limit.in_flight == 1
    assert limit.try_acquire()
    assert not limit.try_acquire()


def test_zero_is_unlimited_but_still_counted() -> None:
    limit = ConcurrencyLimit(0)
    assert all(limit.try_acquire() for _ in range(10_000))
    assert limit.in_flight == 10_000
    limit.release()
    assert limit.in_flight == 9_999


def test_a_release_without_an_acquire_is_a_bug_not_a_free_place() -> None:
    limit = ConcurrencyLimit(1)
    with pytest.raises(RuntimeError, match="without a matching"):
        limit.release()
    assert limit.in_flight == 0
    assert limit.try_acquire()
    assert not limit.try_acquire()


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency limit"):
        ConcurrencyLimit(-1)


def test_a_new_limit_keeps_the_places_in_flight() -> None:
    limit = ConcurrencyLimit(3)
    for _ in range(3):
        assert limit.try_acquire()
    limit.set_limit(1)  # lowered below what is in flight: nothing is lost, new ones are shed
    assert limit.in_flight == 3
    assert not limit.try_acquire()
    limit.release()
    limit.release()
    assert not limit.try_acquire()
    limit.release()
    assert limit.try_acquire()
    limit.set_limit(0)
    assert all(limit.try_acquire() for _ in range(100))
    with pytest.raises(ValueError, match="concurrency limit"):
        limit.set_limit(-1)
