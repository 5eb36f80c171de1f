"""Turns each finished :class:`~.exchange.Exchange` into metrics and one access-log line.

The data path calls :meth:`Recorder.started` when a request head has been parsed and
:meth:`Recorder.finished` exactly once when the request is over, whatever the outcome: proxied,
answered locally, refused, or abandoned by the client (status 499). Everything per-request that
the metrics and the access log report is derived here from the one record, so they cannot
disagree.

Cost, measured on the development machine (CPython 3.11, prometheus-client 0.26; best of 300
runs of 1,000 calls, so other load on the machine is filtered out): ``finished()`` for a typical
proxied request (response head time, request and response bytes, one access-log line through
:class:`~sidecar_proxy.observe.accesslog.AccessLog`) takes 5.7 us, 3.3 us with the access log
off. ``started()`` takes 0.07 us.

Where the time goes: each labelled child update is a lock plus a float add (~0.35 us for a
counter, ~0.75 us for a histogram); the log line is ~2.4 us (dict, timestamp, two roundings,
orjson, append). Calling ``.labels()`` would add ~1 us per metric, so children are cached in
dicts keyed by their label values; the keys are bounded because every label value is (method via
:func:`~sidecar_proxy.observe.paths.method_label`, path via
:class:`~sidecar_proxy.observe.paths.PathLabeler`, status a three-digit number). The in-flight
gauge reads a plain int at scrape time instead of taking two locked updates per request.

Exemplars cost ~1.4 us per histogram observation that carries one (prometheus-client validates
the label set, builds the exemplar and timestamps it): 8.5 us for a traced request that attaches
both. A bucket only ever exposes its latest exemplar, so each histogram child attaches at most one
per bucket per :data:`EXEMPLAR_INTERVAL`; any other traced request costs 5.9 us, about the same as
an untraced one.

Access-log fields: ``time`` (RFC 3339 UTC, milliseconds, when the request head was parsed),
``method`` and ``path`` as received (the path is not normalised and has no query string),
``query`` (whether there was one; query strings carry tokens and personal data, so they are not
logged), ``status``, ``duration_ms``, ``upstream_ttfb_ms`` (null when the app never answered),
``bytes_in``, ``bytes_out``, ``request_id``, ``trace_id``, ``remote_addr``, ``user_agent``,
``attempts``, ``flags``. ``flags`` holds the Envoy-style response flags joined with ``,``, and is
``""`` when there are none: Envoy writes ``-`` in its text format, but in JSON an empty string is
the natural "nothing", and it is falsy for every log query language. The data path decodes
request bytes as latin-1, so every string is encodable as-is (orjson refuses only lone
surrogates, which latin-1 never produces).

``sidecar_upstream_errors_total`` counts ``ex.upstream_errors`` as given: one entry per failed
attempt, plus the ``circuit_open`` entry the data path adds when the breaker refuses a request
(the seed counted those as upstream errors too). ``sidecar_requests_rejected_total`` comes from the
flags: ``UO`` is ``shed``, ``UH`` is ``circuit_open``.

Exemplars (OpenMetrics ``# {trace_id="..."}``) are attached to the duration and upstream-response
histograms only when the trace id came from the request's ``traceparent`` or B3 header. The
exchange does not carry that bit; the data path falls back to the request id when there is no
trace header, so ``trace_id != request_id`` is exactly "came from a trace header" (the only
miss, a client sending the same value in both, merely loses an exemplar).
"""

from __future__ import annotations

import math
from bisect import bisect_left

import orjson
from prometheus_client import Counter, Histogram

from sidecar_proxy.observe.accesslog import AccessLog
from sidecar_proxy.observe.exchange import BREAKER_OPEN, LOAD_SHED, Exchange
from sidecar_proxy.observe.logs import UtcTimestamps
from sidecar_proxy.observe.metrics import BUCKETS, REJECT_CIRCUIT_OPEN, REJECT_SHED, Metrics
from sidecar_proxy.observe.paths import PathLabeler, method_label

_LOG_OPTIONS = orjson.OPT_APPEND_NEWLINE
# A bucket keeps only its latest exemplar and a scrape sees only that one, so attaching one on
# every traced request would pay ~1.4 us each for nothing; one per bucket per second is plenty.
EXEMPLAR_INTERVAL = 1.0


