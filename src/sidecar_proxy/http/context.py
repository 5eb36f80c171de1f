"""What every connection of one proxy shares: settings, pool, policies, recorder, health.

Built once by the server; each protocol instance keeps one reference, so the hot path reaches any
of these with a single attribute load. The breaker, retry budget and concurrency limit come from
a :class:`Policies` factory: :class:`LocalPolicies` (the default) builds the plain classes, and a
worker of a multi-process sidecar passes one whose policies are shared by the whole pod.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sidecar_proxy.http.pool import UpstreamPool
from sidecar_proxy.policy.backoff import Backoff
from sidecar_proxy.policy.breaker import BreakerState, CircuitBreaker
from sidecar_proxy.policy.budget import RetryBudget
from sidecar_proxy.policy.clock import Clock
from sidecar_proxy.policy.interfaces import Breaker, Budget, Limiter
from sidecar_proxy.policy.retry import RetryPolicy
from sidecar_proxy.policy.shedding import ConcurrencyLimit

if TYPE_CHECKING:
    from sidecar_proxy.admin.health import HealthState
    from sidecar_proxy.config import Settings
    from sidecar_proxy.http.downstream import DownstreamConnection
    from sidecar_proxy.observe.metrics import Metrics
    from sidecar_proxy.observe.recorder import Recorder

log = logging.getLogger("sidecar_proxy.breaker")

Transition = Callable[[BreakerState, BreakerState], None]


class Policies(Protocol):
    """Builds the policies that every connection of the proxy shares."""

    def breaker(self, on_transition: Transition) -> Breaker: ...

    def budget(self) -> Budget: ...

    def limiter(self) -> Limiter: ...


class LocalPolicies:
    """This process's own policies: the plain classes, state in this process alone."""

    __slots__ = ("_clock", "_settings")

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock

    def breaker(self, on_transition: Transition) -> Breaker:
        s = self._settings
        return CircuitBreaker(
            s.circuit_breaker_threshold,
            s.circuit_breaker_timeout,
            s.circuit_breaker_half_open_requests,
            self._clock,
            on_transition=on_transition,
        )

    def budget(self) -> Budget:
        s = self._settings
        return RetryBudget(
            s.retry_budget_ratio, s.retry_budget_min_per_second, s.retry_budget_ttl, self._clock
        )

    def limiter(self) -> Limiter:
        return ConcurrencyLimit(self._settings.max_in_flight)


# How often deadlines are checked: the precision of every timeout the proxy enforces on clients
# and on the app (per-try timeouts and retry backoff use real timers and are exact).
TICK = 0.05


class ProxyContext:
    __slots__ = (
        "breaker",
        "budget",
        "connections",
        "draining",
        "failure_statuses",
        "health",
        "limiter",
        "loop",
        "metrics",
        "pool",
        "recorder",
        "retry",
        "settings",
        "ticker",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        metrics: Metrics,
        recorder: Recorder,
        health: HealthState,
        *,
        policies: Policies | None = None,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.metrics = metrics
        self.recorder = recorder
        self.health = health
        self.pool = UpstreamPool(
            loop,
            settings.upstream_host,
            settings.upstream_port,
            max_idle=settings.upstream_max_idle,
            idle_timeout=settings.upstream_idle_timeout,
            connect_timeout=settings.connect_timeout,
            max_head_bytes=settings.max_header_bytes,
            on_connection=metrics.on_upstream_connection,
        )
        if policies is None:
            policies = LocalPolicies(settings, loop.time)
        self.breaker = policies.breaker(self._breaker_transition)
        self.budget = budget = policies.budget()
        self.retry = RetryPolicy(
            settings.max_retries,
            settings.retry_on,
            Backoff(settings.retry_backoff, settings.retry_max_backoff),
            budget,
        )
        self.limiter = policies.limiter()
        self.failure_statuses = settings.circuit_breaker_failure_statuses
        self.connections: set[DownstreamConnection] = set()
        self.draining = False
        self.ticker: asyncio.TimerHandle | None = None

    def start_ticking(self) -> None:
        """One timer for every deadline of every connection, instead of timers per request."""
        now = self.loop.time()
        for conn in list(self.connections):
            conn.on_tick(now)
        self.ticker = self.loop.call_later(TICK, self.start_ticking)

    def stop_ticking(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None

    def _breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        self.metrics.on_breaker_transition(old, new)
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        log.log(level, "circuit breaker " + new.name.lower(), extra={"from": old.name.lower()})
