"""Whether a failed attempt is tried again, and after how long.

The seed retried every request, POSTs included, by replaying a buffered body: a POST whose
response was lost on the way back ran twice in the app. Here a request is only sent again when
that is known to be harmless:

* its method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE, TRACE; sending one
  twice has the same intended effect as sending it once), or the client made it safe to repeat
  with an ``Idempotency-Key`` header; and the body is still at hand to send again; or
* nothing of it reached the app at all (a connect failure), whatever the method.

The data path knows which of these holds and passes the answer in as ``replayable``; this module
decides everything else, in a fixed order documented on :meth:`RetryPolicy.decide`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from sidecar_proxy.policy.backoff import Backoff
from sidecar_proxy.policy.interfaces import Budget

IDEMPOTENT_METHODS: Final[frozenset[str]] = frozenset(
    {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}
)
"""RFC 9110 §9.2.2. Method names are case-sensitive (§9.1), so ``get`` is not among them."""


class Failure(enum.Enum):
    """How an attempt failed without a usable response. The values are the ``retry_on`` tokens."""

    CONNECT = "connect-failure"  # refused / unreachable / connect timeout: no byte reached the app
    RESET = "reset"  # connection closed or reset before the response head
    TIMEOUT = "timeout"  # per-try timeout hit before the response head


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt."""

    retry: bool
    delay: float  # seconds to wait before the next attempt (0 when retry is False)
    reason: str  # one of the REASON_* words, for logs and metrics


REASON_RETRY = "retry"
REASON_NOT_RETRYABLE = "not-retryable"  # this failure or status is not in retry_on
REASON_EXHAUSTED = "exhausted"  # max_retries retries already made
REASON_UNSAFE = "unsafe"  # sending the request again could repeat its effect
REASON_RETRY_AFTER_TOO_LONG = "retry-after-too-long"  # the app asked for a wait past the deadline
REASON_DEADLINE = "deadline"  # the retry could not start before the deadline
REASON_BUDGET = "budget"  # the retry budget refused

# The refusals carry no data, so they are made once rather than on every failed attempt.
_NOT_RETRYABLE = Decision(False, 0.0, REASON_NOT_RETRYABLE)
_EXHAUSTED = Decision(False, 0.0, REASON_EXHAUSTED)
_UNSAFE = Decision(False, 0.0, REASON_UNSAFE)
_RETRY_AFTER_TOO_LONG = Decision(False, 0.0, REASON_RETRY_AFTER_TOO_LONG)
_DEADLINE = Decision(False, 0.0, REASON_DEADLINE)
_BUDGET = Decision(False, 0.0, REASON_BUDGET)

_FAILURES_BY_TOKEN = {failure.value: failure for failure in Failure}


class RetryPolicy:
    """The retry rules of one upstream.

    ``retry_on`` holds the tokens ``connect-failure``, ``reset`` and ``timeout`` and status codes as
    three-digit strings (``"503"``, ``"429"``); anything else is a configuration mistake and raises
    :class:`ValueError` here rather than silently never matching.
    """

    __slots__ = ("_backoff", "_budget", "_failures", "_grpc_statuses", "_max_retries", "_statuses")

    def __init__(
        self,
        max_retries: int,
        retry_on: frozenset[str],
        backoff: Backoff,
        budget: Budget,
        grpc_retry_on: frozenset[int] = frozenset(),
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries!r}")
        failures: set[Failure] = set()
        statuses: set[int] = set()
        for token in retry_on:
            if token in _FAILURES_BY_TOKEN:
                failures.add(_FAILURES_BY_TOKEN[token])
            elif len(token) == 3 and token.isascii() and token.isdigit() and token[0] in "12345":
                statuses.add(int(token))
            else:
                raise ValueError(
                    f"retry_on token {token!r} is neither one of "
                    f"{', '.join(sorted(_FAILURES_BY_TOKEN))} nor a status code 100-599"
                )
        self._max_retries = max_retries
        self._failures = frozenset(failures)
        self._statuses = frozenset(statuses)
        self._grpc_statuses = grpc_retry_on
        self._backoff = backoff
        self._budget = budget

    def replay_safe(self, method: str, has_idempotency_key: bool) -> bool:
        """Whether sending this request twice is harmless (RFC 9110 §9.2.2, or an Idempotency-Key).

        This is only half of ``replayable``: the data path must also still hold the whole body.
        """
        return has_idempotency_key or method in IDEMPOTENT_METHODS

    def retryable_status(self, status: int) -> bool:
        """Whether a response with this status may be retried; a set lookup, asked of every head."""
        return status in self._statuses

    def retryable_grpc(self, grpc_status: int) -> bool:
        """Whether a gRPC call that ended with this status may be retried (``GRPC_RETRY_ON``)."""
        return grpc_status in self._grpc_statuses

    def decide(
        self,
        *,
        attempt: int,
        failure: Failure | None,
        status: int | None,
        replayable: bool,
        grpc_status: int | None = None,
        retry_after: float | None,
        remaining: float,
    ) -> Decision:
        """Whether to retry after attempt number ``attempt`` (1-based) failed.

        Exactly one of ``failure`` (no response), ``status`` (a response the policy may retry)
        and ``grpc_status`` (a gRPC call's Trailers-Only answer) is given. ``replayable`` is the
        data path's word that the request may be sent again.
        ``retry_after`` is the app's ``Retry-After`` in seconds, if it sent one; ``remaining`` is
        what is left of the overall deadline.

        The checks run in this order; the first that refuses gives the reason:

        1. ``not-retryable``: the failure kind or status is not in ``retry_on`` (the gRPC status
           not in ``grpc_retry_on``).
        2. ``exhausted``: ``attempt > max_retries``, i.e. all retries are spent (a request is sent
           at most ``1 + max_retries`` times).
        3. ``unsafe``: not ``replayable``.
        4. The wait is ``retry_after`` when the app sent one, even beyond the backoff cap, since
           the app knows best when it can take the request again; otherwise the jittered backoff
           for retry number ``attempt``. A ``retry_after`` longer than ``remaining`` is
           ``retry-after-too-long``: the app said it will not serve us in time.
        5. ``deadline``: ``delay >= remaining``. A retry is worth sending only if it starts before
           the deadline, with some time left for the app to answer; when it would start exactly
           at the deadline (or the deadline has passed) it can only time out.
        6. ``budget``: the retry budget refuses. It is asked last, so retries that would not be
           sent anyway do not spend it.

        Otherwise: retry after ``delay`` seconds.
        """
        if (failure is not None) + (status is not None) + (grpc_status is not None) != 1:
            raise ValueError("decide() takes exactly one of failure, status and grpc_status")
        if failure is not None:
            if failure not in self._failures:
                return _NOT_RETRYABLE
        elif status is not None:
            if status not in self._statuses:
                return _NOT_RETRYABLE
        elif grpc_status not in self._grpc_statuses:
            return _NOT_RETRYABLE
        if attempt > self._max_retries:
            return _EXHAUSTED
        if not replayable:
            return _UNSAFE
        if retry_after is None:
            delay = self._backoff.delay(attempt)
        elif retry_after > remaining:
            return _RETRY_AFTER_TOO_LONG
        else:
            delay = retry_after
        if delay >= remaining:
            return _DEADLINE
        if not self._budget.try_withdraw():
            return _BUDGET
        return Decision(True, delay, REASON_RETRY)