class _ExemplarHistogram:
    """A labelled histogram child that attaches at most one exemplar per bucket per interval."""

    __slots__ = ("_histogram", "_last")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._last = [-math.inf] * (len(BUCKETS) + 1)  # per bucket, the last exemplar's time

    def observe(self, value: float, trace_id: str | None, now: float) -> None:
        if trace_id is not None:
            bucket = bisect_left(BUCKETS, value)  # first bound >= value: the "le" bucket
            if now - self._last[bucket] >= EXEMPLAR_INTERVAL:
                self._last[bucket] = now
                self._histogram.observe(value, {"trace_id": trace_id})
                return
        self._histogram.observe(value)


class Recorder:
    """The one place a request becomes metrics and an access-log line."""

    __slots__ = (
        "_access_log",
        "_breaker_rejected",
        "_errors",
        "_in_flight",
        "_label",
        "_metrics",
        "_request_bytes",
        "_response_bytes",
        "_retries",
        "_retries_refused",
        "_routes",
        "_shed",
        "_timestamps",
        "_ttfb",
    )

    def __init__(self, metrics: Metrics, paths: PathLabeler, access_log: AccessLog | None) -> None:
        self._metrics = metrics
        self._label = paths.label
        self._access_log = access_log
        self._timestamps = UtcTimestamps()
        # A plain int the gauge reads at scrape time: two locked gauge updates per request would
        # cost ~0.7 us, this costs ~0.03 us. Only the loop thread writes it.
        self._in_flight = 0
        metrics.requests_in_flight.set_function(lambda: self._in_flight)
        self._retries = metrics.retries
        self._retries_refused = metrics.retries_budget_exhausted
        self._request_bytes = metrics.request_bytes
        self._response_bytes = metrics.response_bytes
        self._shed = metrics.requests_rejected.labels(REJECT_SHED)
        self._breaker_rejected = metrics.requests_rejected.labels(REJECT_CIRCUIT_OPEN)
        self._errors: dict[str, Counter] = {}
        self._ttfb: dict[str, _ExemplarHistogram] = {}
        self._routes: dict[tuple[str, str, int], tuple[Counter, _ExemplarHistogram]] = {}

    def started(self) -> None:
        """A request head was parsed; pair with exactly one :meth:`finished`."""
        self._in_flight += 1

    def finished(self, ex: Exchange) -> None:
        """Record a request that is over, whatever its outcome."""
        self._in_flight -= 1
        method = method_label(ex.method)
        status = ex.status
        route = (method, self._label(ex.path), status)
        children = self._routes.get(route)
        if children is None:
            children = self._route_children(route)
        requests, duration_histogram = children
        requests.inc()

        now = ex.end
        duration = now - ex.start
        trace_id = ex.trace_id
        traced = trace_id if trace_id and trace_id != ex.request_id else None
        duration_histogram.observe(duration, traced, now)
        ttfb = ex.ttfb
        if ttfb is not None:
            ttfb_histogram = self._ttfb.get(method)
            if ttfb_histogram is None:
                ttfb_histogram = self._ttfb[method] = _ExemplarHistogram(
                    self._metrics.upstream_response.labels(method)
                )
            ttfb_histogram.observe(ttfb, traced, now)

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
        if ex.bytes_in:
            self._request_bytes.inc(ex.bytes_in)
        if ex.bytes_out:
            self._response_bytes.inc(ex.bytes_out)

        access_log = self._access_log
        if access_log is None:
            return
        entry = {
            "time": self._timestamps.format(ex.start_wall),
            "method": ex.method,
            "path": ex.path,
            "query": ex.has_query,
            "status": status,
            "duration_ms": round(duration * 1000.0, 3),
            "upstream_ttfb_ms": None if ttfb is None else round(ttfb * 1000.0, 3),
            "bytes_in": ex.bytes_in,
            "bytes_out": ex.bytes_out,
            "request_id": ex.request_id,
            "trace_id": trace_id,
            "remote_addr": ex.remote_addr,
            "user_agent": ex.user_agent,
            "attempts": attempts,
            "flags": ",".join(flags),
        }
        access_log.write(orjson.dumps(entry, option=_LOG_OPTIONS))

    def _route_children(self, route: tuple[str, str, int]) -> tuple[Counter, _ExemplarHistogram]:
        method, path, status = route
        children = (
            self._metrics.requests_total.labels(method, path, str(status)),
            _ExemplarHistogram(self._metrics.request_duration.labels(method, path)),
        )
        self._routes[route] = children
        return children

    def _error_counter(self, error_type: str) -> Counter:
        counter = self._errors.get(error_type)
        if counter is None:
            counter = self._errors[error_type] = self._metrics.upstream_errors.labels(error_type)
        return counter
