"""Every Prometheus metric the sidecar exposes, in one registry.

The first five metrics are the seed's and keep its names, labels, buckets and help strings, so
existing dashboards and alerts keep working; the rest are new. Each :class:`Metrics` owns its own
:class:`~prometheus_client.CollectorRegistry` rather than the process-global one, so tests can
build as many as they like and the scrape contains exactly these metrics.

The series every request touches (requests, durations, upstream response time, bytes, in-flight,
pooled connections) are :class:`RequestSeries`: plain numbers only the event loop writes, exposed
by a custom collector that snapshots them when scraped. prometheus-client's own metric objects take
a lock per update, and a request made seven of them: ~4 us of the request's cost, against ~1 us
now. Metrics of the rare paths (errors, retries, breaker, rejections) stay prometheus-client
objects. The methods here are for the events that happen outside a request: breaker transitions,
upstream connections, client connections, access-log drops, app readiness and reloads.

A scrape reads the numbers while the loop may be changing them. Each read is atomic under the GIL;
what is not is the set as a whole, so a histogram's ``_sum`` may already include an observation
its buckets do not yet show (never the reverse for ``_count``, which is derived from the buckets).
The next scrape is consistent again, and rates are unaffected.

Label values known in advance (error types, rejection reasons, breaker states) are created up
front, so their series exist at zero from the first scrape and ``rate()`` over them works before
the first error rather than appearing out of nowhere.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Final

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from sidecar_proxy.buildinfo import build_info
from sidecar_proxy.observe import record
from sidecar_proxy.observe.slo import SloWindows
from sidecar_proxy.tls.accept import HANDSHAKE_ERRORS
from sidecar_proxy.tls.material import CertInfo

# The seed's request-duration buckets, also used for the upstream response time so the two can
# be compared bucket by bucket.
# Typed as a tuple of any length, and Final: mypyc keeps a fixed-length tuple of floats unboxed,
# so every use as an object (bisect, a loop) built a fresh tuple of twelve boxed floats, and a
# module global that is not Final is a dictionary lookup by name on every read.
BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip

# sidecar_circuit_breaker_transitions_total{to} values, indexed by the breaker state's
# sidecar_circuit_breaker_state value (the seed's encoding: 0 closed, 1 open, 2 half-open).
BREAKER_STATES = ("closed", "open", "half_open")
# sidecar_circuit_breaker_opened_total{reason} values: the breaker's OpenReason values.
BREAKER_OPEN_REASONS = ("failures", "slow_calls")

UPSTREAM_ERROR_TYPES = (
    record.ERR_CONNECTION,
    record.ERR_5XX,
    record.ERR_CIRCUIT_OPEN,
    record.ERR_TIMEOUT,
    record.ERR_RESET,
    record.ERR_PROTOCOL,
)
TLS_RELOAD_RESULTS = ("success", "failure")
REJECT_SHED = "shed"
REJECT_CIRCUIT_OPEN = "circuit_open"
REJECT_RATE_LIMIT = "rate_limit"
# sidecar_hook_errors_total{hook} values
HOOKS = ("on_request", "on_response")
# sidecar_config_reloads_total{result}, by whether the reload succeeded
RELOAD_RESULTS = {True: "success", False: "failure"}
# sidecar_worker_restarts_total{reason}: the worker's process ended, or its loop stopped running
RESTART_REASONS = ("exited", "hung")

# prometheus_client adds a ``<name>_created`` series beside every counter and histogram child.
# The Go client of the seed does not, and in the text format each one is an extra series per
# child; dashboards do not use them. The switch is process-wide, and this registry is the only
# one the process serves.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


# A bucket exposes only its latest exemplar, so attaching one on every traced request would be
# wasted work; one per bucket per second is plenty.
EXEMPLAR_INTERVAL: Final = 1.0
# The "le" label values exactly as prometheus-client's own histograms write them ("1.0", "+Inf").
_LE = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]

_REQUESTS = ("sidecar_requests_total", "Total number of requests processed by the sidecar")
_DURATION = ("sidecar_request_duration_seconds", "Request duration in seconds")
_UPSTREAM = (
    "sidecar_upstream_response_seconds",
    "Time from the request head to the app's response head, in seconds",
)
_IN_FLIGHT = ("sidecar_requests_in_flight", "Number of requests currently being processed")
_REQUEST_BYTES = ("sidecar_request_bytes_total", "Request body bytes received from clients")
_RESPONSE_BYTES = ("sidecar_response_bytes_total", "Response body bytes sent to clients")
_OPENED = ("sidecar_upstream_connections_opened_total", "New connections opened to the app")
_REUSED = (
    "sidecar_upstream_connections_reused_total",
    "Requests sent on an already open (pooled) connection to the app",
)


def bucket_index(value: float) -> int:
    """The first bucket whose bound is >= ``value`` (its "le" bucket), the +Inf one past them.

    ``bisect.bisect_left`` does the same, but a call into it is a Python-level call comparing
    boxed floats: ~750 instructions per observation against ~100 for this loop, which mypyc
    compiles to C and which stops early, since most requests land in the first buckets.
    """
    i = 0
    for bound in BUCKETS:
        if value <= bound:
            return i
        i += 1
    return i


class HistogramSeries:
    """One histogram series: per-bucket counts, the sum, and rate-limited exemplars."""

    __slots__ = ("_last", "buckets", "exemplars", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] = [None] * (len(BUCKETS) + 1)
        self._last = [-math.inf] * (len(BUCKETS) + 1)  # monotonic time of each bucket's exemplar

    def observe(self, value: float, trace_id: str | None, now: float) -> None:
        """``trace_id`` is given only for traced requests; ``now`` is monotonic seconds."""
        i = bucket_index(value)
        self.buckets[i] += 1
        self.sum += value
        if trace_id is not None and now - self._last[i] >= EXEMPLAR_INTERVAL:
            self._last[i] = now
            self.exemplars[i] = Exemplar({"trace_id": trace_id}, value, time.time())

    def cumulative(self) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
        counts = self.buckets[:]  # one atomic copy, so count and buckets agree
        exemplars = self.exemplars[:]
        out: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        total = 0
        for le, n, exemplar in zip(_LE, counts, exemplars, strict=True):
            total += n
            out.append((le, float(total)) if exemplar is None else (le, float(total), exemplar))
        return out


class _SampledFamilies(Collector):
    """A collector that declares its families without samples and collects them with."""

    def describe(self) -> Iterable[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> list[Metric]:
        raise NotImplementedError


class RequestSeries(_SampledFamilies):
    """The per-request series; only the event loop thread writes them."""

    # The label names each labelled family is declared with, whether or not a series exists.
    LABEL_NAMES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
        {
            _REQUESTS[0]: ("method", "path", "status"),
            _DURATION[0]: ("method", "path"),
            _UPSTREAM[0]: ("method",),
        }
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}  # (method, path, status) -> count
        self.durations: dict[tuple[str, str], HistogramSeries] = {}  # (method, path)
        self.upstream: dict[str, HistogramSeries] = {}  # method
        self.in_flight = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.opened = 0
        self.reused = 0

    def duration(self, method: str, path: str) -> HistogramSeries:
        series = self.durations[(method, path)] = HistogramSeries()
        return series

    def upstream_response(self, method: str) -> HistogramSeries:
        series = self.upstream[method] = HistogramSeries()
        return series

    def _families(self, *, with_samples: bool) -> list[Metric]:
        labels = self.LABEL_NAMES
        requests = CounterMetricFamily(*_REQUESTS, labels=labels[_REQUESTS[0]])
        duration = HistogramMetricFamily(*_DURATION, labels=labels[_DURATION[0]])
        upstream = HistogramMetricFamily(*_UPSTREAM, labels=labels[_UPSTREAM[0]])
        families: list[Metric] = [requests, duration, upstream]
        if not with_samples:
            for name, help_text in (_IN_FLIGHT,):
                families.append(GaugeMetricFamily(name, help_text))
            for name, help_text in (_REQUEST_BYTES, _RESPONSE_BYTES, _OPENED, _REUSED):
                families.append(CounterMetricFamily(name, help_text))
            return families
        for (method, path, status), n in list(self.requests.items()):
            requests.add_metric((method, path, str(status)), n)
        for (method, path), series in list(self.durations.items()):
            duration.add_metric((method, path), series.cumulative(), series.sum)
        for method, series in list(self.upstream.items()):
            upstream.add_metric((method,), series.cumulative(), series.sum)
        families.append(GaugeMetricFamily(*_IN_FLIGHT, value=self.in_flight))
        for (name, help_text), value in (
            (_REQUEST_BYTES, self.request_bytes),
            (_RESPONSE_BYTES, self.response_bytes),
            (_OPENED, self.opened),
            (_REUSED, self.reused),
        ):
            families.append(CounterMetricFamily(name, help_text, value=value))
        return families


_GRPC_REQUESTS = (
    "sidecar_grpc_requests_total",
    "gRPC calls, by service, method and grpc_status (the call's, not the HTTP status)",
)
_GRPC_DURATION = ("sidecar_grpc_request_duration_seconds", "gRPC call duration in seconds")
_GRPC_REQUEST_MESSAGES = (
    "sidecar_grpc_request_messages_total",
    "gRPC messages from clients to the app (over calls: messages per call for streams)",
)
_GRPC_RESPONSE_MESSAGES = (
    "sidecar_grpc_response_messages_total",
    "gRPC messages from the app to clients",
)


class GrpcSeries(_SampledFamilies):
    """The per-call gRPC series, plain numbers like :class:`RequestSeries`; only gRPC calls
    touch them. ``service`` and ``method`` are bounded by the path labels' cap."""

    LABEL_NAMES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
        {
            _GRPC_REQUESTS[0]: ("service", "method", "grpc_status"),
            _GRPC_DURATION[0]: ("service", "method"),
            _GRPC_REQUEST_MESSAGES[0]: ("service", "method"),
            _GRPC_RESPONSE_MESSAGES[0]: ("service", "method"),
        }
    )

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str, str], int] = {}  # (service, method, status) -> count
        self.durations: dict[tuple[str, str], HistogramSeries] = {}
        self.request_messages: dict[tuple[str, str], int] = {}
        self.response_messages: dict[tuple[str, str], int] = {}

    def record(
        self, key: tuple[str, str], status: str, duration: float, sent: int, received: int
    ) -> None:
        """One call that is over: ``sent`` messages from the client, ``received`` from the app."""
        calls = self.calls
        ckey = (key[0], key[1], status)
        calls[ckey] = calls.get(ckey, 0) + 1
        histogram = self.durations.get(key)
        if histogram is None:
            histogram = self.durations[key] = HistogramSeries()
        histogram.observe(duration, None, 0.0)
        self.request_messages[key] = self.request_messages.get(key, 0) + sent
        self.response_messages[key] = self.response_messages.get(key, 0) + received

    def _families(self, *, with_samples: bool) -> list[Metric]:
        labels = self.LABEL_NAMES
        calls = CounterMetricFamily(*_GRPC_REQUESTS, labels=labels[_GRPC_REQUESTS[0]])
        duration = HistogramMetricFamily(*_GRPC_DURATION, labels=labels[_GRPC_DURATION[0]])
        sent = CounterMetricFamily(
            *_GRPC_REQUEST_MESSAGES, labels=labels[_GRPC_REQUEST_MESSAGES[0]]
        )
        received = CounterMetricFamily(
            *_GRPC_RESPONSE_MESSAGES, labels=labels[_GRPC_RESPONSE_MESSAGES[0]]
        )
        if with_samples:
            for key3, n in list(self.calls.items()):
                calls.add_metric(key3, n)
            for key, series in list(self.durations.items()):
                duration.add_metric(key, series.cumulative(), series.sum)
            for key, n in list(self.request_messages.items()):
                sent.add_metric(key, n)
            for key, n in list(self.response_messages.items()):
                received.add_metric(key, n)
        return [calls, duration, sent, received]


