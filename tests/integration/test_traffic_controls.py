"""Rate limiting and Server-Timing over real sockets: what the client sees, logs and metrics."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable

from support.client import connect, get
from support.logpipe import read_log
from support.scrape import value
from support.upstream import Received, Upstream, response

from sidecar_proxy.server import ProxyServer


def test_over_the_rate_limit_is_429_with_the_ietf_fields_a_flag_and_a_count(
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., ProxyServer],
    log_pipe: tuple[int, int],
) -> None:
    up = start_upstream()
    # 0.1/s: not one token comes back during the test
    proxy = start_proxy(up.port, access_log_fd=log_pipe[1], rate_limit_rps=0.1, rate_limit_burst=2)
    assert [get(proxy.port, "/a").status for _ in range(2)] == [200, 200]
    refused = get(proxy.port, "/a")
    assert refused.status == 429
    assert refused.header("Retry-After") == "10"
    assert refused.header("RateLimit-Policy") == '"sidecar";q=1;w=10'
    assert refused.header("RateLimit") == '"sidecar";r=0;t=10'
    assert refused.header("X-Request-ID")  # a reply like the sidecar's others
    assert refused.body == b"429 Too Many Requests: rate limit exceeded\n"
    assert len(up.received) == 2  # the app never saw it
    # Health probes are never limited.
    assert get(proxy.port, "/ready").status == 200
    assert get(proxy.port, "/health").status == 200
    lines = read_log(log_pipe[0], 5)
    assert [(line["status"], line["flags"]) for line in lines] == [
        (200, ""),
        (200, ""),
        (429, "RL"),
        (200, "LR"),
        (200, "LR"),
    ]
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_requests_rejected_total", reason="rate_limit") == 1
    assert value(registry, "sidecar_requests_rejected_total", reason="shed") == 0


def test_health_paths_passed_to_the_app_are_not_limited_either(
    upstream: Upstream, start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = start_proxy(
        upstream.port, health_on_proxy_port=False, rate_limit_rps=0.1, rate_limit_burst=1
    )
    assert [get(proxy.port, path).status for path in ("/health", "/ready") * 3] == [200] * 6
    assert len(upstream.received) == 6  # the app answered them all
    assert get(proxy.port, "/a").status == 200
    assert get(proxy.port, "/a").status == 429


def test_a_head_request_over_the_limit_gets_the_fields_without_a_body(
    upstream: Upstream, start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = start_proxy(upstream.port, rate_limit_rps=0.1, rate_limit_burst=1)
    get(proxy.port, "/a")
    with connect(proxy.port) as sock:
        sock.sendall(b"HEAD /a HTTP/1.1\r\nHost: t\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 429 ") and data.endswith(b"\r\n\r\n")  # no body
    assert b'\r\nRateLimit: "sidecar";r=0;t=10\r\n' in data


def per_client(start_proxy: Callable[..., ProxyServer], port: int, trust: bool) -> ProxyServer:
    """A proxy allowing each client one request, then none for ten seconds."""
    return start_proxy(
        port,
        rate_limit_rps=0.1,
        rate_limit_burst=1,
        rate_limit_key="client_ip",
        trust_forwarded_headers=trust,
    )


def test_per_client_limits_take_the_address_the_proxy_in_front_saw(
    upstream: Upstream, start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = per_client(start_proxy, upstream.port, trust=True)

    def status(xff: str) -> int:
        return get(proxy.port, "/a", f"X-Forwarded-For: {xff}\r\n").status

    assert status("203.0.113.1") == 200
    assert status("203.0.113.2") == 200  # another client behind the same proxy
    # The client can write what it likes before the proxy's entry; only the last one counts.
    assert status("198.51.100.9, 203.0.113.1") == 429
    refused = get(proxy.port, "/a", "X-Forwarded-For: 203.0.113.2\r\n")
    pk = base64.b64encode(b"203.0.113.2").decode()
    assert refused.header("RateLimit") == f'"sidecar";r=0;t=10;pk=:{pk}:'


def test_per_client_limits_ignore_forwarded_headers_unless_trusted(
    upstream: Upstream, start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = per_client(start_proxy, upstream.port, trust=False)
    assert get(proxy.port, "/a", "X-Forwarded-For: 203.0.113.1\r\n").status == 200
    # A new X-Forwarded-For does not buy a new bucket: the socket's address is the key.
    assert get(proxy.port, "/a", "X-Forwarded-For: 203.0.113.2\r\n").status == 429


# --- Server-Timing -------------------------------------------------------------------------


async def timed_app(req: Received, w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(0.05)
    w.write(response(200, b"ok", [("Server-Timing", 'db;dur=12.5, cache;desc="hit"')]))


def durations(values: list[str]) -> dict[str, float]:
    joined = ", ".join(values)
    return {name: float(dur) for name, dur in re.findall(r"(\w+);dur=([0-9.]+)", joined)}


def test_server_timing_adds_sidecar_and_app_and_keeps_the_apps_entries(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    up = start_upstream(timed_app)
    proxy = start_proxy(up.port, server_timing=True)
    resp = get(proxy.port, "/t")
    values = resp.header_all("Server-Timing")
    assert values[0] == 'db;dur=12.5, cache;desc="hit"'  # the app's, first and untouched
    assert re.fullmatch(r"sidecar;dur=[0-9]+\.[0-9]{3}, app;dur=[0-9]+\.[0-9]{3}", values[1])
    timing = durations(values)
    assert timing["db"] == 12.5
    assert 45.0 <= timing["app"] < 1000.0  # the app slept 50 ms (a timer of ms granularity)
    assert 0.0 <= timing["sidecar"] < 50.0


def test_server_timing_counts_earlier_attempts_as_the_sidecars_time(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., ProxyServer]
) -> None:
    async def flaky(req: Received, w: asyncio.StreamWriter) -> None:
        if req.connection == 1:
            await asyncio.sleep(0.05)
            w.write(response(503, b"busy", [("Connection", "close")]))
        else:
            w.write(response(200, b"ok"))

    up = start_upstream(flaky)
    proxy = start_proxy(up.port, server_timing=True, retry_backoff=0.0)
    resp = get(proxy.port, "/t")
    assert resp.status == 200
    timing = durations(resp.header_all("Server-Timing"))
    assert timing["sidecar"] >= 45.0  # the failed attempt
    assert timing["app"] < 50.0


def test_no_server_timing_unless_asked(proxy: ProxyServer) -> None:
    assert get(proxy.port, "/t").header("Server-Timing") is None
