"""Every Prometheus metric the sidecar exposes, in one registry.

The first five metrics are the seed's and keep its names, labels, buckets and help strings, so
existing dashboards and alerts keep working; the rest are new. Each :class:`Metrics` owns its own
:class:`~prometheus_client.CollectorRegistry` rather than the process-global one, so tests can
build as many as they like and the scrape contains exactly these metrics.

Per-request updates go through :class:`~sidecar_proxy.observe.recorder.Recorder`, which caches the
labelled children it needs and feeds ``sidecar_requests_in_flight`` from its own counter; the
methods here are for the events that happen outside a request: breaker transitions, upstream
connections, client connections and access-log drops.

Label values known in advance (error types, rejection reasons, breaker states) are created up
front, so their series exist at zero from the first scrape and ``rate()`` over them works before
the first error rather than appearing out of nowhere.
"""

from __future__ import annotations

import platform

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar_proxy import __version__
from sidecar_proxy.observe import exchange

# The seed's request-duration buckets, also used for the upstream response time so the two can
# be compared bucket by bucket.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# sidecar_circuit_breaker_transitions_total{to} values, indexed by the breaker state's
# sidecar_circuit_breaker_state value (the seed's encoding: 0 closed, 1 open, 2 half-open).
BREAKER_STATES = ("closed", "open", "half_open")

UPSTREAM_ERROR_TYPES = (
    exchange.ERR_CONNECTION,
    exchange.ERR_5XX,
    exchange.ERR_CIRCUIT_OPEN,
    exchange.ERR_TIMEOUT,
    exchange.ERR_RESET,
    exchange.ERR_PROTOCOL,
)
REJECT_SHED = "shed"
REJECT_CIRCUIT_OPEN = "circuit_open"

# prometheus_client adds a ``<name>_created`` series beside every counter and histogram child.
# The Go client of the seed does not, and in the text format each one is an extra series per
# child; dashboards do not use them. The switch is process-wide, and this registry is the only
# one the process serves.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The sidecar's metrics; ``registry`` is what the admin server exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The seed's five.
        self.requests_total = Counter(
            "sidecar_requests_total",
            "Total number of requests processed by the sidecar",
            ("method", "path", "status"),
            registry=r,
        )
        self.request_duration = Histogram(
            "sidecar_request_duration_seconds",
            "Request duration in seconds",
            ("method", "path"),
            buckets=BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "sidecar_requests_in_flight",
            "Number of requests currently being processed",
            registry=r,
        )
        self.upstream_errors = Counter(
            "sidecar_upstream_errors_total",
            "Total number of upstream errors",
            ("type",),
            registry=r,
        )
        self.circuit_breaker_state = Gauge(
            "sidecar_circuit_breaker_state",
            "Circuit breaker state (0=closed, 1=open, 2=half-open)",
            registry=r,
        )
        # Added by this sidecar.
        self.circuit_breaker_transitions = Counter(
            "sidecar_circuit_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered",
            ("to",),
            registry=r,
        )
        self.upstream_response = Histogram(
            "sidecar_upstream_response_seconds",
            "Time from the request head to the app's response head, in seconds",
            ("method",),
            buckets=BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "sidecar_retries_total", "Retry attempts sent to the app", registry=r
        )
        self.retries_budget_exhausted = Counter(
            "sidecar_retries_budget_exhausted_total",
            "Retries not sent because the retry budget was exhausted",
            registry=r,
        )
        self.requests_rejected = Counter(
            "sidecar_requests_rejected_total",
            "Requests answered without contacting the app, by reason",
            ("reason",),
            registry=r,
        )
        self.upstream_connections_opened = Counter(
            "sidecar_upstream_connections_opened_total",
            "New connections opened to the app",
            registry=r,
        )
        self.upstream_connections_reused = Counter(
            "sidecar_upstream_connections_reused_total",
            "Requests sent on an already open (pooled) connection to the app",
            registry=r,
        )
        self.request_bytes = Counter(
            "sidecar_request_bytes_total", "Request body bytes received from clients", registry=r
        )
        self.response_bytes = Counter(
            "sidecar_response_bytes_total", "Response body bytes sent to clients", registry=r
        )
        self.downstream_connections = Gauge(
            "sidecar_downstream_connections", "Open client connections", registry=r
        )
        self.access_log_dropped = Counter(
            "sidecar_access_log_dropped_total",
            "Access log lines dropped because stdout could not keep up",
            registry=r,
        )
        build_info = Gauge(
            "sidecar_build_info",
            "Build information; the value is always 1",
            ("version", "python"),
            registry=r,
        )
        build_info.labels(__version__, platform.python_version()).set(1)

        for error_type in UPSTREAM_ERROR_TYPES:
            self.upstream_errors.labels(error_type)
        for reason in (REJECT_SHED, REJECT_CIRCUIT_OPEN):
            self.requests_rejected.labels(reason)
        self._transitions = tuple(
            self.circuit_breaker_transitions.labels(s) for s in BREAKER_STATES
        )

    def on_breaker_transition(self, old: int, new: int) -> None:
        """The breaker moved from state ``old`` to ``new``, given as gauge values (0, 1, 2).

        The breaker's ``IntEnum`` states are those values. It calls this synchronously on every
        transition, so the gauge is never stale (the seed set it only on requests it let through,
        so it read "closed" while the breaker was open). ``old`` completes the callback's
        signature; the metrics only need ``new``.
        """
        self.circuit_breaker_state.set(new)
        self._transitions[new].inc()

    def on_upstream_connection(self, reused: bool) -> None:
        """A request to the app got a connection: a pooled one (``reused``) or a new one."""
        if reused:
            self.upstream_connections_reused.inc()
        else:
            self.upstream_connections_opened.inc()

    def connection_opened(self) -> None:
        """A client connection was accepted."""
        self.downstream_connections.inc()

    def connection_closed(self) -> None:
        """A client connection was closed."""
        self.downstream_connections.dec()

    def access_log_drop(self, lines: int) -> None:
        """``on_drop`` callback for :class:`~sidecar_proxy.observe.accesslog.AccessLog`."""
        self.access_log_dropped.inc(lines)
