"""A clock for the policy units, which take their time source as a callable."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock the test sets by hand."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