# sidecar_h2_* label values. The error codes' names are RFC 9113 §7's, indexed by code; a peer
# may send any 32-bit code, and those past the table are counted as one name, so a peer cannot
# add series.
H2_LEGS = ("client", "app")
H2_ERROR_CODES = (
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
    "UNKNOWN",
)
_UNKNOWN_CODE: Final = len(H2_ERROR_CODES) - 1
# sidecar_h2_floods_total{reason}: the protections that end a connection with ENHANCE_YOUR_CALM
FLOOD_RAPID_RESET = "rapid_reset"  # H2_MAX_RESET_RATE (CVE-2023-44487)
FLOOD_CONTROL_FRAMES = "control_frames"  # H2_MAX_CONTROL_FRAME_RATE
FLOOD_HEADER_BLOCK = "header_block"  # a header block's frames too large (CVE-2024-27316)
FLOOD_HEADER_LIST = "header_list"  # a header block decoding too large (the HPACK bomb)
FLOOD_HEADER_TIME = "header_time"  # a header block not completed in time
H2_FLOODS = (
    FLOOD_RAPID_RESET,
    FLOOD_CONTROL_FRAMES,
    FLOOD_HEADER_BLOCK,
    FLOOD_HEADER_LIST,
    FLOOD_HEADER_TIME,
)

