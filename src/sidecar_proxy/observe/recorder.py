"""Turns each finished :class:`~.record.Record` into metrics and one access-log line.

The data path calls :meth:`Recorder.started` when a request head has been parsed and
:meth:`Recorder.finished` exactly once when the request is over, whatever the outcome: proxied,
answered locally, refused, or abandoned by the client (status 499). Everything per-request that
the metrics and the access log report is derived here from the one record, so they cannot
disagree.

Cost, measured with ``bench/micro.py`` (CPython 3.11; best of several runs, since the machine is
shared): ``started()`` plus ``finished()`` for a typical proxied request take ~1.7 us without the
access log and ~5 us with it. The metrics part is cheap because the per-request series are plain
numbers in :class:`~sidecar_proxy.observe.metrics.RequestSeries` (prometheus-client's objects took
a lock per update: ~5.3 us for the same request); the log line is a dict, a cached timestamp, two
roundings, orjson and an append. Label keys are bounded because every label value is: method via
:func:`~sidecar_proxy.observe.paths.method_label`, path via
:class:`~sidecar_proxy.observe.paths.PathLabeler`, status a three-digit number.

Access-log fields: ``time`` (RFC 3339 UTC, milliseconds, when the request head was parsed),
``method`` and ``path`` as received (the path is not normalised and has no query string),
``query`` (whether there was one; query strings carry tokens and personal data, so they are not
logged), ``status``, ``duration_ms``, ``upstream_ttfb_ms`` (null when the app never answered),
``bytes_in``, ``bytes_out``, ``request_id``, ``trace_id``, ``remote_addr``, ``user_agent``,
``attempts``, ``flags``, ``tls_version`` and ``client_identity`` (both ``""`` without TLS, the
second also without a client certificate). ``flags`` holds the Envoy-style response flags joined
with ``,``, and is ``""`` when there are none: Envoy writes ``-`` in its text format, but in JSON
an empty string is the natural "nothing", and it is falsy for every log query language. The data
path decodes request bytes as latin-1, so every string is encodable as-is (orjson refuses only
lone surrogates, which latin-1 never produces).

With an SLO set, each request also goes to :meth:`~sidecar_proxy.observe.slo.SloWindows.record`
(the health probes the sidecar answers itself aside): its end, its status, and its latency, the
time to the app's response head or, when there was none, the whole duration. With none set the
check is one attribute test.

``sidecar_upstream_errors_total`` counts ``ex.upstream_errors`` as given: one entry per failed
attempt, plus the ``circuit_open`` entry the data path adds when the breaker refuses a request
(the seed counted those as upstream errors too). ``sidecar_requests_rejected_total`` comes from the
flags: ``UO`` is ``shed``, ``UH`` is ``circuit_open``, ``RL`` is ``rate_limit``.

Exemplars (OpenMetrics ``# {trace_id="..."}``) are attached to the duration and upstream-response
histograms only when the trace id came from the request's ``traceparent`` or B3 header. The
exchange does not carry that bit; the data path falls back to the request id when there is no
trace header, so ``trace_id != request_id`` is exactly "came from a trace header" (the only
miss, a client sending the same value in both, merely loses an exemplar).
"""

from __future__ import annotations

from typing import Final

import orjson
from prometheus_client import Counter

from sidecar_proxy.observe.accesslog import AccessLog
from sidecar_proxy.observe.logs import UtcTimestamps
from sidecar_proxy.observe.metrics import (
    REJECT_CIRCUIT_OPEN,
    REJECT_RATE_LIMIT,
    REJECT_SHED,
    Metrics,
)
from sidecar_proxy.observe.paths import GrpcLabeler, PathLabeler, method_label
from sidecar_proxy.observe.record import (
    BREAKER_OPEN,
    GRPC_STATUS_NAMES,
    LOAD_SHED,
    LOCAL_REPLY,
    RATE_LIMITED,
    Record,
)

_LOG_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE
_dumps: Final = orjson.dumps  # bound once: a module attribute read is a lookup by name per call


def millis(seconds: float) -> float:
    """``seconds`` (>= 0) in milliseconds to three decimals: ``round(seconds * 1000.0, 3)``.

    ``round`` with digits goes through a decimal string (dtoa) and back: ~2,300 instructions a
    call, two per request. Rounding to whole microseconds and dividing costs a few dozen, and
    gives the same float: ``k / 1000.0`` is the double nearest to k/1000, as round's result is.
    They can differ only on a tie to the nanosecond, which a measured duration never is exactly.
    """
    return int(seconds * 1_000_000.0 + 0.5) / 1000.0


