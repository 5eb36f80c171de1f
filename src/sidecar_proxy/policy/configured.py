"""The policies as the settings configure them, and the factory the data path gets them from.

One place maps settings to the policies' constructor arguments, for one process
(:class:`LocalPolicies`: the plain classes, state in the process alone) and for the pod-wide
policies of several worker processes (``sidecar_proxy.workers.shared``, whose classes keep the
same classes' state in shared memory). The data path asks a :class:`Policies` for them and sees
only the interfaces of :mod:`.interfaces`, so it is the same code either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sidecar_proxy.policy.allowance import Allowance
from sidecar_proxy.policy.breaker import CircuitBreaker, Transition
from sidecar_proxy.policy.budget import RetryBudget
from sidecar_proxy.policy.clock import Clock
from sidecar_proxy.policy.interfaces import Breaker, Budget, Limiter, Quota
from sidecar_proxy.policy.ratelimit import RateLimit
from sidecar_proxy.policy.shedding import ConcurrencyLimit

if TYPE_CHECKING:
    from sidecar_proxy.config import Settings


class Policies(Protocol):
    """Builds the policies that every connection of the proxy shares, from the settings: at
    start-up, and again for a reload that changes the budget's, the rate limit's or the
    spool's."""

    def breaker(self, settings: Settings, on_transition: Transition) -> Breaker: ...

    def budget(self, settings: Settings) -> Budget: ...

    def limiter(self, settings: Settings) -> Limiter: ...

    def rate_limit(self, settings: Settings) -> RateLimit | None: ...

    def spool_quota(self, settings: Settings) -> Quota: ...


class LocalPolicies:
    """This process's own policies: the plain classes, state in this process alone."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def breaker(self, settings: Settings, on_transition: Transition) -> Breaker:
        return new_breaker(settings, self._clock, on_transition)

    def budget(self, settings: Settings) -> Budget:
        return new_budget(settings, self._clock)

    def limiter(self, settings: Settings) -> Limiter:
        return ConcurrencyLimit(settings.max_in_flight)

    def rate_limit(self, settings: Settings) -> RateLimit | None:
        return new_rate_limit(settings, self._clock)

    def spool_quota(self, settings: Settings) -> Quota:
        return Allowance(settings.retry_spool_max_total)


def new_breaker(s: Settings, clock: Clock, on_transition: Transition) -> CircuitBreaker:
    """The breaker the settings ask for."""
    return CircuitBreaker(
        s.circuit_breaker_threshold,
        s.circuit_breaker_timeout,
        s.circuit_breaker_half_open_requests,
        clock,
        on_transition=on_transition,
        slow_call_duration=s.circuit_breaker_slow_call_duration,
        slow_call_rate=s.circuit_breaker_slow_call_rate,
        window=s.circuit_breaker_window,
    )


def new_budget(s: Settings, clock: Clock) -> RetryBudget:
    """The retry budget the settings ask for."""
    return RetryBudget(
        s.retry_budget_ratio, s.retry_budget_min_per_second, s.retry_budget_ttl, clock
    )


def new_rate_limit(s: Settings, clock: Clock, shares: int = 1) -> RateLimit | None:
    """The rate limit the settings ask for (``shares``: see :class:`RateLimit`), or ``None``
    when it is off."""
    if not s.rate_limit_rps:
        return None  # off: the data path's whole cost is one `is None`
    return RateLimit(
        s.rate_limit_rps,
        s.rate_limit_burst,
        clock,
        per_client=s.rate_limit_key == "client_ip",
        max_keys=s.rate_limit_max_keys,
        trust_forwarded=s.trust_forwarded_headers,
        shares=shares,
    )


def budget_settings(s: Settings) -> tuple[float, int, float]:
    """The settings the retry budget is made with: a reload that changes any starts it afresh."""
    return s.retry_budget_ratio, s.retry_budget_min_per_second, s.retry_budget_ttl
