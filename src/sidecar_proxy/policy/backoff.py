"""How long to wait before a retry, and what the app asked for with ``Retry-After``.

The seed slept ``base * 2**attempt`` exactly: every client that failed together retried together,
in lock-step waves that hit a recovering app at the worst moment. Here the wait is *full jitter*
(AWS Architecture Blog, "Exponential Backoff And Jitter"): uniform over the whole interval
``[0, min(cap, base * 2**(retry-1))]``. Of the schemes compared there it spreads the retries of a
synchronised crowd best while doing the least total work.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime


class Backoff:
    """Exponential backoff with full jitter, capped.

    ``rand`` returns a float in ``[0, 1)`` (``random.random``); tests inject a fixed one. The
    exponent is applied with :func:`math.ldexp` and only below the retry at which the ceiling
    reaches ``cap`` (found once, here), so a huge retry number can neither overflow nor cost more
    than a small one.
    """

    __slots__ = ("_base", "_cap", "_capped_from", "_rand")

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        if not (math.isfinite(base) and base >= 0.0):
            raise ValueError(f"backoff base must be a finite number >= 0, not {base!r}")
        if not (math.isfinite(cap) and cap >= 0.0):
            raise ValueError(f"backoff cap must be a finite number >= 0, not {cap!r}")
        self._base = float(base)
        self._rand = rand
        # With base 0 every ceiling is min(cap, 0) = 0 (retries go at once), and the search below
        # would never reach a positive cap.
        self._cap = float(cap) if base > 0.0 else 0.0
        capped_from = 1
        while math.ldexp(self._base, capped_from - 1) < self._cap:
            capped_from += 1
        self._capped_from = capped_from

    def delay(self, retry: int) -> float:
        """Full jitter: uniform in ``[0, min(cap, base * 2**(retry-1))]``, ``retry`` from 1."""
        if retry < 1:
            raise ValueError(f"retry counts from 1, not {retry!r}")
        if retry >= self._capped_from:
            return self._rand() * self._cap
        return self._rand() * math.ldexp(self._base, retry - 1)


def parse_retry_after(value: bytes | str, now_wall: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value (RFC 9110 §10.2.3).

    The field is either delay-seconds (a non-negative decimal integer) or an HTTP-date. Dates are
    read with :func:`email.utils.parsedate_to_datetime`, which takes the preferred IMF-fixdate and
    both obsolete forms (RFC 850 and asctime); a date without a zone (asctime) is UTC, as all
    HTTP-dates are. A date becomes a delay from ``now_wall`` (``time.time()``), clamped at 0 for a
    date in the past. Anything else (a sign, a fraction, garbage) is ``None``: the caller falls
    back to its own backoff rather than guessing. An absurdly long delay-seconds comes back as
    ``inf``, which no deadline admits.
    """
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip(" \t")
    if text.isascii() and text.isdigit():
        # float() rather than int(): no digit-count limit, and overflow saturates to inf.
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)