_H2_STREAMS = ("sidecar_h2_streams_active", "Open HTTP/2 streams, by leg (client or app)")
_H2_RESETS = (
    "sidecar_h2_resets_total",
    "HTTP/2 RST_STREAM frames, by leg, direction (sent or received) and error code",
)
_H2_GOAWAY = (
    "sidecar_h2_goaway_total",
    "HTTP/2 GOAWAY frames, by leg, direction (sent or received) and error code",
)
_H2_FLOODS = (
    "sidecar_h2_floods_total",
    "HTTP/2 connections closed with ENHANCE_YOUR_CALM by a flood protection, by leg and reason",
)
_H2_KEEPALIVE = (
    "sidecar_h2_keepalive_timeouts_total",
    "HTTP/2 connections to the app closed because a keepalive PING went unanswered",
)


class H2Counts:
    """One leg's HTTP/2 numbers, written by its connections on the event loop: plain numbers,
    like :class:`RequestSeries`, since every HTTP/2 request opens and closes a stream."""

    __slots__ = ("floods", "goaways", "keepalive_timeouts", "resets", "streams_active")

    def __init__(self) -> None:
        self.streams_active = 0
        self.resets: dict[tuple[bool, int], int] = {}  # (sent by us, code) -> frames
        self.goaways: dict[tuple[bool, int], int] = {}
        self.floods = dict.fromkeys(H2_FLOODS, 0)
        self.keepalive_timeouts = 0

    def stream_opened(self) -> None:
        self.streams_active += 1

    def stream_closed(self) -> None:
        self.streams_active -= 1

    def keepalive_timeout(self) -> None:
        self.keepalive_timeouts += 1

    def reset(self, sent: bool, code: int) -> None:
        key = (sent, min(code, _UNKNOWN_CODE))
        self.resets[key] = self.resets.get(key, 0) + 1

    def goaway(self, sent: bool, code: int) -> None:
        key = (sent, min(code, _UNKNOWN_CODE))
        self.goaways[key] = self.goaways.get(key, 0) + 1

    def flood(self, reason: str) -> None:
        """``reason`` is one of :data:`H2_FLOODS`."""
        self.floods[reason] += 1


