"""The pod's /metrics: workers' snapshots summed exactly as one process would have counted."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.record import ERR_5XX, Record
from sidecar_proxy.observe.recorder import Recorder
from sidecar_proxy.observe.slo import SloWindows
from sidecar_proxy.policy.breaker import BreakerState
from sidecar_proxy.workers import podmetrics
from sidecar_proxy.workers.podmetrics import PodMetrics, PodValue

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Worker:
    """A worker's metrics, and the same requests counted by one whole-pod process too."""

    def __init__(self, whole: Recorder) -> None:
        self.metrics = Metrics()
        self.recorder = Recorder(self.metrics, PathLabeler(50), None)
        self.whole = whole

    def request(self, rng: random.Random, trace_id: str = "") -> None:
        start = time.monotonic()
        ex = Record(start, time.time(), "127.0.0.1:1", "HTTP/1.1")
        ex.method = rng.choice(["GET", "POST"])
        ex.path = rng.choice(["/a", "/b", "/users/7"])
        ex.status = rng.choice([200, 200, 503])
        ex.attempts = rng.choice([0, 1, 2])
        ex.ttfb = rng.choice([None, 0.002, 0.2])
        ex.end = start + rng.choice([0.0005, 0.003, 0.3, 4.0])
        ex.bytes_in, ex.bytes_out = rng.randrange(100), rng.randrange(1000)
        ex.request_id = "r"
        ex.trace_id = trace_id or ex.request_id
        ex.traced = bool(trace_id)  # from a trace header: the recorder keeps exemplars of those
        if ex.status == 503:
            ex.upstream_errors.append(ERR_5XX)
        for recorder in (self.recorder, self.whole):
            recorder.started()
            recorder.finished(ex)

    def snapshot(self) -> list[Metric]:
        return list(self.metrics.registry.collect())


