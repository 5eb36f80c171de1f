"""The alerting rules: promtool accepts them, their unit tests pass (and would catch a changed
threshold), and they name only metrics and labels the sidecar exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from exported import base_metric, labels_of
from promql_scan import scan
from running import PROMTOOL, REPO

PROM = REPO / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"

# Each alert shipped: how long its condition must hold, and its severity.
EXPECTED = {
    "SidecarCircuitBreakerOpen": ("1m", "critical"),
    "SidecarHighErrorRatio": ("5m", "critical"),
    "SidecarGrpcHighErrorRatio": ("5m", "critical"),
    "SidecarHighLatencyP99": ("10m", "warning"),
    "SidecarRetryBudgetExhausted": ("5m", "warning"),
    "SidecarLoadShedding": ("5m", "warning"),
    "SidecarTLSCertificateExpiresSoon": ("10m", "warning"),
    "SidecarTLSReloadFailing": ("10m", "warning"),
    "SidecarWorkerRestarted": ("0m", "warning"),
    "SidecarErrorBudgetBurn": ("2m", "critical"),
    "SidecarErrorBudgetBurnSlow": ("15m", "warning"),
}


def promtool(*args: str | Path, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    out = promtool("check", "rules", ALERTS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", "alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


# Changes to alerts.yml that alerts_test.yml must notice: each weakens or widens one alert.
MUTATIONS = {
    "half-open pages too": (
        "sidecar_circuit_breaker_state == 1",
        "sidecar_circuit_breaker_state >= 1",
    ),
    "breaker waits longer": ("for: 1m", "for: 3m"),
    "error threshold raised": ("> 0.05", "> 0.15"),
    "4xx counted as errors": ('status=~"5.."', 'status=~"[45].."'),
    "gRPC client errors counted": ('grpc_status=~"UNKNOWN|', 'grpc_status=~"NOT_FOUND|UNKNOWN|'),
    "gRPC errors not counted": ("|UNAVAILABLE|", "|"),
    "gRPC error threshold raised": (
        "sidecar_grpc_requests_total[5m]))\n            > 0.05",
        "sidecar_grpc_requests_total[5m]))\n            > 0.15",
    ),
    "latency threshold raised": (") > 1\n", ") > 3\n"),
    "latency waits less": ("for: 10m", "for: 2m"),
    "budget alert on any value": (
        "rate(sidecar_retries_budget_exhausted_total[5m]) > 0",
        "rate(sidecar_retries_budget_exhausted_total[5m]) >= 0",
    ),
    "any rejection is shedding": ('{reason="shed"}', ""),
    "severity changed": ("severity: critical", "severity: page"),
    "expiry window widened": ("< 7 * 86400", "< 9 * 86400"),
    "expiry window narrowed": ("< 7 * 86400", "< 5 * 86400"),
    "reload alert on any value": (
        "sidecar_tls_reload_failing > 0",
        "sidecar_tls_reload_failing >= 0",
    ),
    "reload alert waits less": (
        "sidecar_tls_reload_failing > 0\n        for: 10m",
        "sidecar_tls_reload_failing > 0\n        for: 3m",
    ),
    "restart alert on any value": (
        "increase(sidecar_worker_restarts_total[15m]) > 0",
        "increase(sidecar_worker_restarts_total[15m]) >= 0",
    ),
    "restart alert forgets sooner": (
        "sidecar_worker_restarts_total[15m]",
        "sidecar_worker_restarts_total[5m]",
    ),
    "fast burn threshold raised": ('{window="1h"}) > 14.4', '{window="1h"}) > 20'),
    "fast burn on the long window alone": (
        '{window="1h"}) > 14.4\n            and',
        '{window="1h"}) > 14.4\n            or',
    ),
    "fast burn's second pair raised": ('{window="6h"}) > 6', '{window="6h"}) > 8'),
    "fast burn's second pair on the long window alone": (
        '{window="6h"}) > 6\n            and',
        '{window="6h"}) > 6\n            or',
    ),
    "page waits longer": ("for: 2m", "for: 10m"),
    "slow burn threshold raised": ('{window="1d"}) > 3', '{window="1d"}) > 5'),
    "slow burn on the long window alone": (
        '{window="1d"}) > 3\n            and',
        '{window="1d"}) > 3\n            or',
    ),
    "slow burn's second pair raised": ('{window="3d"}) > 1\n', '{window="3d"}) > 2\n'),
    "slow burn's second pair on the long window alone": (
        '{window="3d"}) > 1\n            and',
        '{window="3d"}) > 1\n            or',
    ),
    "ticket sooner": ("for: 15m", "for: 5m"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_unit_tests_catch_a_changed_alert(mutation: str, tmp_path: Path) -> None:
    old, new = MUTATIONS[mutation]
    text = ALERTS.read_text()
    assert old in text, old
    (tmp_path / "alerts.yml").write_text(text.replace(old, new, 1))
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    out = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert out.returncode != 0, f"alerts_test.yml did not notice: {mutation}"


def test_the_expected_alerts_with_severity_and_annotations() -> None:
    found = {r["alert"]: r for r in rules()}
    assert set(found) == set(EXPECTED)
    for name, (duration, severity) in EXPECTED.items():
        rule = found[name]
        assert rule["for"] == duration, name
        assert rule["labels"] == {"severity": severity}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name


def test_rules_name_only_exported_metrics_and_their_labels() -> None:
    for rule in rules():
        names = scan(rule["expr"])
        assert names.metrics, rule["alert"]
        unknown = {m for m in names.metrics if base_metric(m) is None}
        assert not unknown, (rule["alert"], unknown)
        allowed = set().union(*(labels_of(m) for m in names.metrics))
        assert names.labels <= allowed, (rule["alert"], names.labels - allowed)
        # Templated annotations may only read labels the alert's series keep.
        for text in rule["annotations"].values():
            for label in _template_labels(text):
                assert label in allowed, (rule["alert"], label)


def _template_labels(text: str) -> set[str]:
    return set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text))


def test_the_example_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    # Debian's promtool is built without Kubernetes discovery, so the pod job's discovery is
    # swapped for a static target; relabelling and rule loading are checked as shipped.
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:9090"]}]
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = promtool("check", "config", tmp_path / "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in out.stdout