class H2Series(_SampledFamilies):
    """The HTTP/2 series of both legs: the client leg's connections write ``client``, the app
    pool's ``app``."""

    LABEL_NAMES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
        {
            _H2_STREAMS[0]: ("leg",),
            _H2_RESETS[0]: ("leg", "direction", "code"),
            _H2_GOAWAY[0]: ("leg", "direction", "code"),
            _H2_FLOODS[0]: ("leg", "reason"),
        }
    )

    def __init__(self) -> None:
        self.client = H2Counts()
        self.app = H2Counts()

    def _families(self, *, with_samples: bool) -> list[Metric]:
        labels = self.LABEL_NAMES
        streams = GaugeMetricFamily(*_H2_STREAMS, labels=labels[_H2_STREAMS[0]])
        resets = CounterMetricFamily(*_H2_RESETS, labels=labels[_H2_RESETS[0]])
        goaway = CounterMetricFamily(*_H2_GOAWAY, labels=labels[_H2_GOAWAY[0]])
        floods = CounterMetricFamily(*_H2_FLOODS, labels=labels[_H2_FLOODS[0]])
        families: list[Metric] = [streams, resets, goaway, floods]
        if not with_samples:
            families.append(CounterMetricFamily(*_H2_KEEPALIVE))
            return families
        for leg, counts in zip(H2_LEGS, (self.client, self.app), strict=True):
            streams.add_metric((leg,), counts.streams_active)
            for family, frames in ((resets, counts.resets), (goaway, counts.goaways)):
                for (sent, code), n in list(frames.items()):
                    direction = "sent" if sent else "received"
                    family.add_metric((leg, direction, H2_ERROR_CODES[code]), n)
            for reason, n in list(counts.floods.items()):
                floods.add_metric((leg, reason), n)
        families.append(CounterMetricFamily(*_H2_KEEPALIVE, value=self.app.keepalive_timeouts))
        return families


_BURN_RATE = (
    "sidecar_slo_burn_rate",
    "Error-budget burn rate over the window: the bad share of requests divided by the budget",
)
_BUDGET_LEFT = (
    "sidecar_slo_error_budget_remaining",
    "Share of the 30-day error budget left, over what this process has seen (negative: overspent)",
)


