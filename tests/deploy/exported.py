"""The metrics sidecar-proxy exports: the one list the deploy artefacts are checked against.

Dashboards and alerts may name only these metrics and only these labels (plus the labels
Prometheus itself attaches at scrape time). test_metrics_contract.py holds this list against what
the sidecar really registers, so a metric renamed in the code fails there, not in production.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import generate_latest

from sidecar_proxy.observe.metrics import GrpcSeries, H2Series, RequestSeries, SloSeries

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Exported:
    type: MetricType
    labels: frozenset[str]


def _m(kind: MetricType, *labels: str) -> Exported:
    return Exported(kind, frozenset(labels))


# Names as they appear in the exposition text (counters with their _total suffix).
METRICS: dict[str, Exported] = {
    # The seed's five.
    "sidecar_requests_total": _m("counter", "method", "path", "status"),
    "sidecar_request_duration_seconds": _m("histogram", "method", "path"),
    "sidecar_requests_in_flight": _m("gauge"),
    "sidecar_upstream_errors_total": _m("counter", "type"),
    "sidecar_circuit_breaker_state": _m("gauge"),
    # Added by sidecar-proxy.
    "sidecar_circuit_breaker_transitions_total": _m("counter", "to"),
    "sidecar_circuit_breaker_opened_total": _m("counter", "reason"),
    "sidecar_upstream_response_seconds": _m("histogram", "method"),
    "sidecar_retries_total": _m("counter"),
    "sidecar_retries_budget_exhausted_total": _m("counter"),
    "sidecar_requests_rejected_total": _m("counter", "reason"),
    "sidecar_upstream_connections_opened_total": _m("counter"),
    "sidecar_upstream_connections_reused_total": _m("counter"),
    "sidecar_request_bytes_total": _m("counter"),
    "sidecar_response_bytes_total": _m("counter"),
    "sidecar_downstream_connections": _m("gauge"),
    "sidecar_access_log_dropped_total": _m("counter"),
    "sidecar_app_ready": _m("gauge"),
    "sidecar_config_reloads_total": _m("counter", "result"),
    "sidecar_worker_restarts_total": _m("counter", "reason"),
    "sidecar_build_info": _m("gauge", "version", "python", "compiled"),
    "sidecar_tls_handshake_errors_total": _m("counter", "reason"),
    "sidecar_tls_certificate_expiry_timestamp_seconds": _m("gauge", "file"),
    "sidecar_tls_reloads_total": _m("counter", "result"),
    "sidecar_tls_reload_failing": _m("gauge"),
    "sidecar_slo_burn_rate": _m("gauge", "slo", "window"),
    "sidecar_slo_error_budget_remaining": _m("gauge", "slo"),
    "sidecar_grpc_requests_total": _m("counter", "service", "method", "grpc_status"),
    "sidecar_grpc_request_duration_seconds": _m("histogram", "service", "method"),
    "sidecar_grpc_request_messages_total": _m("counter", "service", "method"),
    "sidecar_grpc_response_messages_total": _m("counter", "service", "method"),
    "sidecar_retry_spool_errors_total": _m("counter"),
    "sidecar_hook_errors_total": _m("counter", "hook"),
    "sidecar_h2_streams_active": _m("gauge", "leg"),
    "sidecar_h2_resets_total": _m("counter", "leg", "direction", "code"),
    "sidecar_h2_goaway_total": _m("counter", "leg", "direction", "code"),
    "sidecar_h2_floods_total": _m("counter", "leg", "reason"),
    "sidecar_h2_keepalive_timeouts_total": _m("counter"),
}

# The seed's histogram buckets, which sidecar_request_duration_seconds keeps.
SEED_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Label values the alerts and dashboard match on.
UPSTREAM_ERROR_TYPES = frozenset(
    {"connection_error", "5xx_error", "circuit_open", "timeout", "reset", "protocol_error"}
)
REJECT_REASONS = frozenset({"shed", "circuit_open", "rate_limit"})
RELOAD_RESULTS = frozenset({"success", "failure"})  # sidecar_config_reloads_total{result}
BREAKER_STATES = {0: "Closed", 1: "Open", 2: "Half-Open"}  # sidecar_circuit_breaker_state
BREAKER_TRANSITIONS = frozenset({"closed", "open", "half_open"})  # ..._transitions_total{to}
BREAKER_OPEN_REASONS = frozenset({"failures", "slow_calls"})  # ..._opened_total{reason}

# Prometheus adds these to every scraped series (the pod scrape job in
# deploy/prometheus/prometheus.yml adds namespace and pod too), so queries may select on them.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def base_metric(series_name: str) -> str | None:
    """The exported metric a series name belongs to, or None if it belongs to none."""
    if series_name in METRICS:
        return series_name
    for suffix in HISTOGRAM_SUFFIXES:
        stem = series_name.removesuffix(suffix)
        if stem != series_name and METRICS.get(stem, _m("gauge")).type == "histogram":
            return stem
    return None


def labels_of(series_name: str) -> frozenset[str]:
    """Label names a series of this name can carry, including Prometheus' target labels."""
    base = base_metric(series_name)
    assert base is not None, series_name
    extra = {"le"} if series_name.endswith("_bucket") else set()
    return METRICS[base].labels | TARGET_LABELS | extra


_KINDS: dict[str, MetricType] = {"counter": "counter", "gauge": "gauge", "histogram": "histogram"}


def from_exposition(text: str) -> dict[str, Exported]:
    """The sidecar_* metrics a Prometheus text exposition declares, by their # TYPE lines, with
    the label names its samples carry (le aside). A metric with no samples yet shows no labels.
    """
    found: dict[str, Exported] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if name.startswith("sidecar_"):
                found[name] = Exported(_KINDS[kind], frozenset())
                labels[name] = set()
        elif line and not line.startswith("#"):
            series = line.split(" ", 1)[0]
            name, _, rest = series.partition("{")
            base = name if name in found else name.rsplit("_", 1)[0]
            if base in labels and rest:
                pairs = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', rest)
                labels[base].update(k for k in pairs if k != "le")
    return {name: Exported(m.type, frozenset(labels[name])) for name, m in found.items()}


def from_registry(registry: Any) -> dict[str, Exported]:
    """The sidecar_* metrics a prometheus_client CollectorRegistry holds, with every label name
    each is declared with, whether or not a labelled series exists yet."""
    declared = from_exposition(generate_latest(registry).decode())
    # prometheus_client keeps the declared label names only on the collector (a private
    # attribute, stable since its first releases); the public exposition shows them only once
    # a series exists. The sidecar's own collectors declare them in LABEL_NAMES.
    collectors = registry._names_to_collectors

    def label_names(name: str) -> tuple[str, ...]:
        collector = collectors[name]
        if isinstance(collector, RequestSeries | SloSeries | GrpcSeries | H2Series):
            return collector.LABEL_NAMES.get(name, ())
        names: tuple[str, ...] = collector._labelnames
        return names

    return {
        name: Exported(m.type, m.labels | frozenset(label_names(name)))
        for name, m in declared.items()
    }
