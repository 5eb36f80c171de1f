"""The exported-metrics list the dashboard and alerts are checked against is the truth: it equals
what the sidecar registers, and what a running sidecar serves."""

from __future__ import annotations

import subprocess
import urllib.request

from exported import (
    BREAKER_OPEN_REASONS,
    BREAKER_TRANSITIONS,
    METRICS,
    REJECT_REASONS,
    RELOAD_RESULTS,
    SEED_BUCKETS,
    UPSTREAM_ERROR_TYPES,
    Exported,
    from_exposition,
    from_registry,
)
from prometheus_client import generate_latest
from running import LOOPBACK, PROMTOOL, serve, sidecar
from support.process import http_get

from sidecar_proxy.observe.metrics import Metrics


def label_values(text: str, metric: str, label: str) -> set[str]:
    """The values label takes in the exposition's samples of metric."""
    values = set()
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            for pair in line[len(metric) + 1 : line.index("}")].split(","):
                key, _, value = pair.partition("=")
                if key == label:
                    values.add(value.strip('"'))
    return values


def test_exposition_reader() -> None:
    text = (
        "# TYPE sidecar_a_total counter\n"
        'sidecar_a_total{method="GET",path="/x"} 1\n'
        "# TYPE sidecar_h_seconds histogram\n"
        'sidecar_h_seconds_bucket{method="GET",le="+Inf"} 1\n'
        "sidecar_h_seconds_count 1\n"
        "# TYPE process_open_fds gauge\n"
        "process_open_fds 7\n"
    )
    assert from_exposition(text) == {
        "sidecar_a_total": Exported("counter", frozenset({"method", "path"})),
        "sidecar_h_seconds": Exported("histogram", frozenset({"method"})),
    }
    assert label_values(text, "sidecar_a_total", "path") == {"/x"}


def test_the_list_is_what_the_sidecar_registers() -> None:
    assert from_registry(Metrics().registry) == METRICS


def test_label_values_the_alerts_and_dashboard_match_on() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert label_values(text, "sidecar_upstream_errors_total", "type") == UPSTREAM_ERROR_TYPES
    assert label_values(text, "sidecar_requests_rejected_total", "reason") == REJECT_REASONS
    assert label_values(text, "sidecar_config_reloads_total", "result") == RELOAD_RESULTS
    transitions = label_values(text, "sidecar_circuit_breaker_transitions_total", "to")
    assert transitions == BREAKER_TRANSITIONS
    reasons = label_values(text, "sidecar_circuit_breaker_opened_total", "reason")
    assert reasons == BREAKER_OPEN_REASONS


def test_a_running_sidecar_serves_the_list() -> None:
    with serve(b"hello from the app") as app, sidecar(app.port) as (proxy, metrics):
        for _ in range(3):
            with urllib.request.urlopen(f"http://{LOOPBACK}:{proxy}/orders", timeout=5) as resp:
                assert resp.status == 200
        status, body = http_get(metrics, "/metrics")
    assert status == 200
    text = body.decode()
    served = from_exposition(text)
    assert set(served) == set(METRICS)
    for name, metric in served.items():
        assert metric.type == METRICS[name].type, name
        # Only metrics with a series so far show their labels; those must be the declared ones.
        assert metric.labels in (frozenset(), METRICS[name].labels), name
    assert served["sidecar_requests_total"].labels == METRICS["sidecar_requests_total"].labels
    # The seed's buckets, so dashboards built on them keep their resolution.
    les = label_values(text, "sidecar_request_duration_seconds_bucket", "le")
    assert les == {str(b) for b in SEED_BUCKETS} | {"+Inf"}
    # Prometheus' own linter has nothing to say about the exposition.
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
