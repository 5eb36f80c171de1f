"""A bound on a total taken in amounts: the disk all request-body spools may take together.

Each spool takes the bytes it writes, chunk by chunk, before writing them, and gives them all back
when it closes; a chunk that would take the total past the limit is refused, and that spool's
copy is dropped (see :mod:`sidecar_proxy.replay.spool`). With several workers the total is the
pod's (``sidecar_proxy.workers.shared``), since they spool to the same disk.
"""

from __future__ import annotations


class Allowance:
    """At most ``limit`` units taken at once (0 = unlimited), in this process alone."""

    __slots__ = ("_in_use", "_limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"allowance must be >= 0 (0 = unlimited), not {limit!r}")
        self._limit = limit
        self._in_use = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        """Units taken and not given back."""
        return self._in_use

    def try_take(self, amount: int) -> bool:
        """Take ``amount`` if the total stays within the limit; ``False`` takes nothing."""
        if self._limit and self._in_use + amount > self._limit:
            return False
        self._in_use += amount
        return True

    def give_back(self, amount: int) -> None:
        """Give back ``amount`` of what :meth:`try_take` took."""
        if amount > self._in_use:
            # Going negative would silently raise the limit for good.
            raise RuntimeError(f"gave back {amount} of an allowance with {self._in_use} taken")
        self._in_use -= amount
