"""The admin server over real sockets: metrics in both formats, probes, errors, HEAD."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from sidecar_proxy.admin.server import AdminServer, allowed
from sidecar_proxy.lifecycle.health import HealthState, health_body, ready_body
from sidecar_proxy.observe.metrics import Metrics
from sidecar_proxy.observe.paths import PathLabeler
from sidecar_proxy.observe.record import Record
from sidecar_proxy.observe.recorder import Recorder
from sidecar_proxy.observe.tracecontext import trace_id

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Admin:
    def __init__(self, allow: tuple[str, ...] = ("127.0.0.0/8",), quit: bool = True) -> None:
        self.metrics = Metrics()
        self.health = HealthState()
        self.quits: list[str] = []
        self.server = AdminServer(
            "127.0.0.1",
            0,
            self.metrics.registry,
            self.health,
            allow=allow,
            on_quit=(lambda: self.quits.append(threading.current_thread().name)) if quit else None,
        )
        self.server.start()

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@pytest.fixture
def admin() -> Iterator[Admin]:
    a = Admin()
    yield a
    a.server.stop()


def record_traced_request(metrics: Metrics) -> None:
    recorder = Recorder(metrics, PathLabeler(100), None)
    ex = Record(50.0, 1714564800.0, "127.0.0.1:40000", "HTTP/1.1")
    ex.method = "GET"
    ex.path = "/orders/17"
    ex.request_id = "req-1"
    ex.trace_id, ex.traced = trace_id(
        f"00-{TRACE}-00f067aa0ba902b7-01".encode(), None, ex.request_id
    )
    assert ex.traced
    ex.status = 200
    ex.ttfb = 0.02
    ex.end = 50.03
    ex.attempts = 1
    recorder.started()
    recorder.finished(ex)


def test_metrics_prometheus_text(admin: Admin) -> None:
    record_traced_request(admin.metrics)
    status, headers, body = admin.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert int(headers["Content-Length"]) == len(body)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }
    key = (
        "sidecar_requests_total",
        (("method", "GET"), ("path", "/orders/:id"), ("status", "200")),
    )
    assert samples[key] == 1
    assert b"# {" not in body  # exemplars exist only in OpenMetrics


def test_metrics_openmetrics_with_exemplar(admin: Admin) -> None:
    record_traced_request(admin.metrics)
    status, headers, body = admin.request(
        "GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    found = {
        (s.name, s.labels.get("le")): s.exemplar
        for f in parse_openmetrics(body.decode())  # type: ignore[no-untyped-call]
        for s in f.samples
        if s.exemplar is not None
    }
    duration = found[("sidecar_request_duration_seconds_bucket", "0.05")]
    assert duration.labels == {"trace_id": TRACE}
    assert duration.value == pytest.approx(0.03)
    upstream = found[("sidecar_upstream_response_seconds_bucket", "0.025")]
    assert upstream.labels == {"trace_id": TRACE}


def test_metrics_head(admin: Admin) -> None:
    _, get_headers, get_body = admin.request("GET", "/metrics")
    status, headers, body = admin.request("HEAD", "/metrics")
    assert status == 200
    assert body == b""
    assert headers["Content-Type"] == get_headers["Content-Type"]
    assert int(headers["Content-Length"]) == len(get_body)  # nothing changed in between


def test_health(admin: Admin) -> None:
    status, headers, body = admin.request("GET", "/health")
    assert (status, body) == (200, b'{"status":"alive"}\n')
    assert headers["Content-Type"] == "application/json"
    assert headers["Server"] == "sidecar-proxy-admin"
    assert admin.request("HEAD", "/health")[0::2] == (200, b"")


def test_ready_follows_the_state(admin: Admin) -> None:
    status, headers, body = admin.request("GET", "/ready")
    assert (status, body) == (200, b'{"status":"ready"}\n')
    assert headers["Content-Type"] == "application/json"
    admin.health.set_app_ready(False)
    assert admin.request("GET", "/ready")[0::2] == (503, b'{"status":"not ready"}\n')
    status, headers, body = admin.request("HEAD", "/ready")
    assert (status, body, headers["Content-Length"]) == (503, b"", "23")
    admin.health.set_app_ready(True)
    assert admin.request("GET", "/ready")[0] == 200
    admin.health.shut_down()
    assert admin.request("GET", "/ready")[0] == 503


def test_probe_bodies_are_the_seeds() -> None:
    state = HealthState()
    assert health_body() == (200, b'{"status":"alive"}\n')
    assert ready_body(state) == (200, b'{"status":"ready"}\n')
    state.shut_down()
    assert ready_body(state) == (503, b'{"status":"not ready"}\n')
    assert ready_body(HealthState(app_ready=False)) == (503, b'{"status":"not ready"}\n')


def test_ready_needs_every_input_and_a_shutdown_is_final() -> None:
    # The pod's input (several workers) is independent of the app's, and neither undoes a drain.
    state = HealthState(pod_ready=False)
    assert not state.ready
    state.set_pod_ready(True)
    assert state.ready
    state.set_app_ready(False)
    assert not state.ready
    state.set_app_ready(True)
    state.shut_down()
    state.set_pod_ready(True)
    assert not state.ready


def test_query_strings_are_ignored_for_routing(admin: Admin) -> None:
    assert admin.request("GET", "/health?verbose=1")[0] == 200


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz", "/metrics/"])
def test_not_found(admin: Admin, path: str) -> None:
    status, _, body = admin.request("GET", path)
    assert status == 404
    assert body == b"404 not found\n"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_not_allowed(admin: Admin, method: str) -> None:
    status, headers, _ = admin.request(method, "/metrics")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert headers["Connection"] == "close"  # its body, if any, was not read


def test_quitquitquit_from_loopback_starts_the_shutdown(admin: Admin) -> None:
    status, headers, body = admin.request("POST", "/quitquitquit")
    assert (status, body) == (200, b"draining; the sidecar exits when done\n")
    assert headers["Connection"] == "close"
    # The reply goes first (so a stop that follows at once cannot cut it), the callback right
    # after it, on the same thread: wait for it rather than race it.
    deadline = time.monotonic() + 2.0
    while not admin.quits and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(admin.quits) == 1
    assert admin.quits[0] != threading.main_thread().name  # the callback runs on the admin thread


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_quitquitquit_takes_only_post(admin: Admin, method: str) -> None:
    status, headers, body = admin.request(method, "/quitquitquit")
    assert status == 405
    assert headers["Allow"] == "POST"
    assert body == (b"" if method == "HEAD" else b"405 method not allowed\n")
    assert admin.quits == []


def test_quitquitquit_from_an_address_not_allowed_is_forbidden() -> None:
    admin = Admin(allow=("10.0.0.0/8", "::1"))
    try:
        status, _, body = admin.request("POST", "/quitquitquit")
        assert (status, body) == (403, b"403 forbidden: this address is not in ADMIN_ALLOW\n")
        assert admin.quits == []
    finally:
        admin.server.stop()


def test_no_quit_endpoint_without_a_callback() -> None:
    admin = Admin(quit=False)
    try:
        assert admin.request("POST", "/quitquitquit")[0] == 404
        assert admin.request("GET", "/quitquitquit")[0] == 404
    finally:
        admin.server.stop()


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client of a dual-stack listener
        ("fe80::1%eth0", False),
        ("10.1.2.3", False),
        ("not an address", False),
    ],
)
def test_allowed(address: str, ok: bool) -> None:
    networks = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")]
    assert allowed(address, networks) is ok


def test_unrecognised_method_is_not_implemented(admin: Admin) -> None:
    status, headers, body = admin.request("BREW", "/metrics")
    assert status == 501
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body.startswith(b"501 ")


def test_keep_alive_serves_several_requests_on_one_connection(admin: Admin) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", admin.server.port, timeout=5)
    try:
        for path in ("/metrics", "/health", "/ready", "/nope", "/metrics"):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status in (200, 404)
        assert conn.sock is not None  # still the same connection
    finally:
        conn.close()


def test_stop_releases_the_port() -> None:
    metrics = Metrics()
    server = AdminServer("127.0.0.1", 0, metrics.registry, HealthState())
    server.start()
    port = server.port
    server.stop()
    with pytest.raises(RuntimeError):
        _ = server.port
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    again = AdminServer("127.0.0.1", port, metrics.registry, HealthState())
    again.start()
    try:
        assert again.port == port
    finally:
        again.stop()


def test_port_in_use_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = AdminServer("127.0.0.1", s.getsockname()[1], Metrics().registry, HealthState())
        with pytest.raises(OSError):
            server.start()