class SloSeries(Collector):
    """The SLO gauges, computed from :class:`~sidecar_proxy.observe.slo.SloWindows` when scraped.

    The families are always declared; they have samples only for the SLOs that are on.
    ``clock`` must be the clock the recorder stamps requests with (``time.monotonic``).
    """

    LABEL_NAMES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
        {_BURN_RATE[0]: ("slo", "window"), _BUDGET_LEFT[0]: ("slo",)}
    )

    def __init__(self, windows: SloWindows | None, clock: Callable[[], float]) -> None:
        self._windows = windows
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(self._windows)

    def _families(self, windows: SloWindows | None = None) -> list[Metric]:
        labels = self.LABEL_NAMES
        burn = GaugeMetricFamily(*_BURN_RATE, labels=labels[_BURN_RATE[0]])
        left = GaugeMetricFamily(*_BUDGET_LEFT, labels=labels[_BUDGET_LEFT[0]])
        if windows is not None:
            burn_rates, budgets = windows.report(self._clock())
            for slo, window, rate in burn_rates:
                burn.add_metric((slo, window), rate)
            for slo, remaining in budgets:
                left.add_metric((slo,), remaining)
        return [burn, left]


class Metrics:
    """The sidecar's metrics; ``registry`` is what the admin server exposes.

    ``slo`` are the SLO windows the recorder feeds and the scrape reports; ``None`` when no SLO
    is set, and then the SLO gauges have no samples.
    """

    def __init__(self, slo: SloWindows | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = RequestSeries()
        r.register(self.requests)
        self.grpc = GrpcSeries()
        r.register(self.grpc)
        self.h2 = H2Series()
        r.register(self.h2)
        self.slo = slo
        r.register(SloSeries(slo, time.monotonic))
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
        self.circuit_breaker_transitions = Counter(
            "sidecar_circuit_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered",
            ("to",),
            registry=r,
        )
        self.circuit_breaker_opened = Counter(
            "sidecar_circuit_breaker_opened_total",
            "Circuit breaker openings, by what opened it (failures or slow_calls)",
            ("reason",),
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
        self.downstream_connections = Gauge(
            "sidecar_downstream_connections", "Open client connections", registry=r
        )
        self.access_log_dropped = Counter(
            "sidecar_access_log_dropped_total",
            "Access log lines dropped because stdout could not keep up",
            registry=r,
        )
        self.app_ready = Gauge(
            "sidecar_app_ready",
            "Whether the app passes APP_READY_CHECK (1) or not (0); 1 when there is no check",
            registry=r,
        )
        self.config_reloads = Counter(
            "sidecar_config_reloads_total",
            "Configuration reloads (SIGHUP), by result: success or failure",
            ("result",),
            registry=r,
        )
        # The parent's alone (it restarts the workers): a process's own count is always 0.
        self.worker_restarts = Counter(
            "sidecar_worker_restarts_total",
            "Worker processes restarted (WORKERS > 1), by reason: exited, or hung (its event "
            "loop stopped running for WORKER_HEARTBEAT_TIMEOUT)",
            ("reason",),
            registry=r,
        )
        self.tls_handshake_errors = Counter(
            "sidecar_tls_handshake_errors",
            "TLS handshakes on the proxy port that failed, by reason",
            ("reason",),
            registry=r,
        )
        self.tls_certificate_expiry = Gauge(
            "sidecar_tls_certificate_expiry_timestamp_seconds",
            "When each loaded certificate file expires, in Unix seconds (a CA bundle: its soonest)",
            ("file",),
            registry=r,
        )
        self.tls_reloads = Counter(
            "sidecar_tls_reloads",
            "Changes of the TLS files acted on: loaded (success) or rejected, the old material "
            "kept (failure)",
            ("result",),
            registry=r,
        )
        self.tls_reload_failing = Gauge(
            "sidecar_tls_reload_failing",
            "Sets of TLS files whose current version was rejected; older material serves",
            registry=r,
        )
        self.retry_spool_errors = Counter(
            "sidecar_retry_spool_errors",
            "Request-body spool files that could not be created, written or read back: those "
            "requests went on without a replay copy",
            registry=r,
        )
        self.hook_errors = Counter(
            "sidecar_hook_errors",
            "Hook calls that raised or timed out, by hook (on_request, on_response)",
            ("hook",),
            registry=r,
        )
        build = build_info()
        info = Gauge(
            "sidecar_build_info",
            "Build information; the value is always 1",
            ("version", "python", "compiled"),
            registry=r,
        )
        # compiled: "true" when the data path runs as mypyc-compiled code, "false" when pure Python
        info.labels(build.version, platform.python_version(), str(build.compiled).lower()).set(1)

        for error_type in UPSTREAM_ERROR_TYPES:
            self.upstream_errors.labels(error_type)
        for reason in (REJECT_SHED, REJECT_CIRCUIT_OPEN, REJECT_RATE_LIMIT):
            self.requests_rejected.labels(reason)
        self._handshake_errors = {
            reason: self.tls_handshake_errors.labels(reason) for reason in HANDSHAKE_ERRORS
        }
        self._tls_reloads = tuple(self.tls_reloads.labels(result) for result in TLS_RELOAD_RESULTS)
        self._transitions = tuple(
            self.circuit_breaker_transitions.labels(s) for s in BREAKER_STATES
        )
        self.app_ready.set(1)
        self._reloads = {ok: self.config_reloads.labels(RELOAD_RESULTS[ok]) for ok in (True, False)}
        for reason in RESTART_REASONS:
            self.worker_restarts.labels(reason)
        for reason in BREAKER_OPEN_REASONS:
            self.circuit_breaker_opened.labels(reason)
        self._hook_errors = {hook: self.hook_errors.labels(hook) for hook in HOOKS}

    def on_breaker_transition(self, old: int, new: int, reason: str | None) -> None:
        """The breaker moved from state ``old`` to ``new``, given as gauge values (0, 1, 2);
        ``reason`` is why it opened, on transitions to open, else ``None``.

        The breaker's ``IntEnum`` states are those values and its ``StrEnum`` reasons these
        strings. It calls this synchronously on every transition, so the gauge is never stale
        (the seed set it only on requests it let through, so it read "closed" while the breaker
        was open). ``old`` completes the callback's signature; the metrics only need ``new``.
        """
        self.circuit_breaker_state.set(new)
        self._transitions[new].inc()
        if reason is not None:
            self.circuit_breaker_opened.labels(reason).inc()

    def on_upstream_connection(self, reused: bool) -> None:
        """A request to the app got a connection: a pooled one (``reused``) or a new one."""
        if reused:
            self.requests.reused += 1
        else:
            self.requests.opened += 1

    def connection_opened(self) -> None:
        """A client connection was accepted."""
        self.downstream_connections.inc()

    def connection_closed(self) -> None:
        """A client connection was closed."""
        self.downstream_connections.dec()

    def app_ready_changed(self, ready: bool) -> None:
        """The app readiness check changed its verdict."""
        self.app_ready.set(1 if ready else 0)

    def config_reloaded(self, ok: bool) -> None:
        """A reload was attempted; ``ok`` is whether the new configuration was taken."""
        self._reloads[ok].inc()

    def access_log_drop(self, lines: int) -> None:
        """``on_drop`` callback for :class:`~sidecar_proxy.observe.accesslog.AccessLog`."""
        self.access_log_dropped.inc(lines)

    def tls_handshake_error(self, reason: str) -> None:
        """A TLS handshake failed; ``reason`` is one of ``tls.accept.HANDSHAKE_ERRORS``."""
        self._handshake_errors[reason].inc()

    def tls_loaded(self, certs: Iterable[CertInfo]) -> None:
        """Certificates were loaded (at start-up or by a reload): their files' expiry."""
        soonest: dict[str, float] = {}
        for cert in certs:
            ts = cert.not_after.timestamp()
            soonest[cert.path] = min(ts, soonest.get(cert.path, ts))
        for path, ts in soonest.items():
            self.tls_certificate_expiry.labels(path).set(ts)

    def tls_reload(self, ok: bool, failing: int) -> None:
        """A reload was tried; ``failing`` sets of files are now rejected."""
        self._tls_reloads[0 if ok else 1].inc()
        self.tls_reload_failing.set(failing)

    def spool_error(self, exc: OSError) -> None:
        """A spool file failed (``on_error`` of :class:`~sidecar_proxy.replay.spool.SpoolArea`);
        the error itself is logged there."""
        self.retry_spool_errors.inc()

    def hook_error(self, hook: str) -> None:
        """A call of ``hook`` (one of :data:`HOOKS`) raised or timed out."""
        self._hook_errors[hook].inc()
