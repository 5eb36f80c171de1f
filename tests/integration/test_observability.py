"""Metrics and access log, end to end: known traffic in, exact series and lines out."""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.client import connect, get, request
from support.logpipe import read_log
from support.process import run_proxy
from support.upstream import Received, Upstream, response

from sidecar_proxy.server import ProxyServer


def samples(proxy: ProxyServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(proxy.metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(proxy: ProxyServer, name: str, **labels: str) -> float:
    return samples(proxy).get((name, frozenset(labels.items())), 0.0)


async def app(req: Received, w: asyncio.StreamWriter) -> None:
    if req.target.startswith("/missing"):
        w.write(response(404, b"nope"))
    elif req.method == "POST":
        w.write(response(201, b"made"))
    else:
        w.write(response(200, b"hello"))


def test_seed_metrics_after_known_traffic(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream(app)
    proxy = start_proxy(up.port)
    for path in ("/users/1", "/users/2", "/missing/3"):
        get(proxy.port, path)
    request(proxy.port, b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    request(proxy.port, b"PROPFIND /dav HTTP/1.1\r\nHost: t\r\n\r\n")

    total = "sidecar_requests_total"
    assert value(proxy, total, method="GET", path="/users/:id", status="200") == 2
    assert value(proxy, total, method="GET", path="/missing/:id", status="404") == 1
    assert value(proxy, total, method="POST", path="/orders", status="201") == 1
    assert value(proxy, total, method="OTHER", path="/dav", status="200") == 1
    hist = "sidecar_request_duration_seconds_count"
    assert value(proxy, hist, method="GET", path="/users/:id") == 2
    # the seed's buckets, exactly
    s = samples(proxy)
    les = sorted(
        float(dict(labels)["le"])
        for (name, labels) in s
        if name == "sidecar_request_duration_seconds_bucket" and dict(labels)["path"] == "/orders"
    )
    assert les[:-1] == [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    assert value(proxy, "sidecar_requests_in_flight") == 0
    assert value(proxy, "sidecar_upstream_response_seconds_count", method="GET") == 3
    assert value(proxy, "sidecar_request_bytes_total") == 3
    assert value(proxy, "sidecar_response_bytes_total") == 5 + 5 + 4 + 4 + 5
    opened = value(proxy, "sidecar_upstream_connections_opened_total")
    reused = value(proxy, "sidecar_upstream_connections_reused_total")
    assert opened == 1 and reused == 4  # one pooled connection served all five
    assert value(proxy, "sidecar_circuit_breaker_state") == 0
    assert any(name == "sidecar_build_info" for name, _ in s)


def test_upstream_errors_use_the_seeds_types(
    start_proxy: Callable[..., ProxyServer], free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar_proxy.breaker")
    proxy = start_proxy(free_port, max_retries=0, circuit_breaker_threshold=1)
    assert get(proxy.port, "/").status == 502
    assert get(proxy.port, "/").status == 503  # breaker now open
    assert value(proxy, "sidecar_upstream_errors_total", type="connection_error") == 1
    assert value(proxy, "sidecar_upstream_errors_total", type="circuit_open") == 1
    assert value(proxy, "sidecar_requests_rejected_total", reason="circuit_open") == 1
    # the gauge says open while the breaker rejects (the seed's gauge read 0 here)
    assert value(proxy, "sidecar_circuit_breaker_state") == 1
    # and the transition was logged
    (record,) = [r for r in caplog.records if r.name == "sidecar_proxy.breaker"]
    assert record.getMessage() == "circuit breaker open" and record.levelno == logging.WARNING


def test_path_label_cardinality_is_capped(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream(app)
    proxy = start_proxy(up.port, metrics_path_label_limit=50)
    with connect(proxy.port) as sock:
        raw = b"".join(b"GET /page-%d/x HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(10_000))
        sock.sendall(raw)
        got = b""
        while got.count(b"HTTP/1.1 200") < 10_000:
            chunk = sock.recv(1 << 20)
            assert chunk
            got += chunk
    paths = {
        dict(labels)["path"]
        for (name, labels) in samples(proxy)
        if name == "sidecar_requests_total"
    }
    assert len(paths) <= 51
    assert "other" in paths
    assert (
        sum(v for (name, _), v in samples(proxy).items() if name == "sidecar_requests_total")
        == 10_000
    )


def test_one_access_log_line_per_request_with_fields(
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., ProxyServer],
    log_pipe: tuple[int, int],
) -> None:
    up = start_upstream(app)
    proxy = start_proxy(up.port, access_log_fd=log_pipe[1])
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    get(proxy.port, "/users/7?x=1", f"traceparent: {tp}\r\nUser-Agent: probe/1\r\n")
    request(proxy.port, b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    first, second = read_log(log_pipe[0], 2)
    assert set(first) >= {
        "time", "method", "path", "query", "status", "duration_ms", "upstream_ttfb_ms",
        "bytes_in", "bytes_out", "request_id", "trace_id", "remote_addr", "user_agent",
        "attempts", "flags",
    }  # fmt: skip
    assert first["method"] == "GET" and first["path"] == "/users/7" and first["query"] is True
    assert first["status"] == 200 and first["attempts"] == 1 and first["flags"] == ""
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first["user_agent"] == "probe/1" and first["remote_addr"] == "127.0.0.1"
    assert str(first["time"]).endswith("Z")
    assert isinstance(first["upstream_ttfb_ms"], float)
    assert second["bytes_in"] == 3 and second["bytes_out"] == 4 and second["status"] == 201
    assert second["trace_id"] == second["request_id"]
    # timings are measured finer than a millisecond (uvloop's loop clock is not)
    assert any(float(str(line["duration_ms"])) % 1 for line in (first, second))
    # the traceparent reached the app untouched
    assert up.received[0].header("traceparent") == tp


def test_openmetrics_exemplar_carries_the_trace_id(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream(app)
    proxy = start_proxy(up.port)
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    get(proxy.port, "/x", f"traceparent: {tp}\r\n")
    req = urllib.request.Request(
        f"http://127.0.0.1:{proxy.admin_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(req, timeout=3) as resp:
        text = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert 'trace_id="0af7651916cd43dd8448eb211c80319c"' in text


def test_health_and_ready_on_proxy_port_and_switch(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream(app)
    proxy = start_proxy(up.port)
    assert get(proxy.port, "/health").body == b'{"status":"alive"}\n'
    assert get(proxy.port, "/ready").status == 200
    assert up.received == []  # answered by the sidecar
    proxy.health.shut_down()
    assert get(proxy.port, "/ready").status == 503
    passthrough = start_proxy(up.port, health_on_proxy_port=False)
    assert get(passthrough.port, "/health").body == b"hello"  # the app's own /health


def test_trace_headers_pass_through_untouched(proxy: ProxyServer, upstream: Upstream) -> None:
    sent = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        "X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124",
        "X-B3-SpanId": "a2fb4a1d1a96d312",
        "X-B3-Sampled": "1",
    }
    get(proxy.port, "/t", "".join(f"{k}: {v}\r\n" for k, v in sent.items()))
    (received,) = upstream.received
    for name, value in sent.items():
        assert received.header_all(name) == [value]


def test_a_stuck_stdout_never_blocks_the_proxy(upstream: Upstream) -> None:
    """stdout is a pipe nobody reads: the access log drops and counts, requests keep flowing."""
    r, w = os.pipe()
    try:
        with run_proxy(upstream.port, stdout=w) as proc:
            with connect(proc.port) as sock:
                # enough lines to fill the pipe (64 KiB) and the log's own 8 MiB backlog
                for _ in range(40):
                    batch = b"GET /x HTTP/1.1\r\nHost: t\r\nUser-Agent: " + b"u" * 900 + b"\r\n\r\n"
                    sock.sendall(batch * 500)
                    got = 0
                    data = b""
                    while got < 500:
                        chunk = sock.recv(1 << 20)
                        assert chunk, "the proxy stopped answering"
                        data += chunk
                        got = data.count(b"HTTP/1.1 200")
            with urllib.request.urlopen(
                f"http://127.0.0.1:{proc.admin_port}/metrics", timeout=3
            ) as resp:
                text = resp.read().decode()
            dropped = [
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "sidecar_access_log_dropped_total"
            ]
            assert dropped and dropped[0] > 0
    finally:
        os.close(r)
        os.close(w)


def test_slo_burn_rates_from_real_traffic(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def half_failing(req: Received, w: asyncio.StreamWriter) -> None:
        if req.target.startswith("/fail"):
            w.write(response(500, b"broken"))
        elif req.target.startswith("/missing"):
            w.write(response(404, b"nope"))
        else:
            w.write(response(200, b"fine"))

    up = start_upstream(half_failing)
    proxy = start_proxy(up.port, slo_availability=99.0, max_retries=0, circuit_breaker_threshold=0)
    statuses = [get(proxy.port, path).status for path in ("/ok", "/fail", "/ok", "/fail")]
    statuses += [get(proxy.port, path).status for path in ("/missing", "/ready")]
    assert statuses == [200, 500, 200, 500, 404, 200]
    # Five events (the sidecar's own /ready aside), two of them 5xx: 40 % against a 1 % budget.
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        rate = value(proxy, "sidecar_slo_burn_rate", slo="availability", window=window)
        assert rate == pytest.approx(40.0), window
    left = value(proxy, "sidecar_slo_error_budget_remaining", slo="availability")
    assert left == pytest.approx(-39.0)
    # The latency SLO is off: no series for it.
    assert not [labels for name, labels in samples(proxy) if ("slo", "latency") in labels]
