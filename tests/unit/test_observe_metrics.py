"""Metrics and the recorder: exact names, labels and values as Prometheus would scrape them."""

from __future__ import annotations

import bisect
import math
import os
import re
import time
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Exemplar

from sidecar_proxy import __version__
from sidecar_proxy.buildinfo import build_info
from sidecar_proxy.observe import record as X
from sidecar_proxy.observe.accesslog import AccessLog
from sidecar_proxy.observe.metrics import (
    BREAKER_OPEN_REASONS,
    BUCKETS,
    EXEMPLAR_INTERVAL,
    Metrics,
    bucket_index,
)
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.record import Record
from sidecar_proxy.observe.recorder import Recorder, millis
from sidecar_proxy.policy.breaker import BreakerState, CircuitBreaker, OpenReason

TRACE = "0af7651916cd43dd8448eb211c80319c"
REQUEST_ID = "3f2a9c1e-7d4b-4c1a-9e2f-8b6d5a4c3b21"
WALL = 1714564800.123456  # 2024-05-01T12:00:00.123Z

Labels = frozenset[tuple[str, str]]


def scrape(metrics: Metrics) -> dict[tuple[str, Labels], float]:
    """Every sample of a Prometheus text scrape, keyed by sample name and label set."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return scrape(metrics)[(name, frozenset(labels.items()))]


def exemplars(metrics: Metrics, name: str) -> dict[str, Exemplar]:
    """``le`` -> exemplar for the buckets of histogram samples ``name`` that carry one."""
    text = generate_openmetrics(metrics.registry).decode()  # type: ignore[no-untyped-call]
    return {
        s.labels["le"]: s.exemplar
        for family in parse_openmetrics(text)  # type: ignore[no-untyped-call]
        for s in family.samples
        if s.name == name and s.exemplar is not None
    }


def make_exchange(
    *,
    method: str = "GET",
    path: str = "/users/123",
    status: int = 200,
    duration: float = 0.0123,
    ttfb: float | None = 0.004,
    trace_id: str | None = None,
    start: float = 100.0,
) -> Record:
    ex = Record(start, WALL, "10.1.2.3:45678", "HTTP/1.1")
    ex.method = method
    ex.path = path
    ex.status = status
    ex.end = start + duration
    ex.ttfb = ttfb
    ex.request_id = REQUEST_ID
    ex.trace_id = trace_id or REQUEST_ID  # what the data path does without a trace header
    ex.traced = trace_id is not None
    ex.user_agent = "curl/8.5.0"
    ex.attempts = 0 if ttfb is None else 1
    return ex


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def recorder(metrics: Metrics) -> Recorder:
    return Recorder(metrics, PathLabeler(100), None)


class PipeLog:
    """An AccessLog writing into a pipe this test reads back."""

    def __init__(self) -> None:
        self.read_fd, write_fd = os.pipe()
        self.log = AccessLog(write_fd)
        self.write_fd = write_fd

    def lines(self) -> list[dict[str, object]]:
        assert self.log.close(5.0)
        os.close(self.write_fd)
        data = b""
        while chunk := os.read(self.read_fd, 65536):
            data += chunk
        os.close(self.read_fd)
        assert data.endswith(b"\n")
        return [orjson.loads(line) for line in data.splitlines()]


@pytest.fixture
def pipe_log() -> Iterator[PipeLog]:
    yield PipeLog()


# --- the registry ---------------------------------------------------------------------------


def test_exactly_the_documented_metrics(metrics: Metrics) -> None:
    families = {
        f.name: f
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
    }
    assert {name: f.type for name, f in families.items()} == {
        "sidecar_requests": "counter",
        "sidecar_request_duration_seconds": "histogram",
        "sidecar_requests_in_flight": "gauge",
        "sidecar_upstream_errors": "counter",
        "sidecar_circuit_breaker_state": "gauge",
        "sidecar_circuit_breaker_transitions": "counter",
        "sidecar_circuit_breaker_opened": "counter",
        "sidecar_upstream_response_seconds": "histogram",
        "sidecar_retries": "counter",
        "sidecar_retries_budget_exhausted": "counter",
        "sidecar_grpc_requests": "counter",
        "sidecar_grpc_request_duration_seconds": "histogram",
        "sidecar_grpc_request_messages": "counter",
        "sidecar_grpc_response_messages": "counter",
        "sidecar_requests_rejected": "counter",
        "sidecar_upstream_connections_opened": "counter",
        "sidecar_upstream_connections_reused": "counter",
        "sidecar_request_bytes": "counter",
        "sidecar_response_bytes": "counter",
        "sidecar_downstream_connections": "gauge",
        "sidecar_access_log_dropped": "counter",
        "sidecar_app_ready": "gauge",
        "sidecar_config_reloads": "counter",
        "sidecar_worker_restarts": "counter",
        "sidecar_build_info": "gauge",
        "sidecar_tls_handshake_errors": "counter",
        "sidecar_tls_certificate_expiry_timestamp_seconds": "gauge",
        "sidecar_tls_reloads": "counter",
        "sidecar_tls_reload_failing": "gauge",
        "sidecar_slo_burn_rate": "gauge",
        "sidecar_slo_error_budget_remaining": "gauge",
        "sidecar_retry_spool_errors": "counter",
        "sidecar_hook_errors": "counter",
        "sidecar_h2_streams_active": "gauge",
        "sidecar_h2_resets": "counter",
        "sidecar_h2_goaway": "counter",
        "sidecar_h2_floods": "counter",
        "sidecar_h2_keepalive_timeouts": "counter",
    }
    # The seed's help strings.
    assert families["sidecar_requests"].documentation == (
        "Total number of requests processed by the sidecar"
    )
    assert families["sidecar_request_duration_seconds"].documentation == (
        "Request duration in seconds"
    )
    assert families["sidecar_requests_in_flight"].documentation == (
        "Number of requests currently being processed"
    )
    assert families["sidecar_upstream_errors"].documentation == "Total number of upstream errors"
    assert families["sidecar_circuit_breaker_state"].documentation == (
        "Circuit breaker state (0=closed, 1=open, 2=half-open)"
    )


def test_seed_buckets(metrics: Metrics, recorder: Recorder) -> None:
    assert BUCKETS == (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    recorder.started()
    recorder.finished(make_exchange())
    for name in ("sidecar_request_duration_seconds", "sidecar_upstream_response_seconds"):
        bounds = sorted(
            float(dict(labels)["le"])
            for (sample, labels) in scrape(metrics)
            if sample == name + "_bucket"
        )
        assert bounds == [*BUCKETS, math.inf]


def test_no_created_series(metrics: Metrics, recorder: Recorder) -> None:
    recorder.started()
    recorder.finished(make_exchange())
    assert b"_created" not in generate_latest(metrics.registry)


def test_known_label_values_exist_at_zero(metrics: Metrics) -> None:
    samples = scrape(metrics)
    for error_type in ("connection_error", "5xx_error", "circuit_open", "timeout", "reset"):
        assert samples[("sidecar_upstream_errors_total", frozenset({("type", error_type)}))] == 0
    assert samples[("sidecar_upstream_errors_total", frozenset({("type", "protocol_error")}))] == 0
    for reason in ("shed", "circuit_open", "rate_limit"):
        assert samples[("sidecar_requests_rejected_total", frozenset({("reason", reason)}))] == 0
    for result in ("success", "failure"):
        assert samples[("sidecar_config_reloads_total", frozenset({("result", result)}))] == 0
    assert samples[("sidecar_app_ready", frozenset())] == 1  # no check: the app counts as ready
    for state in ("closed", "open", "half_open"):
        key = ("sidecar_circuit_breaker_transitions_total", frozenset({("to", state)}))
        assert samples[key] == 0
    for reason in OpenReason:
        key = ("sidecar_circuit_breaker_opened_total", frozenset({("reason", reason.value)}))
        assert samples[key] == 0
    assert samples[("sidecar_circuit_breaker_state", frozenset())] == 0


def test_build_info(metrics: Metrics) -> None:
    (labels,) = [dict(lb) for (name, lb) in scrape(metrics) if name == "sidecar_build_info"]
    assert labels["version"] == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", labels["python"])
    assert labels["compiled"] == ("true" if build_info().compiled else "false")
    assert value(metrics, "sidecar_build_info", **labels) == 1


def test_registries_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.connection_opened()
    assert value(first, "sidecar_downstream_connections") == 1
    assert value(second, "sidecar_downstream_connections") == 0


# --- the recorder -----------------------------------------------------------------------------


def test_proxied_request(metrics: Metrics, recorder: Recorder) -> None:
    recorder.started()
    assert value(metrics, "sidecar_requests_in_flight") == 1
    ex = make_exchange(duration=0.0123, ttfb=0.004)
    ex.bytes_in = 100
    ex.bytes_out = 2048
    recorder.finished(ex)

    assert value(metrics, "sidecar_requests_in_flight") == 0
    assert value(metrics, "sidecar_requests_total", method="GET", path="/users/:id", status="200")
    route = {"method": "GET", "path": "/users/:id"}
    name = "sidecar_request_duration_seconds"
    assert value(metrics, name + "_count", **route) == 1
    assert value(metrics, name + "_sum", **route) == pytest.approx(0.0123)
    assert value(metrics, name + "_bucket", le="0.01", **route) == 0
    assert value(metrics, name + "_bucket", le="0.025", **route) == 1
    name = "sidecar_upstream_response_seconds"
    assert value(metrics, name + "_count", method="GET") == 1
    assert value(metrics, name + "_sum", method="GET") == pytest.approx(0.004)
    assert value(metrics, name + "_bucket", method="GET", le="0.005") == 1
    assert value(metrics, "sidecar_request_bytes_total") == 100
    assert value(metrics, "sidecar_response_bytes_total") == 2048
    assert value(metrics, "sidecar_retries_total") == 0


def test_same_route_accumulates(metrics: Metrics, recorder: Recorder) -> None:
    for i in range(5):
        recorder.started()
        recorder.finished(make_exchange(path=f"/users/{i}"))
    assert (
        value(metrics, "sidecar_requests_total", method="GET", path="/users/:id", status="200") == 5
    )


def test_retries_errors_and_budget(metrics: Metrics, recorder: Recorder) -> None:
    recorder.started()
    ex = make_exchange(method="PUT", status=502)
    ex.attempts = 3
    ex.upstream_errors = [X.ERR_CONNECTION, X.ERR_5XX, X.ERR_5XX]
    ex.retries_refused = 1
    ex.flags = [X.RETRIES_EXHAUSTED, X.RETRY_BUDGET_EXHAUSTED]
    recorder.finished(ex)

    assert value(metrics, "sidecar_retries_total") == 2
    assert value(metrics, "sidecar_retries_budget_exhausted_total") == 1
    assert value(metrics, "sidecar_upstream_errors_total", type="connection_error") == 1
    assert value(metrics, "sidecar_upstream_errors_total", type="5xx_error") == 2
    assert value(metrics, "sidecar_upstream_errors_total", type="timeout") == 0
    assert value(metrics, "sidecar_requests_total", method="PUT", path="/users/:id", status="502")


def test_load_shed(metrics: Metrics, recorder: Recorder) -> None:
    recorder.started()
    ex = make_exchange(status=503, ttfb=None)
    ex.flags = [X.LOAD_SHED]
    recorder.finished(ex)
    assert value(metrics, "sidecar_requests_rejected_total", reason="shed") == 1
    assert value(metrics, "sidecar_requests_rejected_total", reason="circuit_open") == 0
    assert value(metrics, "sidecar_requests_total", method="GET", path="/users/:id", status="503")
    # Never reached the app: no upstream response time.
    assert not any(name.startswith("sidecar_upstream_response") for name, _ in scrape(metrics))


def test_rate_limited_is_a_rejection_not_an_error(metrics: Metrics, recorder: Recorder) -> None:
    recorder.started()
    ex = make_exchange(status=429, ttfb=None)
    ex.flags = [X.RATE_LIMITED]
    recorder.finished(ex)
    assert value(metrics, "sidecar_requests_rejected_total", reason="rate_limit") == 1
    assert value(metrics, "sidecar_requests_rejected_total", reason="shed") == 0
    assert not any(v for (name, _), v in scrape(metrics).items() if name.endswith("errors_total"))


def test_app_ready_and_reload_events(metrics: Metrics) -> None:
    metrics.app_ready_changed(False)
    assert value(metrics, "sidecar_app_ready") == 0
    metrics.app_ready_changed(True)
    assert value(metrics, "sidecar_app_ready") == 1
    metrics.config_reloaded(True)
    metrics.config_reloaded(False)
    metrics.config_reloaded(False)
    assert value(metrics, "sidecar_config_reloads_total", result="success") == 1
    assert value(metrics, "sidecar_config_reloads_total", result="failure") == 2


def test_breaker_rejection_counts_once_as_error_and_once_as_rejection(
    metrics: Metrics, recorder: Recorder
) -> None:
    recorder.started()
    ex = make_exchange(status=503, ttfb=None)
    # What the data path records when the breaker refuses a request.
    ex.flags = [X.BREAKER_OPEN]
    ex.upstream_errors = [X.ERR_CIRCUIT_OPEN]
    recorder.finished(ex)
    assert value(metrics, "sidecar_requests_rejected_total", reason="circuit_open") == 1
    assert value(metrics, "sidecar_upstream_errors_total", type="circuit_open") == 1


def test_client_closed_and_local_replies_are_counted(metrics: Metrics, recorder: Recorder) -> None:
    for status, flags in ((X.STATUS_CLIENT_CLOSED, [X.DOWNSTREAM_DISCONNECT]), (400, [])):
        recorder.started()
        ex = make_exchange(status=status, ttfb=None)
        ex.flags = flags
        recorder.finished(ex)
    assert value(metrics, "sidecar_requests_total", method="GET", path="/users/:id", status="499")
    assert value(metrics, "sidecar_requests_total", method="GET", path="/users/:id", status="400")
    assert value(metrics, "sidecar_requests_in_flight") == 0


def test_unknown_method_and_path_cardinality(metrics: Metrics) -> None:
    recorder = Recorder(metrics, PathLabeler(2), None)
    for path in ("/a", "/b", "/c", "/d"):
        recorder.started()
        recorder.finished(make_exchange(method="PURGE", path=path))
    paths = {
        dict(labels)["path"]
        for (name, labels) in scrape(metrics)
        if name == "sidecar_requests_total"
    }
    assert paths == {"/a", "/b", "other"}
    assert value(metrics, "sidecar_requests_total", method="OTHER", path="other", status="200") == 2


# --- exemplars --------------------------------------------------------------------------------


def test_exemplar_only_for_trace_header_ids(metrics: Metrics, recorder: Recorder) -> None:
    recorder.started()
    recorder.finished(make_exchange(duration=0.003))  # trace id fell back to the request id
    assert exemplars(metrics, "sidecar_request_duration_seconds_bucket") == {}

    recorder.started()
    recorder.finished(make_exchange(duration=0.003, ttfb=0.002, trace_id=TRACE))
    duration = exemplars(metrics, "sidecar_request_duration_seconds_bucket")
    assert list(duration) == ["0.005"]
    assert duration["0.005"].labels == {"trace_id": TRACE}
    assert duration["0.005"].value == pytest.approx(0.003)
    upstream = exemplars(metrics, "sidecar_upstream_response_seconds_bucket")
    assert list(upstream) == ["0.005"]
    assert upstream["0.005"].labels == {"trace_id": TRACE}


def test_exemplars_are_refreshed_at_most_once_per_bucket_per_interval(
    metrics: Metrics, recorder: Recorder
) -> None:
    first, second, third = TRACE, "1" * 32, "2" * 32
    for trace, start, duration in (
        (first, 100.0, 0.003),
        (second, 100.5, 0.003),  # same bucket, too soon: keeps the first
        (second, 100.5, 7.0),  # another bucket: gets its own at once
        (third, 100.0 + EXEMPLAR_INTERVAL + 0.01, 0.004),  # same bucket, interval passed
    ):
        recorder.started()
        recorder.finished(make_exchange(duration=duration, trace_id=trace, start=start))
        if trace == second and duration < 1:
            found = exemplars(metrics, "sidecar_request_duration_seconds_bucket")
            assert found["0.005"].labels == {"trace_id": first}
    found = exemplars(metrics, "sidecar_request_duration_seconds_bucket")
    assert found["0.005"].labels == {"trace_id": third}
    assert found["10.0"].labels == {"trace_id": second}
    # Throttling only skips exemplars, never observations.
    assert (
        value(metrics, "sidecar_request_duration_seconds_count", method="GET", path="/users/:id")
        == 4
    )


# --- the other events -------------------------------------------------------------------------


def test_breaker_gauge_follows_a_real_breaker(metrics: Metrics) -> None:
    now = [0.0]
    breaker = CircuitBreaker(2, 10.0, 1, lambda: now[0], metrics.on_breaker_transition)
    state = "sidecar_circuit_breaker_state"
    breaker.record_failure(now[0])
    breaker.record_failure(now[0])
    assert breaker.state is BreakerState.OPEN
    assert value(metrics, state) == 1
    now[0] = 11.0
    assert breaker.allow()
    assert value(metrics, state) == 2
    breaker.record_success(now[0])
    assert value(metrics, state) == 0
    transitions = "sidecar_circuit_breaker_transitions_total"
    assert value(metrics, transitions, to="open") == 1
    assert value(metrics, transitions, to="half_open") == 1
    assert value(metrics, transitions, to="closed") == 1
    assert value(metrics, "sidecar_circuit_breaker_opened_total", reason="failures") == 1


def test_breaker_transition_values(metrics: Metrics) -> None:
    for old, new, reason, gauge in (
        (BreakerState.CLOSED, BreakerState.OPEN, OpenReason.SLOW_CALLS, 1),
        (BreakerState.OPEN, BreakerState.HALF_OPEN, None, 2),
        (BreakerState.HALF_OPEN, BreakerState.OPEN, OpenReason.FAILURES, 1),
        (BreakerState.OPEN, BreakerState.HALF_OPEN, None, 2),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED, None, 0),
    ):
        metrics.on_breaker_transition(old, new, reason)
        assert value(metrics, "sidecar_circuit_breaker_state") == gauge
    assert value(metrics, "sidecar_circuit_breaker_transitions_total", to="open") == 2
    assert value(metrics, "sidecar_circuit_breaker_transitions_total", to="half_open") == 2
    assert value(metrics, "sidecar_circuit_breaker_transitions_total", to="closed") == 1
    assert value(metrics, "sidecar_circuit_breaker_opened_total", reason="failures") == 1
    assert value(metrics, "sidecar_circuit_breaker_opened_total", reason="slow_calls") == 1


def test_connections(metrics: Metrics) -> None:
    metrics.on_upstream_connection(reused=False)
    metrics.on_upstream_connection(reused=True)
    metrics.on_upstream_connection(reused=True)
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    assert value(metrics, "sidecar_upstream_connections_opened_total") == 1
    assert value(metrics, "sidecar_upstream_connections_reused_total") == 2
    assert value(metrics, "sidecar_downstream_connections") == 1


def test_access_log_drops(metrics: Metrics) -> None:
    metrics.access_log_drop(3)
    assert value(metrics, "sidecar_access_log_dropped_total") == 3


# --- the access-log line ----------------------------------------------------------------------


def test_access_log_line(metrics: Metrics, pipe_log: PipeLog) -> None:
    recorder = Recorder(metrics, PathLabeler(100), pipe_log.log)
    recorder.started()
    ex = make_exchange(method="POST", path="/users/123/orders", duration=0.0123456, trace_id=TRACE)
    ex.has_query = True
    ex.bytes_in = 12
    ex.bytes_out = 345
    ex.attempts = 2
    ex.flags = [X.UPSTREAM_RESET, X.RETRIES_EXHAUSTED]
    ex.tls_version = "TLSv1.3"
    ex.client_identity = "spiffe://cluster.local/ns/shop/sa/checkout"
    recorder.finished(ex)
    recorder.started()
    recorder.finished(make_exchange(status=503, ttfb=None))

    first, second = pipe_log.lines()
    assert first == {
        "time": "2024-05-01T12:00:00.123Z",
        "method": "POST",
        "path": "/users/123/orders",  # raw, not the metric label
        "protocol": "HTTP/1.1",
        "query": True,
        "status": 200,
        "duration_ms": 12.346,
        "upstream_ttfb_ms": 4.0,
        "bytes_in": 12,
        "bytes_out": 345,
        "request_id": REQUEST_ID,
        "trace_id": TRACE,
        "remote_addr": "10.1.2.3:45678",
        "user_agent": "curl/8.5.0",
        "attempts": 2,
        "flags": "UC,URX",
        "tls_version": "TLSv1.3",
        "client_identity": "spiffe://cluster.local/ns/shop/sa/checkout",
    }
    assert list(first) == [  # the documented order, which orjson keeps
        "time",
        "method",
        "path",
        "protocol",
        "query",
        "status",
        "duration_ms",
        "upstream_ttfb_ms",
        "bytes_in",
        "bytes_out",
        "request_id",
        "trace_id",
        "remote_addr",
        "user_agent",
        "attempts",
        "flags",
        "tls_version",
        "client_identity",
    ]
    assert isinstance(first["duration_ms"], float)
    assert (second["tls_version"], second["client_identity"]) == ("", "")
    assert second["upstream_ttfb_ms"] is None
    assert second["flags"] == ""
    assert second["query"] is False
    assert second["trace_id"] == REQUEST_ID


def test_access_log_keeps_latin1_text_as_received(metrics: Metrics, pipe_log: PipeLog) -> None:
    # The data path decodes request bytes as latin-1; any byte, control characters and newlines
    # included, must make one valid line.
    recorder = Recorder(metrics, PathLabeler(100), pipe_log.log)
    recorder.started()
    raw = bytes(range(256))
    ex = make_exchange(path=raw.decode("latin-1"))
    ex.user_agent = b'agent "quoted" \\ \xff\x7f'.decode("latin-1")
    recorder.finished(ex)
    (line,) = pipe_log.lines()
    assert line["path"] == raw.decode("latin-1")
    assert line["user_agent"] == ex.user_agent


def test_timestamps_are_rfc3339_utc_millis(metrics: Metrics, pipe_log: PipeLog) -> None:
    recorder = Recorder(metrics, PathLabeler(100), pipe_log.log)
    walls = [0.0, 0.9999, 1714564799.999, 1714564800.0, time.time()]
    for wall in walls:
        ex = make_exchange()
        ex.start_wall = wall
        recorder.started()
        recorder.finished(ex)
    stamps = [line["time"] for line in pipe_log.lines()]
    assert stamps[:4] == [
        "1970-01-01T00:00:00.000Z",
        "1970-01-01T00:00:00.999Z",
        "2024-05-01T11:59:59.999Z",
        "2024-05-01T12:00:00.000Z",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(stamps[4]))


def test_breaker_open_reasons_are_the_breakers() -> None:
    assert tuple(r.value for r in OpenReason) == BREAKER_OPEN_REASONS


# --- the compiled arithmetic of the hot path, against the library calls it replaced ----------


@given(st.floats(min_value=0.0, max_value=20.0) | st.sampled_from([*BUCKETS, 0.0, 1e-9, 10.5]))
def test_bucket_index_is_bisect_left(value: float) -> None:
    # the "le" bucket: a value equal to a bound belongs to it
    assert bucket_index(value) == bisect.bisect_left(BUCKETS, value)


@given(st.integers(min_value=0, max_value=10**10), st.sampled_from([0.0, 0.25, 0.4, 0.6, 0.75]))
def test_millis_is_round_to_three_places(micros: int, fraction: float) -> None:
    # every duration away from a nanosecond tie: what round(seconds * 1000, 3) gave
    seconds = (micros + fraction) / 1e6
    assert millis(seconds) == round(seconds * 1000.0, 3)
