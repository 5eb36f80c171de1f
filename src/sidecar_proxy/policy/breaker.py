"""The circuit breaker: stop sending requests to an app that keeps failing, and probe for recovery.

It keeps the seed's settings (threshold, open period) and states, with the seed's gauge values,
but not its bugs:

* The seed counted failures cumulatively: a success only reset the count in half-open, so an app
  failing one request in a hundred opened the breaker after ``threshold`` failures, however many
  successes lay between them. Here only ``threshold`` *consecutive* failures open it.
* The seed stamped every failure as the start of the open period, so the failures of requests
  already in flight when it opened kept pushing the reopening back. Here the open period starts
  once, at the failure that opened it.
* The seed set its state gauge only on requests it let through, so the gauge read 0 (closed)
  while the breaker was open. Here ``on_transition`` reports every change as it happens.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import TypeAlias

from sidecar_proxy.policy.clock import Clock

BreakerFields: TypeAlias = tuple[int, int, float, int, int]
"""A breaker's whole state as plain numbers: state, failures, probe_at, probes, successes."""


class BreakerState(enum.IntEnum):
    """The breaker's states; the values are the seed's ``sidecar_circuit_breaker_state`` values."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


def _ignore_transition(old: BreakerState, new: BreakerState) -> None:
    """The default ``on_transition``: nobody is listening."""


class CircuitBreaker:
    """A consecutive-failure circuit breaker with a bounded half-open probe phase.

    * CLOSED: everything is allowed. ``threshold`` consecutive failures open it; a success resets
      the count. ``threshold`` 0 disables the breaker: it allows everything and never opens.
    * OPEN: everything is refused for ``open_for`` seconds. The next :meth:`allow` after that moves
      it to HALF_OPEN and is admitted as the first probe. The move is made lazily, by that call,
      because that is when a probe can actually go; until then the state stays OPEN.
    * HALF_OPEN: up to ``half_open_probes`` probes are in flight at once; the rest is refused.
      ``half_open_probes`` probe successes in a row close it; any probe failure reopens it for a
      fresh ``open_for``.

    ``on_transition(old, new)`` is called synchronously on every state change, including the lazy
    OPEN -> HALF_OPEN one, after the breaker is consistent in its new state; the metrics gauge set
    from it is therefore always current. :attr:`state` is a plain attribute read, safe from another
    thread.

    Contract with the data path: every ``True`` from :meth:`allow` is followed by exactly one of
    :meth:`record_success`, :meth:`record_failure` or :meth:`release` for that attempt, and
    nothing else calls them. That is what keeps the count of probe slots honest.

    Attempts from an earlier state. The calls carry no token naming the attempt, so the breaker
    cannot tell a probe's verdict from that of an attempt admitted before the current state began
    (say, a slow request admitted while CLOSED that ends after the breaker opened). It handles
    them so that state is never corrupted and a slot is never held forever:

    * In OPEN, every verdict is ignored. Failures arriving then are echoes of the outage that
      opened the breaker and must not extend the open period; successes are not probes.
    * In HALF_OPEN, a verdict is taken as a probe's when a probe is in flight, and ignored when
      none is. A late success with no probe out therefore cannot close the breaker on its own.
      When probes and older attempts are both in flight, an older attempt's verdict may be
      credited to a probe. That errs safely: the verdict is current evidence from the app, a
      slot is only ever freed early (the slot count never exceeds the probes really in flight,
      so none can leak; the cost is at most one extra concurrent probe per such verdict), and the
      probe's own verdict, arriving later, is then the one ignored.
    * Leaving HALF_OPEN forgets its probes (the count is set afresh on entering it again); their
      verdicts are from an earlier state from then on.
    * In CLOSED, every verdict counts towards or resets the consecutive-failure run.
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_half_open_probes",
        "_on_transition",
        "_open_for",
        "_probe_at",
        "_probes",
        "_state",
        "_successes",
        "_threshold",
    )

    def __init__(
        self,
        threshold: int,
        open_for: float,
        half_open_probes: int,
        clock: Clock,
        on_transition: Callable[[BreakerState, BreakerState], None] = _ignore_transition,
    ) -> None:
        if threshold < 0:
            raise ValueError(f"breaker threshold must be >= 0 (0 disables it), not {threshold!r}")
        if not (math.isfinite(open_for) and open_for >= 0.0):
            raise ValueError(f"breaker open_for must be a finite number >= 0, not {open_for!r}")
        if half_open_probes < 1:
            raise ValueError(f"breaker half_open_probes must be >= 1, not {half_open_probes!r}")
        self._threshold = threshold
        self._open_for = float(open_for)
        self._half_open_probes = half_open_probes
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._failures = 0  # CLOSED: the current run of consecutive failures
        self._probe_at = 0.0  # OPEN: the clock reading from which a probe may go
        self._probes = 0  # HALF_OPEN: probe slots taken; set afresh on entering it
        self._successes = 0  # HALF_OPEN: probe successes so far

    @property
    def state(self) -> BreakerState:
        """The current state. OPEN past its ``open_for`` until the next :meth:`allow`."""
        return self._state

    def allow(self) -> bool:
        """Whether an attempt may go now; ``False`` means refuse it.

        In HALF_OPEN, ``True`` takes a probe slot, which the attempt's :meth:`record_success`,
        :meth:`record_failure` or :meth:`release` gives back.
        """
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            if self._probes < self._half_open_probes:
                self._probes += 1
                return True
            return False
        if self._clock() < self._probe_at:
            return False
        self._probes = 1
        self._successes = 0
        self._transition(BreakerState.HALF_OPEN)
        return True

    def record_success(self) -> None:
        """An attempt reached the app and got a non-failure answer."""
        state = self._state
        if state is BreakerState.CLOSED:
            self._failures = 0
        elif state is BreakerState.HALF_OPEN and self._probes:
            self._probes -= 1
            self._successes += 1
            if self._successes == self._half_open_probes:
                self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """An upstream failure: unreachable, timeout, reset, or a status the caller counts."""
        state = self._state
        if state is BreakerState.CLOSED:
            self._failures += 1
            # A run starts at 1, so it never equals a threshold of 0: disabled, never opens.
            if self._failures == self._threshold:
                self._open()
        elif state is BreakerState.HALF_OPEN and self._probes:
            self._open()

    def release(self) -> None:
        """An admitted attempt ended with no verdict: it frees its probe slot, counts nothing.

        For attempts that say nothing about the app's health: the client hung up, the request was
        cancelled.
        """
        if self._state is BreakerState.HALF_OPEN and self._probes:
            self._probes -= 1

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker admits a probe (0 when not OPEN): a 503's Retry-After."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._probe_at - self._clock())

    def forget_probes(self) -> None:
        """The probes in flight will never report (the process that sent them is gone): free
        their slots, so that new probes may go. It errs the safe way the stale verdicts above
        do: when some of them are still alive elsewhere, more probes than the limit may be in
        flight for as long as those take."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = 0

    def export_fields(self) -> BreakerFields:
        """The whole state, for keeping it where several processes share it."""
        return (self._state, self._failures, self._probe_at, self._probes, self._successes)

    def import_fields(self, fields: BreakerFields) -> None:
        """Take over a state from :meth:`export_fields`; no transition is reported."""
        state, self._failures, self._probe_at, self._probes, self._successes = fields
        self._state = BreakerState(state)

    def _open(self) -> None:
        self._probe_at = self._clock() + self._open_for
        self._failures = 0  # the run to count once it closes again
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._on_transition(old, new)
