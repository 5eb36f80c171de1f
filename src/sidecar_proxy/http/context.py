"""What every connection of one proxy shares: settings, pool, policies, recorder, health.

Built once by the server; each protocol instance keeps one reference, so the hot path reaches any
of these with a single attribute load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sidecar_proxy.http.pool import UpstreamPool
from sidecar_proxy.policy.backoff import Backoff
from sidecar_proxy.policy.breaker import BreakerState, CircuitBreaker, OpenReason
from sidecar_proxy.policy.budget import RetryBudget
from sidecar_proxy.policy.retry import RetryPolicy
from sidecar_proxy.policy.shedding import ConcurrencyLimit

if TYPE_CHECKING:
    from sidecar_proxy.admin.health import HealthState
    from sidecar_proxy.config import Settings
    from sidecar_proxy.http.downstream import DownstreamConnection
    from sidecar_proxy.observe.metrics import Metrics
    from sidecar_proxy.observe.recorder import Recorder

log = logging.getLogger("sidecar_proxy.breaker")

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
        self.breaker = CircuitBreaker(
            settings.circuit_breaker_threshold,
            settings.circuit_breaker_timeout,
            settings.circuit_breaker_half_open_requests,
            loop.time,
            on_transition=self._breaker_transition,
            slow_call_duration=settings.circuit_breaker_slow_call_duration,
            slow_call_rate=settings.circuit_breaker_slow_call_rate,
            window=settings.circuit_breaker_window,
        )
        self.budget = budget = RetryBudget(
            settings.retry_budget_ratio,
            settings.retry_budget_min_per_second,
            settings.retry_budget_ttl,
            loop.time,
        )
        self.retry = RetryPolicy(
            settings.max_retries,
            settings.retry_on,
            Backoff(settings.retry_backoff, settings.retry_max_backoff),
            budget,
        )
        self.limiter = ConcurrencyLimit(settings.max_in_flight)
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

    def _breaker_transition(
        self, old: BreakerState, new: BreakerState, reason: OpenReason | None
    ) -> None:
        self.metrics.on_breaker_transition(old, new, reason)
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        extra = {"from": old.name.lower()}
        if reason is not None:
            extra["reason"] = reason.value
        log.log(level, "circuit breaker " + new.name.lower(), extra=extra)
