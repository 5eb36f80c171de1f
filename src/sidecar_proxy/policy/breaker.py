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

Beyond the seed, it may also open when the app gets slow rather than failing: the slow-call rule
of resilience4j's count-based sliding window (``slowCallDurationThreshold``,
``slowCallRateThreshold``, ``slidingWindowSize`` with ``minimumNumberOfCalls`` equal to it). An
app that answers everything in ten seconds never fails a request, yet it ties up every client
and every connection; failures alone would never open the breaker on it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import TypeAlias

from sidecar_proxy.policy.clock import Clock

BreakerFields: TypeAlias = tuple[int, int, float, int, int, int]
"""A breaker's state as plain numbers: state, failures, probe_at, probes, successes, slow probes.

The slow-call window is not among them: it stays with each breaker (see :meth:`CircuitBreaker.
export_fields`)."""


class BreakerState(enum.IntEnum):
    """The breaker's states; the values are the seed's ``sidecar_circuit_breaker_state`` values."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class OpenReason(enum.StrEnum):
    """Why the breaker opened; the values are the metrics' and the log's ``reason``."""

    FAILURES = "failures"  # the run of consecutive failures reached the threshold
    SLOW_CALLS = "slow_calls"  # too large a share of recent calls was slow


# on_transition(old, new, reason): reason is given on transitions to OPEN, None on the others.
Transition = Callable[[BreakerState, BreakerState, OpenReason | None], None]


def _ignore_transition(old: BreakerState, new: BreakerState, reason: OpenReason | None) -> None:
    """The default ``on_transition``: nobody is listening."""


def slow_call_limit(rate: float, calls: int) -> int:
    """The fewest slow calls among ``calls`` that make a share of at least ``rate`` (0 < rate <= 1).

    ``rate * calls`` in floats can land just above a whole number (0.3 * 10 is
    3.0000000000000004), which would demand one slow call too many; rounding to nine places first
    gives the exact decimal product for any rate a person writes.
    """
    return max(1, math.ceil(round(rate * calls, 9)))


class SlowCallWindow:
    """Whether each of the last ``size`` calls was slow: a count-based sliding window.

    A ring of one byte per call and a running count, so recording a call is O(1) and the memory
    is ``size`` bytes (resilience4j's ``FixedSizeSlidingWindowMetrics``, reduced to the one bit
    the slow-call rule needs). :meth:`record` answers whether the window is full and at least
    ``rate`` of it is slow; a window not yet full never is (resilience4j's
    ``minimumNumberOfCalls``, here equal to the window, so one slow call among the first few
    after a start or a recovery cannot open the breaker).
    """

    __slots__ = ("_limit", "_next", "_ring", "_seen", "_slow")

    def __init__(self, size: int, rate: float) -> None:
        if size < 1:
            raise ValueError(f"slow-call window must be >= 1 call, not {size!r}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"slow-call rate must be > 0 and <= 1, not {rate!r}")
        self._ring = bytearray(size)
        self._limit = slow_call_limit(rate, size)
        self._next = 0  # the slot the next call overwrites: the oldest call once full
        self._seen = 0  # calls recorded since the last clear, up to size
        self._slow = 0  # slow calls in the ring

    def record(self, slow: bool) -> bool:
        """Add a call, dropping the oldest once full; whether the slow share is now too high."""
        ring = self._ring
        i = self._next
        self._slow += slow - ring[i]
        ring[i] = slow
        i += 1
        size = len(ring)
        self._next = 0 if i == size else i
        if self._seen < size:
            self._seen += 1
            if self._seen < size:
                return False
        return self._slow >= self._limit

    def clear(self) -> None:
        """Forget every call: the window starts empty again."""
        self._ring[:] = bytes(len(self._ring))
        self._next = self._seen = self._slow = 0


class CircuitBreaker:
    """A consecutive-failure (and optionally slow-call) circuit breaker with bounded probes.

    * CLOSED: everything is allowed. ``threshold`` consecutive failures open it; a success resets
      the count. ``threshold`` 0 turns that rule off. With ``slow_call_duration`` > 0, the
      slow-call rule is on too: once ``window`` calls have been seen, it opens when at least
      ``slow_call_rate`` of the last ``window`` calls took longer than ``slow_call_duration``,
      successes and failures alike. With both rules off the breaker allows everything and never
      opens; with the slow-call rule off it keeps no window at all.
    * OPEN: everything is refused for ``open_for`` seconds. The next :meth:`allow` after that moves
      it to HALF_OPEN and is admitted as the first probe. The move is made lazily, by that call,
      because that is when a probe can actually go; until then the state stays OPEN.
    * HALF_OPEN: up to ``half_open_probes`` probes are in flight at once; the rest is refused.
      ``half_open_probes`` probe successes in a row close it; any probe failure reopens it for a
      fresh ``open_for``. With the slow-call rule on, probes are judged on speed too: once at
      least ``slow_call_rate`` of the ``half_open_probes`` probes have been slow, it reopens.
      resilience4j judges when all have answered; the outcome is the same, known sooner.

    ``on_transition(old, new, reason)`` is called synchronously on every state change, including
    the lazy OPEN -> HALF_OPEN one, after the breaker is consistent in its new state; the metrics
    gauge set from it is therefore always current. ``reason`` says why it opened on transitions
    to OPEN, and is ``None`` on the others. :attr:`state` is a plain attribute read, safe from
    another thread.

    A call's duration runs from the attempt's admission to its verdict, on the breaker's own
    clock: the data path passes the clock reading it took when :meth:`allow` said yes (``started``)
    and the breaker reads the clock again only when the slow-call rule is on, so the rule costs
    nothing when off. For a proxied request the verdict comes with the app's response head (or
    the failure), so the duration is connect plus time to first byte, not the body's transfer.

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
    * In CLOSED, every verdict counts towards or resets the consecutive-failure run, and enters
      the slow-call window. A stale verdict credited to a probe in HALF_OPEN is judged on its
      speed like the probe's: its duration is time the app really took.
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_half_open_probes",
        "_on_transition",
        "_open_for",
        "_probe_at",
        "_probes",
        "_slow_after",
        "_slow_call_rate",
        "_slow_probe_limit",
        "_slow_probes",
        "_state",
        "_successes",
        "_threshold",
        "_window",
    )

    def __init__(
        self,
        threshold: int,
        open_for: float,
        half_open_probes: int,
        clock: Clock,
        on_transition: Transition = _ignore_transition,
        *,
        slow_call_duration: float = 0.0,
        slow_call_rate: float = 1.0,
        window: int = 20,
    ) -> None:
        if not (math.isfinite(slow_call_duration) and slow_call_duration >= 0.0):
            raise ValueError(
                f"slow_call_duration must be a finite number >= 0 (0: off), "
                f"not {slow_call_duration!r}"
            )
        # None when the slow-call rule is off: nothing is kept and nothing is timed.
        self._window: SlowCallWindow | None = None
        self._slow_probe_limit = 0  # HALF_OPEN: slow probes that reopen it
        if slow_call_duration > 0.0:
            self._window = SlowCallWindow(window, slow_call_rate)
            self._slow_probe_limit = slow_call_limit(slow_call_rate, half_open_probes)
        self._slow_after = slow_call_duration
        self._threshold = 0
        self._open_for = 0.0
        self._half_open_probes = 1
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._failures = 0  # CLOSED: the current run of consecutive failures
        self._probe_at = 0.0  # OPEN: the clock reading from which a probe may go
        self._probes = 0  # HALF_OPEN: probe slots taken; set afresh on entering it
        self._successes = 0  # HALF_OPEN: probe successes so far
        self._slow_probes = 0  # HALF_OPEN: slow probes so far
        self._slow_call_rate = slow_call_rate
        self.reconfigure(threshold, open_for, half_open_probes)

    def reconfigure(self, threshold: int, open_for: float, half_open_probes: int) -> None:
        """New settings (a reload) for a breaker that keeps its state and its counts.

        An open period already running ends when it was due to. A run of failures already at or
        past a lowered threshold opens the breaker on its next failure, not at once: the reload
        itself is no evidence about the app. The slow-call rule is set at start-up only.
        """
        if threshold < 0:
            raise ValueError(f"breaker threshold must be >= 0 (0: off), not {threshold!r}")
        if not (math.isfinite(open_for) and open_for >= 0.0):
            raise ValueError(f"breaker open_for must be a finite number >= 0, not {open_for!r}")
        if half_open_probes < 1:
            raise ValueError(f"breaker half_open_probes must be >= 1, not {half_open_probes!r}")
        self._threshold = threshold
        self._open_for = float(open_for)
        self._half_open_probes = half_open_probes
        if self._window is not None:
            self._slow_probe_limit = slow_call_limit(self._slow_call_rate, half_open_probes)
        if threshold:
            self._failures = min(self._failures, threshold - 1)

    @property
    def state(self) -> BreakerState:
        """The current state. OPEN past its ``open_for`` until the next :meth:`allow`."""
        return self._state

    @property
    def judges_speed(self) -> bool:
        """Whether the slow-call rule is on: then every verdict, a success too, is a call for
        the window."""
        return self._window is not None

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
        self._slow_probes = 0
        self._transition(BreakerState.HALF_OPEN, None)
        return True

    def record_success(self, started: float) -> None:
        """An attempt admitted at clock reading ``started`` reached the app and got a
        non-failure answer."""
        state = self._state
        if state is BreakerState.CLOSED:
            self._failures = 0
            window = self._window
            if window is not None and window.record(self._slow(started)):
                self._open(OpenReason.SLOW_CALLS)
        elif state is BreakerState.HALF_OPEN and self._probes:
            self._probes -= 1
            self._successes += 1
            if self._window is not None and self._slow(started):
                self._slow_probes += 1
                if self._slow_probes >= self._slow_probe_limit:
                    self._open(OpenReason.SLOW_CALLS)
                    return
            if self._successes >= self._half_open_probes:  # >=: the number may have been lowered
                self._transition(BreakerState.CLOSED, None)

    def record_failure(self, started: float) -> None:
        """An upstream failure of an attempt admitted at clock reading ``started``: unreachable,
        timeout, reset, or a status the caller counts."""
        state = self._state
        if state is BreakerState.CLOSED:
            self._failures += 1
            # A run starts at 1, so it never equals a threshold of 0: the rule is off.
            if self._failures == self._threshold:
                self._open(OpenReason.FAILURES)
                return
            window = self._window
            if window is not None and window.record(self._slow(started)):
                self._open(OpenReason.SLOW_CALLS)
        elif state is BreakerState.HALF_OPEN and self._probes:
            self._open(OpenReason.FAILURES)

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

    def forget_calls(self) -> None:
        """Empty the slow-call window, as opening does: the breaker opened elsewhere (another
        process sharing its state), so the calls in this one's window are from before that."""
        if self._window is not None:
            self._window.clear()

    def export_fields(self) -> BreakerFields:
        """The state, for keeping it where several processes share it. The slow-call window is
        left out: it is ``window`` bytes, and each process judges its own calls by it."""
        return (
            self._state,
            self._failures,
            self._probe_at,
            self._probes,
            self._successes,
            self._slow_probes,
        )

    def import_fields(self, fields: BreakerFields) -> None:
        """Take over a state from :meth:`export_fields`; no transition is reported."""
        state, self._failures, self._probe_at, self._probes, self._successes, slow = fields
        self._slow_probes = slow
        self._state = BreakerState(state)

    def _slow(self, started: float) -> bool:
        # Strictly longer, as resilience4j: a call taking exactly the duration is not slow.
        return self._clock() - started > self._slow_after

    def _open(self, reason: OpenReason) -> None:
        self._probe_at = self._clock() + self._open_for
        # The run and the window to judge by once it closes again start empty (resilience4j
        # starts a fresh window on every transition, too): verdicts in OPEN are ignored, so
        # nothing is added until then.
        self._failures = 0
        self.forget_calls()
        self._transition(BreakerState.OPEN, reason)

    def _transition(self, new: BreakerState, reason: OpenReason | None) -> None:
        old = self._state
        self._state = new
        self._on_transition(old, new, reason)