class View(Collector):
    def __init__(self, pod: PodMetrics) -> None:
        self.pod = pod

    def collect(self) -> Iterable[Metric]:
        return self.pod.collect()


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def pod_registry(pod: PodMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(View(pod))
    return registry


def test_the_sum_over_workers_is_what_one_process_counts() -> None:
    rng = random.Random(15)
    whole = Metrics()
    whole_recorder = Recorder(whole, PathLabeler(50), None)
    workers = [Worker(whole_recorder) for _ in range(3)]
    for _ in range(500):
        rng.choice(workers).request(rng)
    pod = PodMetrics(3, per_worker=False, pod_wide={})
    for index, worker in enumerate(workers):
        pod.update(index, worker.snapshot())
    got = samples(pod_registry(pod))
    # Equal to the last bit but for the float sums, which add in another order.
    assert got == pytest.approx(samples(whole.registry), rel=1e-12)
    assert sum(v for (name, _), v in got.items() if name == "sidecar_requests_total") == 500


def test_a_dead_workers_counts_stay_and_its_replacement_adds_to_them() -> None:
    rng = random.Random(1)
    whole_recorder = Recorder(Metrics(), PathLabeler(50), None)
    first, other = Worker(whole_recorder), Worker(whole_recorder)
    pod = PodMetrics(2, per_worker=False, pod_wide={})
    for _ in range(50):
        first.request(rng)
        other.request(rng)
    pod.update(0, first.snapshot())
    pod.update(1, other.snapshot())
    before = samples(pod_registry(pod))
    pod.retire(0)  # worker 0 died; a fresh one starts from zero
    replacement = Worker(whole_recorder)
    after_death = samples(pod_registry(pod))
    replacement.request(rng)
    pod.update(0, replacement.snapshot())
    after = samples(pod_registry(pod))
    for key, value in before.items():
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
            assert after_death[key] == value, key  # no counter went down: no reset for rate()
            assert after[key] >= value, key
    # Gauges of a dead worker go with it.
    gauge: tuple[str, frozenset[tuple[str, str]]] = ("sidecar_downstream_connections", frozenset())
    assert after_death[gauge] == 0.0


def test_per_worker_labels_instead_of_sums() -> None:
    rng = random.Random(2)
    whole = Recorder(Metrics(), PathLabeler(50), None)
    workers = [Worker(whole), Worker(whole)]
    for worker in workers:
        worker.request(rng)
    open_now: PodValue = lambda labels: float(BreakerState.OPEN)  # noqa: E731
    pod = PodMetrics(2, per_worker=True, pod_wide={podmetrics.BREAKER_STATE: open_now})
    for index, worker in enumerate(workers):
        pod.update(index, worker.snapshot())
    got = samples(pod_registry(pod))
    requests = {k: v for k, v in got.items() if k[0] == "sidecar_requests_total"}
    assert {dict(labels)["worker"] for _, labels in requests} == {"0", "1"}
    assert sum(requests.values()) == 2
    # Pod-wide series: one, unlabelled, the breaker's state read from the pod.
    assert got[("sidecar_circuit_breaker_state", frozenset())] == 1.0
    build = [k for k in got if k[0] == "sidecar_build_info"]
    assert len(build) == 1 and "worker" not in dict(build[0][1])


def test_the_latest_exemplar_of_a_bucket_wins_and_openmetrics_renders() -> None:
    whole = Recorder(Metrics(), PathLabeler(50), None)
    older, newer = Worker(whole), Worker(whole)
    older.request(random.Random(3), trace_id="a" * 32)  # the same request, so the same buckets
    time.sleep(0.01)
    newer.request(random.Random(3), trace_id="b" * 32)
    pod = PodMetrics(2, per_worker=False, pod_wide={})
    pod.update(0, older.snapshot())
    pod.update(1, newer.snapshot())
    text = generate_openmetrics(pod_registry(pod)).decode()  # type: ignore[no-untyped-call]
    assert 'trace_id="' + "b" * 32 in text
    assert "a" * 32 not in text


def gauge(name: str, samples: list[tuple[dict[str, str], float]], kind: str = "gauge") -> Metric:
    family = Metric(name, "help", kind)
    for labels, value in samples:
        family.add_sample(name + ("_total" if kind == "counter" else ""), labels, value)
    return family


def test_facts_every_worker_holds_are_combined_not_summed() -> None:
    expiry, failing = (
        "sidecar_tls_certificate_expiry_timestamp_seconds",
        "sidecar_tls_reload_failing",
    )
    burn, reloads = "sidecar_slo_burn_rate", "sidecar_config_reloads"
    file = {"file": "/tls/cert.pem"}
    window = {"slo": "availability", "window": "5m"}

    def worker(expires: float, failing_sets: float, burn_rate: float) -> list[Metric]:
        return [
            gauge(expiry, [(file, expires)]),
            gauge(failing, [({}, failing_sets)]),
            gauge(burn, [(window, burn_rate)]),
            gauge(reloads, [({"result": "success"}, 1.0)], "counter"),  # each worker's own count
        ]

    counts = {"success": 1.0, "failure": 2.0}
    pod = PodMetrics(
        3,
        per_worker=False,
        pod_wide={podmetrics.CONFIG_RELOADS: lambda labels: counts[labels["result"]]},
    )
    for index, (expires, failing_sets, burn_rate) in enumerate(
        [(2000.0, 0.0, 1.0), (1000.0, 1.0, 2.0), (3000.0, 0.0, 6.0)]
    ):
        pod.update(index, worker(expires, failing_sets, burn_rate))
    got = samples(pod_registry(pod))
    assert got[(expiry, frozenset(file.items()))] == 1000.0  # the soonest loaded anywhere
    assert got[(failing, frozenset())] == 1.0  # the most of any worker
    assert got[(burn, frozenset(window.items()))] == pytest.approx(3.0)  # the mean
    assert got[(reloads + "_total", frozenset({("result", "success")}))] == 1.0  # the parent's


def test_the_families_combined_by_name_exist() -> None:
    # The rules name families of observe/metrics.py; a renamed metric must not fall back to a sum.
    slo = SloWindows(99.9, 0.3, 99.0)
    names = {family.name for family in Metrics(slo).registry.collect()}
    combined = {
        podmetrics.BREAKER_STATE,
        podmetrics.APP_READY,
        podmetrics.CONFIG_RELOADS,
        podmetrics.WORKER_RESTARTS,
        podmetrics.BUILD_INFO,
        *podmetrics.SOONEST,
        *podmetrics.MOST,
        *podmetrics.MEAN,
    }
    assert combined <= names


def test_http2_series_are_summed_over_the_workers() -> None:
    # Open streams are a gauge of live workers, resets, GOAWAYs and floods counters: all add up.
    workers = [Metrics() for _ in range(3)]
    whole = Metrics()
    for n, worker in enumerate(workers, 1):
        for counts in (worker.h2.client, whole.h2.client):
            for _ in range(n):
                counts.stream_opened()
                counts.reset(True, 8)
                counts.reset(False, 0xDEAD)  # a code RFC 9113 does not define
            counts.goaway(False, 0)
            counts.flood("rapid_reset")
        for counts in (worker.h2.app, whole.h2.app):
            counts.stream_opened()
            counts.keepalive_timeout()
    pod = PodMetrics(3, per_worker=False, pod_wide={})
    for index, worker in enumerate(workers):
        pod.update(index, list(worker.registry.collect()))
    got = samples(pod_registry(pod))
    h2 = {key: v for key, v in got.items() if key[0].startswith("sidecar_h2_")}
    assert h2 == {
        k: v for k, v in samples(whole.registry).items() if k[0].startswith("sidecar_h2_")
    }
    client, app = ("leg", "client"), ("leg", "app")
    assert h2[("sidecar_h2_streams_active", frozenset({client}))] == 6
    assert h2[("sidecar_h2_streams_active", frozenset({app}))] == 3
    sent_cancel = frozenset({client, ("direction", "sent"), ("code", "CANCEL")})
    assert h2[("sidecar_h2_resets_total", sent_cancel)] == 6
    unknown = frozenset({client, ("direction", "received"), ("code", "UNKNOWN")})
    assert h2[("sidecar_h2_resets_total", unknown)] == 6
    assert h2[("sidecar_h2_floods_total", frozenset({client, ("reason", "rapid_reset")}))] == 3
    assert h2[("sidecar_h2_floods_total", frozenset({app, ("reason", "header_list")}))] == 0
    assert h2[("sidecar_h2_keepalive_timeouts_total", frozenset())] == 3
