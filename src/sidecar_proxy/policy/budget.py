"""The retry budget: retries may add only a bounded fraction to the load on the app.

A per-request retry limit alone multiplies load exactly when the app is failing: with three
retries, an app that fails everything receives four times the traffic and can never dig itself
out. A budget, as in Finagle's ``RetryBudget`` and Linkerd's retry budgets, caps retries relative
to the traffic itself: over a sliding window of about ``ttl`` seconds, at most ``ratio`` retries
per original request seen in it, plus a reserve of ``min_per_second * ttl`` retries so that a
quiet client, which earns almost no credit from its few requests, can still retry at all.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TypeAlias

from sidecar_proxy.policy.clock import Clock

_BUCKETS = 10  # per ttl
_SLOTS = _BUCKETS + 1  # the ring holds the current, partly filled bucket and ten full ones
# The ratio is kept as an exact fraction deposit/withdrawal with a denominator of at most this,
# so that credit is counted in integers and no float rounding can grant or refuse one retry too
# many over millions of requests. 1/10000 is far below any ratio worth configuring.
_MAX_DENOMINATOR = 10_000


BUDGET_FIELDS = 2 + _SLOTS
BudgetFields: TypeAlias = tuple[int, ...]
"""A budget's whole state as :data:`BUDGET_FIELDS` integers: bucket, credit, the ring."""


class RetryBudget:
    """Linkerd/Finagle-style retry budget.

    Retries may be at most ``ratio`` of the requests seen in the last ``ttl`` seconds, plus a floor
    of ``min_per_second`` retries per second (granted as a standing reserve of
    ``min_per_second * ttl``). Retries beyond it are refused (and counted by the caller).

    Each request deposits ``ratio`` of a retry and each retry withdraws one. Both are booked in a
    ring of coarse time buckets, ``ttl / 10`` seconds each, so memory is constant and both calls
    are O(1); a retry is allowed while the reserve plus the net of the ring covers it.

    The approximation: the ring holds the current bucket and the ten before it, so a booking
    counts for more than ``ttl`` and at most ``1.1 * ttl`` seconds, then expires with its bucket.
    Expiry is what keeps credit from piling up (requests from before the last ``1.1 * ttl`` earn
    nothing), and what hands the reserve back: the retries that spent it expire. Erring on the
    long side is deliberate: the reserve can then be spent at most once in any ``ttl`` seconds,
    so a storm of failures from a standing start is held to at most
    ``ratio * requests + min_per_second * ttl * ceil(seconds / ttl)`` retries (exactly
    ``ratio * requests + min_per_second * seconds`` over whole windows), whatever the phase of the
    clock. A window shorter than ``ttl`` would let the reserve come back early and break that.
    """

    __slots__ = (
        "_bucket",
        "_buckets_per_second",
        "_clock",
        "_credit",
        "_deposit",
        "_slot",
        "_slots",
        "_withdrawal",
    )

    def __init__(self, ratio: float, min_per_second: int, ttl: float, clock: Clock) -> None:
        if not (math.isfinite(ratio) and ratio >= 0.0):
            raise ValueError(f"retry budget ratio must be a finite number >= 0, not {ratio!r}")
        if min_per_second < 0:
            raise ValueError(f"retry budget min_per_second must be >= 0, not {min_per_second!r}")
        if not (math.isfinite(ttl) and ttl > 0.0):
            raise ValueError(f"retry budget ttl must be a finite number > 0, not {ttl!r}")
        exact = Fraction(ratio).limit_denominator(_MAX_DENOMINATOR)
        self._deposit = exact.numerator  # credit units per request
        self._withdrawal = exact.denominator  # credit units per retry
        self._clock = clock
        self._buckets_per_second = _BUCKETS / ttl
        self._slots = [0] * _SLOTS  # net credit units put in during each bucket of the window
        self._bucket = self._bucket_now()  # the newest bucket seen: time never runs backwards here
        self._slot = self._bucket % _SLOTS
        # Credit available now: the reserve plus the sum of the slots, kept as a running total so
        # neither call has to add up the ring. The reserve is rounded down in credit units rather
        # than whole retries, so a fractional one (ttl 0.5 s at 1/s) is not lost.
        self._credit = int(min_per_second * ttl * self._withdrawal)

    def deposit(self, requests: int = 1) -> None:
        """``requests`` original requests started: each earns ``ratio`` of a retry."""
        bucket = self._bucket_now()
        if bucket > self._bucket:
            self._advance(bucket)
        earned = self._deposit * requests
        self._slots[self._slot] += earned
        self._credit += earned

    def try_withdraw(self) -> bool:
        """One retry wants to go: ``True`` spends one retry of credit, ``False`` refuses it."""
        bucket = self._bucket_now()
        if bucket > self._bucket:
            self._advance(bucket)
        if self._credit < self._withdrawal:
            return False
        self._slots[self._slot] -= self._withdrawal
        self._credit -= self._withdrawal
        return True

    def export_fields(self) -> BudgetFields:
        """The whole state, for keeping it where several processes share it."""
        return (self._bucket, self._credit, *self._slots)

    def import_fields(self, fields: BudgetFields) -> None:
        """Take over a state from :meth:`export_fields` of a budget with the same settings."""
        self._bucket, self._credit, *slots = fields
        self._slots[:] = slots
        self._slot = self._bucket % _SLOTS

    def _bucket_now(self) -> int:
        return int(self._clock() * self._buckets_per_second)

    def _advance(self, bucket: int) -> None:
        """Expire the buckets that fell out of the window on the way to ``bucket``."""
        slots = self._slots
        for passed in range(self._bucket + 1, min(bucket, self._bucket + _SLOTS) + 1):
            index = passed % _SLOTS
            self._credit -= slots[index]
            slots[index] = 0
        self._bucket = bucket
        self._slot = bucket % _SLOTS
