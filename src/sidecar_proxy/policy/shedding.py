"""Load shedding: a hard cap on the requests in flight to the app.

A request the app cannot start on soon is better refused at once than queued: a queue in front of
a saturated app only adds latency until clients time out, and the work done for them is wasted.
A fast 503 lets the client (or its load balancer) go elsewhere or back off while the app catches
up.
"""

from __future__ import annotations


class ConcurrencyLimit:
    """Load shedding: at most ``limit`` requests in flight to the app (0 = unlimited).

    Beyond it the caller answers 503 at once instead of queueing. Every ``True`` from
    :meth:`try_acquire` must be followed by exactly one :meth:`release`. :attr:`in_flight` is
    counted even when unlimited, for the in-flight gauge, and is a plain attribute read that is
    safe from another thread.
    """

    __slots__ = ("_in_flight", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = 0
        self._in_flight = 0
        self.set_limit(limit)

    def set_limit(self, limit: int) -> None:
        """A new limit (a reload). The requests in flight keep their places and release them as
        usual; above a lowered limit, new ones are shed until enough have finished."""
        if limit < 0:
            raise ValueError(f"concurrency limit must be >= 0 (0 = unlimited), not {limit!r}")
        self._limit = limit

    def try_acquire(self) -> bool:
        """Take a place if one is free; ``False`` means shed this request."""
        if self._in_flight >= self._limit > 0:
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        """Give back a place taken by :meth:`try_acquire`."""
        if not self._in_flight:
            # Going negative would silently raise the limit by one for good.
            raise RuntimeError("ConcurrencyLimit.release() without a matching try_acquire()")
        self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        """Requests holding a place now."""
        return self._in_flight
