"""What every connection of one proxy shares: settings, pool, policies, recorder, health.

Built once by the server; each protocol instance keeps one reference, so the hot path reaches any
of these with a single attribute load. A reload (:meth:`ProxyContext.reconfigure`) replaces the
settings and brings the policies in line in one call on the loop thread: every request reads
``ctx.settings`` and the policies afresh where it needs them, so none sees new settings beside
old policies.

The breaker, retry budget, concurrency limit and rate limit come from a
:class:`~sidecar_proxy.policy.configured.Policies` factory: ``LocalPolicies`` (the default)
builds the plain classes, and a worker of a multi-process sidecar passes one whose policies are
shared by the whole pod.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from sidecar_proxy.hooks.load import Hooks
from sidecar_proxy.http.batch import TurnWrites
from sidecar_proxy.http.hookstep import HookStep
from sidecar_proxy.http.legs import AppPool
from sidecar_proxy.http.phase import IllegalTransition
from sidecar_proxy.http.pool import H1Pool
from sidecar_proxy.policy.backoff import Backoff
from sidecar_proxy.policy.breaker import BreakerState, OpenReason
from sidecar_proxy.policy.configured import LocalPolicies, Policies, budget_settings
from sidecar_proxy.policy.retry import RetryPolicy
from sidecar_proxy.replay.spool import SpoolArea, spool_directory

if TYPE_CHECKING:
    from sidecar_proxy.config import Settings
    from sidecar_proxy.lifecycle.health import HealthState
    from sidecar_proxy.observe.metrics import Metrics
    from sidecar_proxy.observe.record import Record
    from sidecar_proxy.tls.upstream import UpstreamTLS

log = logging.getLogger("sidecar_proxy.breaker")
bug_log = logging.getLogger("sidecar_proxy.exchange")

# How often deadlines are checked: the precision of every timeout the proxy enforces on clients
# and on the app (per-try timeouts and retry backoff use real timers and are exact).
TICK = 0.05


def app_pool(
    loop: asyncio.AbstractEventLoop,
    settings: Settings,
    metrics: Metrics,
    upstream_tls: UpstreamTLS | None = None,
) -> AppPool:
    """The app pool the settings ask for: HTTP/1.1 connections, or h2c streams."""
    if settings.upstream_protocol == "h2c":
        # Imported only here, as the client side's HTTP/2 leg is (see h1/client.py).
        from sidecar_proxy.http.h2.app import H2AppPool  # noqa: PLC0415

        return H2AppPool(loop, settings, metrics.on_upstream_connection, metrics.h2.app)
    return new_pool(loop, settings, metrics, upstream_tls)


def new_pool(
    loop: asyncio.AbstractEventLoop,
    settings: Settings,
    metrics: Metrics,
    upstream_tls: UpstreamTLS | None = None,
) -> H1Pool:
    """The HTTP/1.1 app pool."""
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
        tls=upstream_tls,
    )


class RecordSink(Protocol):
    """Where records go: the Recorder in a proxy (metrics and the access log)."""

    def started(self) -> None: ...

    def finished(self, rec: Record) -> None: ...


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
        "goodbye",
        "health",
        "hooks",
        "limiter",
        "loop",
        "metrics",
        "policies",
        "pool",
        "rate_limit",
        "recorder",
        "retry",
        "settings",
        "spool",
        "ticker",
        "writes",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        metrics: Metrics,
        recorder: RecordSink,
        health: HealthState,
        *,
        pool: AppPool | None = None,
        upstream_tls: UpstreamTLS | None = None,
        policies: Policies | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.metrics = metrics
        self.recorder = recorder
        self.health = health
        # Tests give a pool of fake legs; a proxy makes the one its settings ask for.
        self.pool: AppPool = pool or app_pool(loop, settings, metrics, upstream_tls)
        self.policies: Policies = LocalPolicies(loop.time) if policies is None else policies
        self.breaker = self.policies.breaker(settings, self._breaker_transition)
        self.limiter = self.policies.limiter(settings)
        self.budget = self.policies.budget(settings)
        self.retry = self._retry(settings)
        self.rate_limit = self.policies.rate_limit(settings)
        self.hooks = self._hooks(hooks, settings)
        self.spool = self._spool(settings)
        self.failure_statuses = settings.circuit_breaker_failure_statuses
        self.connections: set[ClientConnection] = set()
        # Shutdown, in two steps (see server.ProxyServer.shutdown): from the signal on every
        # response says goodbye (Connection: close); once the listener has closed, idle
        # connections close too.
        self.goodbye = False
        self.draining = False
        self.ticker: asyncio.TimerHandle | None = None
        self.writes = TurnWrites(loop)  # responses held for the end of the loop's turn

    def _retry(self, s: Settings) -> RetryPolicy:
        backoff = Backoff(s.retry_backoff, s.retry_max_backoff)
        return RetryPolicy(s.max_retries, s.retry_on, backoff, self.budget, s.grpc_retry_on)

    def _hooks(self, hooks: Hooks | None, s: Settings) -> HookStep | None:
        if hooks is None:
            return None  # off: the data path's whole cost is one `is None`
        return HookStep(hooks, self.loop, s.hook_timeout, self.metrics.hook_error)

    def _spool(self, s: Settings) -> SpoolArea | None:
        if not s.retry_spool_limit:
            return None  # off: a body over retry_buffer_limit is simply not replayable
        return SpoolArea(
            spool_directory(s.retry_spool_dir),
            s.retry_spool_limit,
            self.policies.spool_quota(s),
            self.loop.time,
            self.metrics.spool_error,
        )

    def reconfigure(self, settings: Settings, hooks: Hooks | None) -> None:
        """A reload: run with ``settings`` and ``hooks`` (loaded again from their file) from the
        next event on.

        Policies that hold state about the app or the requests in flight are reconfigured in
        place: the breaker keeps its state, the concurrency limit its places taken (a new limit
        object would be released into by requests that acquired the old one). The retry budget,
        the rate limit's buckets and the spool area start afresh only when one of their own
        settings changed (spools under way finish in the area they started in);
        the retry policy and its backoff hold nothing and are simply made again, and so is the
        hooks' step (exchanges under way finish with the hooks they started with). Settings that
        are not live (``Field.live``) must already carry their old values here; the pool is
        built from those alone.
        """
        old, self.settings = self.settings, settings
        s = settings
        self.breaker.reconfigure(
            s.circuit_breaker_threshold,
            s.circuit_breaker_timeout,
            s.circuit_breaker_half_open_requests,
        )
        self.limiter.set_limit(s.max_in_flight)
        if budget_settings(old) != budget_settings(s):
            self.budget = self.policies.budget(s)
        self.retry = self._retry(s)
        if _rate_limit_settings(old) != _rate_limit_settings(s):
            self.rate_limit = self.policies.rate_limit(s)
        self.hooks = self._hooks(hooks, s)
        if _spool_settings(old) != _spool_settings(s):
            self.spool = self._spool(s)
        self.failure_statuses = s.circuit_breaker_failure_statuses

    def say_goodbye(self) -> None:
        """Shutdown has begun: every response from now on carries ``Connection: close`` and
        its connection closes after it, while the listener still accepts. A client learns on
        its next response to reconnect, instead of racing the close of an idle connection."""
        self.goodbye = True

    def drain(self) -> None:
        """The listener has closed: close idle keep-alive connections now; busy ones close
        after their response."""
        self.goodbye = self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()

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

    def _breaker_transition(
        self, old: BreakerState, new: BreakerState, reason: OpenReason | None
    ) -> None:
        self.metrics.on_breaker_transition(old, new, reason)
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        extra = {"from": old.name.lower()}
        if reason is not None:
            extra["reason"] = reason.value
        log.log(level, "circuit breaker " + new.name.lower(), extra=extra)


def _spool_settings(s: Settings) -> tuple[int, str, int]:
    return s.retry_spool_limit, s.retry_spool_dir, s.retry_spool_max_total


def _rate_limit_settings(s: Settings) -> tuple[float, int, str, int, bool]:
    return (
        s.rate_limit_rps,
        s.rate_limit_burst,
        s.rate_limit_key,
        s.rate_limit_max_keys,
        s.trust_forwarded_headers,
    )