class Recorder:
    """The one place a request becomes metrics and an access-log line."""

    __slots__ = (
        "_access_log",
        "_breaker_rejected",
        "_errors",
        "_grpc",
        "_grpc_label",
        "_label",
        "_metrics",
        "_rate_limited",
        "_retries",
        "_retries_refused",
        "_series",
        "_shed",
        "_slo",
        "_timestamps",
    )

    def __init__(self, metrics: Metrics, paths: PathLabeler, access_log: AccessLog | None) -> None:
        self._metrics = metrics
        self._label = paths.label
        self._grpc = metrics.grpc
        self._grpc_label = GrpcLabeler(paths.limit).label
        self._access_log = access_log
        self._timestamps = UtcTimestamps()
        self._series = metrics.requests
        self._retries = metrics.retries
        self._retries_refused = metrics.retries_budget_exhausted
        self._shed = metrics.requests_rejected.labels(REJECT_SHED)
        self._breaker_rejected = metrics.requests_rejected.labels(REJECT_CIRCUIT_OPEN)
        self._rate_limited = metrics.requests_rejected.labels(REJECT_RATE_LIMIT)
        self._errors: dict[str, Counter] = {}
        self._slo = metrics.slo

    def set_access_log(self, access_log: AccessLog | None) -> None:
        """Write access-log lines to ``access_log`` from now on, or none (a reload)."""
        self._access_log = access_log

    def started(self) -> None:
        """A request head was parsed; pair with exactly one :meth:`finished`."""
        self._series.in_flight += 1

    def finished(self, ex: Record) -> None:
        """Record a request that is over, whatever its outcome."""
        series = self._series
        series.in_flight -= 1
        method = method_label(ex.method)
        status = ex.status
        path = self._label(ex.path)
        requests = series.requests
        key = (method, path, status)
        requests[key] = requests.get(key, 0) + 1

        now = ex.end
        duration = now - ex.start
        trace_id = ex.trace_id
        traced = trace_id if ex.traced else None  # exemplars only for ids from a trace header
        histogram = series.durations.get((method, path)) or series.duration(method, path)
        histogram.observe(duration, traced, now)
        ttfb = ex.ttfb
        if ttfb is not None:
            upstream = series.upstream.get(method) or series.upstream_response(method)
            upstream.observe(ttfb, traced, now)

        for error_type in ex.upstream_errors:
            self._error_counter(error_type).inc()
        attempts = ex.attempts
        if attempts > 1:
            self._retries.inc(attempts - 1)
        if ex.retries_refused:
            self._retries_refused.inc(ex.retries_refused)
        flags = ex.flags
        if flags:
            if LOAD_SHED in flags:
                self._shed.inc()
            if BREAKER_OPEN in flags:
                self._breaker_rejected.inc()
            if RATE_LIMITED in flags:
                self._rate_limited.inc()
        series.request_bytes += ex.bytes_in
        series.response_bytes += ex.bytes_out
        if ex.grpc:
            self._grpc_call(ex, duration)
        slo = self._slo
        if slo is not None and not (flags and LOCAL_REPLY in flags):
            slo.record(now, status, duration if ttfb is None else ttfb)

        access_log = self._access_log
        if access_log is None:
            return
        entry = {
            "time": self._timestamps.format(ex.start_wall),
            "method": ex.method,
            "path": ex.path,
            "protocol": ex.protocol,
            "query": ex.has_query,
            "status": status,
            "duration_ms": millis(duration),
            "upstream_ttfb_ms": None if ttfb is None else millis(ttfb),
            "bytes_in": ex.bytes_in,
            "bytes_out": ex.bytes_out,
            "request_id": ex.request_id,
            "trace_id": trace_id,
            "remote_addr": ex.remote_addr,
            "user_agent": ex.user_agent,
            "attempts": attempts,
            "flags": ",".join(flags),
            "tls_version": ex.tls_version,
            "client_identity": ex.client_identity,
        }
        if ex.grpc:
            service, _, grpc_method = ex.path[1:].partition("/")
            entry["grpc_service"] = service
            entry["grpc_method"] = grpc_method
            entry["grpc_status"] = ex.grpc_status
        access_log.write(_dumps(entry, option=_LOG_OPTIONS))

    def _grpc_call(self, ex: Record, duration: float) -> None:
        code = ex.grpc_status
        status = GRPC_STATUS_NAMES[code] if 0 <= code < len(GRPC_STATUS_NAMES) else "UNKNOWN"
        labels = self._grpc_label(ex.path)
        self._grpc.record(labels, status, duration, ex.grpc_requests, ex.grpc_responses)

    def _error_counter(self, error_type: str) -> Counter:
        counter = self._errors.get(error_type)
        if counter is None:
            counter = self._errors[error_type] = self._metrics.upstream_errors.labels(error_type)
        return counter
