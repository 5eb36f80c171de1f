"""What every connection of one proxy shares: settings, pool, policies, recorder, health.

Built once by the server; each protocol instance keeps one reference, so the hot path reaches any
of these with a single attribute load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from sidecar_proxy.http.h2.app import H2AppPool
from sidecar_proxy.http.legs import AppPool
from sidecar_proxy.http.phase import IllegalTransition
from sidecar_proxy.http.pool import H1Pool
from sidecar_proxy.policy.backoff import Backoff
from sidecar_proxy.policy.breaker import BreakerState, CircuitBreaker
from sidecar_proxy.policy.budget import RetryBudget
from sidecar_proxy.policy.retry import RetryPolicy
from sidecar_proxy.policy.shedding import ConcurrencyLimit

if TYPE_CHECKING:
    from sidecar_proxy.config import Settings
    from sidecar_proxy.health import HealthState
    from sidecar_proxy.observe.metrics import Metrics
    from sidecar_proxy.observe.recorder import Recorder

log = logging.getLogger("sidecar_proxy.breaker")
bug_log = logging.getLogger("sidecar_proxy.exchange")

# How often deadlines are checked: the precision of every timeout the proxy enforces on clients
# and on the app (per-try timeouts and retry backoff use real timers and are exact).
TICK = 0.05


class ClientConnection(Protocol):
    """What the context and the server's drain need of each open client connection."""

    def on_tick(self, now: float) -> None: ...

    def close_if_idle(self) -> bool: ...

    def close_transport(self) -> None: ...

    def abort(self) -> None: ...


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
        pool: AppPool | None = None,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.metrics = metrics
        self.recorder = recorder
        self.health = health
        # Tests give a pool of fake legs; a proxy makes the one its settings ask for.
        self.pool: AppPool = pool or _app_pool(loop, settings, metrics)
        self.breaker = CircuitBreaker(
            settings.circuit_breaker_threshold,
            settings.circuit_breaker_timeout,
            settings.circuit_breaker_half_open_requests,
            loop.time,
            on_transition=self._breaker_transition,
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
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.ticker: asyncio.TimerHandle | None = None

    def start_ticking(self) -> None:
        """One timer for every deadline of every connection, instead of timers per request."""
        now = self.loop.time()
        for conn in list(self.connections):
            try:
                conn.on_tick(now)
            except IllegalTransition:
                # A bug of ours: cut that connection, keep ticking for every other one.
                bug_log.exception("exchange aborted")
                conn.abort()
        self.ticker = self.loop.call_later(TICK, self.start_ticking)

    def stop_ticking(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None

    def _breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        self.metrics.on_breaker_transition(old, new)
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        log.log(level, "circuit breaker " + new.name.lower(), extra={"from": old.name.lower()})


def _app_pool(loop: asyncio.AbstractEventLoop, settings: Settings, metrics: Metrics) -> AppPool:
    if settings.upstream_protocol == "h2c":
        return H2AppPool(loop, settings, metrics.on_upstream_connection)
    return H1Pool(
        loop,
        settings.upstream_host,
        settings.upstream_port,
        max_idle=settings.upstream_max_idle,
        idle_timeout=settings.upstream_idle_timeout,
        connect_timeout=settings.connect_timeout,
        max_head_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        on_connection=metrics.on_upstream_connection,
    )
