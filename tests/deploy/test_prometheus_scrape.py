"""A real Prometheus scrapes the sidecar, with the scrape job and alert rules shipped in
deploy/prometheus, and answers the queries the dashboard and alerts are built on.

Debian's Prometheus has no Kubernetes discovery, so the one thing replaced is discovery itself:
a static target carrying the labels pod discovery would attach, the pod's prometheus.io/*
annotations among them. The relabelling that turns them into the scrape address is the
shipped one.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from exported import METRICS, SEED_BUCKETS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from running import (
    LOOPBACK,
    REPO,
    api,
    prometheus,
    query,
    serve,
    sidecar,
    wait_for_query,
    wait_until,
)
from support.process import free_port

PROM = REPO / "deploy" / "prometheus"
NAMESPACE, POD = "shop", "my-application-7d9f8-x2x9z"


def discovered_pod(address: str, metrics_port: int, scrape: str = "true") -> dict[str, Any]:
    """A static target labelled the way Prometheus' pod discovery labels a pod's container port."""
    return {
        "targets": [address],
        "labels": {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": POD,
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(metrics_port),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        },
    }


def shipped_config(metrics_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, scraping every second, with a static pod in place of
    Kubernetes discovery, plus a pod that has not asked to be scraped."""
    config: dict[str, Any] = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROM / "alerts.yml")]
    [job] = config["scrape_configs"]
    del job["kubernetes_sd_configs"]
    # Discovery yields the pod's first declared container port (the app's); the annotation
    # must move the scrape to the metrics port.
    job["static_configs"] = [
        discovered_pod(f"{LOOPBACK}:{free_port()}", metrics_port),
        discovered_pod(f"{LOOPBACK}:{free_port()}", metrics_port, scrape="false"),
    ]
    return config


def check_prometheus_reads(metrics_port: int, workdir: Path) -> None:
    """Starts Prometheus on the shipped config and checks what it makes of the target."""
    with prometheus(workdir, shipped_config(metrics_port)) as prom:
        [(labels, _)] = wait_for_query(prom, 'up{job="kubernetes-pods"} == 1', timeout=20)
        assert labels["instance"] == f"{LOOPBACK}:{metrics_port}"
        assert (labels["namespace"], labels["pod"]) == (NAMESPACE, POD)
        targets = api(prom, "targets")
        assert len(targets["activeTargets"]) == 1, "the scrape=false pod is dropped"

        # Two scrapes a second apart with traffic between them give a rate.
        [(_, rate)] = wait_for_query(prom, "sum(rate(sidecar_requests_total[15s])) > 0", timeout=20)
        assert rate > 0
        [(_, state)] = query(prom, "sidecar_circuit_breaker_state")
        assert state == 0, "closed"
        [(_, p99)] = wait_for_query(
            prom,
            "histogram_quantile(0.99, sum by (le) "
            "(rate(sidecar_request_duration_seconds_bucket[15s])))",
            timeout=10,
        )
        assert 0 < p99 <= SEED_BUCKETS[-1]

        # The alert rules load and evaluate cleanly against the live series.
        shipped = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        expected = sum(len(group["rules"]) for group in shipped)

        def rules_evaluated() -> bool:
            rules = [r for g in api(prom, "rules")["groups"] for r in g["rules"]]
            return len(rules) == expected and all(
                r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
            )

        wait_until(rules_evaluated, 10, "alert rules evaluated without error")


def stand_in_exposition() -> Callable[[], bytes]:
    """What a sidecar exposes, built from the exported-metrics list with prometheus_client; each
    scrape sees one more request, as if traffic were flowing."""
    registry = CollectorRegistry()
    kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    made: dict[str, Any] = {}
    for name, metric in METRICS.items():
        extra = {"buckets": SEED_BUCKETS} if metric.type == "histogram" else {}
        labels = sorted(metric.labels)
        made[name] = kinds[metric.type](name, "stand-in", labels, registry=registry, **extra)
    made["sidecar_build_info"].labels(version="0.1.0", python="3.11.7", compiled="true").set(1)
    made["sidecar_circuit_breaker_state"].set(0)

    def scrape() -> bytes:
        made["sidecar_requests_total"].labels(method="GET", path="/orders", status="200").inc()
        made["sidecar_request_duration_seconds"].labels(method="GET", path="/orders").observe(0.02)
        return generate_latest(registry)

    return scrape


def test_prometheus_half_against_a_stand_in_exposition(tmp_path: Path) -> None:
    with serve(stand_in_exposition(), content_type="text/plain; version=0.0.4") as target:
        check_prometheus_reads(target.port, tmp_path)
        assert set(target.paths) == {"/metrics"}


@contextmanager
def steady_traffic(proxy_port: int) -> Iterator[list[int]]:
    """GETs through the sidecar every 50ms (at most 600, for at most 30s) while the block runs;
    yields the statuses seen so far."""
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and len(statuses) < 600 and time.monotonic() < deadline:
            url = f"http://{LOOPBACK}:{proxy_port}/orders/{len(statuses)}"
            with urllib.request.urlopen(url, timeout=5) as resp:
                statuses.append(resp.status)
            stop.wait(0.05)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=10)


@pytest.mark.parametrize("workers", [1, 2])
def test_prometheus_scrapes_the_running_sidecar(tmp_path: Path, workers: int) -> None:
    # With two workers Prometheus reads the parent's sum of them, in the format it negotiates.
    with (
        serve(b"hello from the app") as app,
        sidecar(app.port, workers) as (proxy_port, metrics_port),
        steady_traffic(proxy_port) as statuses,
    ):
        check_prometheus_reads(metrics_port, tmp_path)
    assert statuses and set(statuses) == {200}
