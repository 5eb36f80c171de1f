"""Resilience policies: retry, backoff, retry budget, circuit breaker and load shedding.

These are the decisions the data path asks for on every request (may it go? may it go again,
and when?), written as plain classes with no I/O, no event loop and no locks. They run on the
proxy's single event-loop thread, so they are ``__slots__`` objects doing a few integer and float
operations per call; the few values the metrics thread reads (breaker state, requests in flight)
are plain attributes, safe to read from there. Time comes from an injected :data:`Clock` and
randomness from an injected function, so the tests drive them exactly, without sleeping.
"""

from sidecar_proxy.policy.backoff import Backoff, parse_retry_after
from sidecar_proxy.policy.breaker import BreakerState, CircuitBreaker, OpenReason
from sidecar_proxy.policy.budget import RetryBudget
from sidecar_proxy.policy.clock import Clock
from sidecar_proxy.policy.interfaces import Breaker, Budget, Limiter
from sidecar_proxy.policy.retry import IDEMPOTENT_METHODS, Decision, Failure, RetryPolicy
from sidecar_proxy.policy.shedding import ConcurrencyLimit

__all__ = [
    "IDEMPOTENT_METHODS",
    "Backoff",
    "Breaker",
    "BreakerState",
    "Budget",
    "CircuitBreaker",
    "Clock",
    "ConcurrencyLimit",
    "Decision",
    "Failure",
    "Limiter",
    "OpenReason",
    "RetryBudget",
    "RetryPolicy",
    "parse_retry_after",
]
