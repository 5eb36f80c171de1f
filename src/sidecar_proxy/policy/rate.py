"""A rate cap on events a peer causes: the HTTP/2 flood defences count with it.

Several HTTP/2 attacks cost the attacker one small frame and the server real work: a stream
opened and reset at once (rapid reset, CVE-2023-44487) makes the server start and tear down a
request; a PING or SETTINGS frame makes it queue an acknowledgement; a PRIORITY frame or an empty
DATA frame costs a parse and a dispatch. None is wrong once; all are wrong ten thousand times a
second. A token bucket per connection and per kind of event tells the two apart: a burst of up to
one second's worth is allowed at once, then the events may go on at ``rate`` per second.
"""

from __future__ import annotations

from sidecar_proxy.policy.clock import Clock


class RateCap:
    """A token bucket of ``rate`` tokens, refilled at ``rate`` per second.

    :meth:`allow` takes one token and says whether there was one; once it says ``False`` the
    caller ends the relationship (GOAWAY ENHANCE_YOUR_CALM), so refusals are not counted.
    """

    __slots__ = ("_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate: int, clock: Clock) -> None:
        if rate < 1:
            raise ValueError(f"rate must be at least 1 a second, not {rate!r}")
        self._rate = float(rate)
        self._clock = clock
        self._tokens = float(rate)
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
