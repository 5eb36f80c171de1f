"""gRPC through the sidecar with real grpcio clients and a grpc.aio app (UPSTREAM_PROTOCOL=h2c):
the four call kinds, deadlines, gRPC-shaped answers of the sidecar's own, status retries, the
breaker's view of statuses, cancellation, large messages, a slow reader, metrics and the log.
Where the app must misbehave in ways a gRPC runtime will not (ignore its deadline, stop reading),
the app is a scripted h2c one (support.h2app) and the client calls with raw bytes."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from support.grpcapp import OPTIONS, GrpcApp, generate
from support.h2app import H2App
from support.hardening import wait_for
from support.logpipe import read_log
from support.process import run_proxy

from bench.procs import status_kib
from sidecar_proxy.http.grpc import parse_timeout
from sidecar_proxy.server import ProxyServer


@pytest.fixture(scope="module")
def protos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return generate(tmp_path_factory.mktemp("protos"))


@pytest.fixture
def app(protos: tuple[Any, Any]) -> Iterator[GrpcApp]:
    app = GrpcApp(*protos)
    app.start()
    yield app
    app.stop()


@pytest.fixture
def connect(protos: tuple[Any, Any]) -> Iterator[Callable[[int], Any]]:
    channels: list[grpc.Channel] = []

    def stub(port: int) -> Any:
        # no BDP probing: the client's window stays at its initial size, so a slow reader's
        # backlog is what the sidecar holds back, not what grpcio's window growth lets in
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[*OPTIONS, ("grpc.http2.bdp_probe", 0)]
        )
        channels.append(channel)
        return protos[1].EchoStub(channel)

    yield stub
    for channel in channels:
        channel.close()


def h2c(start_proxy: Callable[..., ProxyServer], port: int, **overrides: Any) -> ProxyServer:
    return start_proxy(port, upstream_protocol="h2c", **overrides)


def test_the_four_call_kinds_with_many_messages(
    app: GrpcApp,
    connect: Callable[[int], Any],
    start_proxy: Callable[..., ProxyServer],
    log_pipe: tuple[int, int],
) -> None:
    proxy = h2c(start_proxy, app.port, access_log_fd=log_pipe[1])
    stub = connect(proxy.port)
    Msg = app.pb2.Msg
    assert stub.Unary(Msg(data=b"hi"), timeout=5).data == b"hi"
    replies = list(stub.ServerStream(Msg(n=1000, data=b"x" * 100), timeout=10))
    assert [r.n for r in replies] == list(range(1000))
    summary = stub.ClientStream(iter([Msg(data=b"y" * 10) for _ in range(1000)]), timeout=10)
    assert (summary.n, summary.data) == (1000, b"10000")
    echoed = list(stub.Bidi(iter([Msg(n=i) for i in range(1000)]), timeout=10))
    assert [r.n for r in echoed] == list(range(1000))

    lines = read_log(log_pipe[0], 4)
    assert [(line["grpc_service"], line["grpc_method"], line["grpc_status"]) for line in lines] == [
        ("sidecar.test.Echo", m, 0) for m in ("Unary", "ServerStream", "ClientStream", "Bidi")
    ]
    assert all(line["protocol"] == "HTTP/2.0" and line["status"] == 200 for line in lines)
    g = proxy.metrics.grpc
    assert g.calls[("sidecar.test.Echo", "ServerStream", "OK")] == 1
    assert g.request_messages[("sidecar.test.Echo", "ClientStream")] == 1000
    assert g.response_messages[("sidecar.test.Echo", "ServerStream")] == 1000
    assert g.response_messages[("sidecar.test.Echo", "Bidi")] == 1000
    assert proxy.metrics.requests.requests[("POST", "/sidecar.test.Echo/Unary", 200)] == 1


def test_a_failed_call_counts_by_its_status_and_for_the_breaker(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port, circuit_breaker_threshold=2)
    stub = connect(proxy.port)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            stub.Unary(app.pb2.Msg(mode="fail"), timeout=5)
        assert err.value.code() is grpc.StatusCode.INTERNAL
        assert err.value.details() == "broken"
    assert proxy.metrics.grpc.calls[("sidecar.test.Echo", "Unary", "INTERNAL")] == 2
    # two INTERNALs (HTTP 200 each) opened the breaker: the next call gets the sidecar's answer
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(app.pb2.Msg(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker open" in err.value.details()
    assert app.calls == {"fail": 2}


def test_an_ok_stream_with_late_trailers_is_a_success(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port, circuit_breaker_threshold=1)
    stub = connect(proxy.port)
    for _ in range(3):
        assert len(list(stub.ServerStream(app.pb2.Msg(n=3, delay_ms=20), timeout=5))) == 3
    assert proxy.metrics.grpc.calls[("sidecar.test.Echo", "ServerStream", "OK")] == 3


def test_the_callers_deadline_goes_to_the_app_and_is_enforced(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port, request_timeout=30.0)
    stub = connect(proxy.port)
    reply = stub.Unary(app.pb2.Msg(mode="sleep", delay_ms=10), timeout=2)
    # The time left, not REQUEST_TIMEOUT (30 s). The app's gRPC runtime reads a cached clock when
    # it sets the deadline and another when asked, so its view can be a few ms over what was sent.
    assert 0.5 < reply.remaining_us / 1e6 < 2.5
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(app.pb2.Msg(mode="sleep", delay_ms=3000), timeout=0.3)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3  # 0.3 s, with room for a loaded machine


def test_request_timeout_bounds_a_call_and_a_whole_stream(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port, request_timeout=0.5)
    stub = connect(proxy.port)
    reply = stub.Unary(app.pb2.Msg(mode="sleep", delay_ms=10), timeout=20)
    assert reply.remaining_us / 1e6 < 1.0  # the shorter of the two (0.5 s, not 20) went to the app
    # without a deadline of the caller's, the app has none: the sidecar's answer says why
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(app.pb2.Msg(mode="sleep", delay_ms=3000))
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == (
        "sidecar-proxy: 504 Gateway Timeout: the app did not answer in time"
    )
    # a stream that keeps sending is cut at the deadline (by the app, which was told, or by
    # the sidecar's trailers, whichever comes first)
    got: list[int] = []
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        got.extend(r.n for r in stub.ServerStream(app.pb2.Msg(n=1000, delay_ms=50), timeout=20))
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert 2 <= len(got) < 20 and time.monotonic() - started < 2


@pytest.mark.parametrize("retry_on", ["", "unavailable"])
def test_unavailable_is_retried_only_when_configured(
    retry_on: str,
    app: GrpcApp,
    connect: Callable[[int], Any],
    start_proxy: Callable[..., ProxyServer],
) -> None:
    retry = frozenset({14}) if retry_on else frozenset()
    proxy = h2c(start_proxy, app.port, grpc_retry_on=retry, retry_backoff=0.01)
    stub = connect(proxy.port)
    if retry_on:
        assert stub.Unary(app.pb2.Msg(mode="flaky"), timeout=5).n == 2
    else:
        with pytest.raises(grpc.RpcError) as err:
            stub.Unary(app.pb2.Msg(mode="flaky"), timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "not yet"  # the app's own answer, relayed
    assert app.calls == {"flaky": 2 if retry_on else 1}
    assert (
        proxy.metrics.grpc.calls[
            ("sidecar.test.Echo", "Unary", "OK" if retry_on else "UNAVAILABLE")
        ]
        == 1
    )


def test_an_app_that_is_down_is_unavailable_with_the_sidecars_message(
    free_port: int,
    connect: Callable[[int], Any],
    start_proxy: Callable[..., ProxyServer],
    protos: tuple[Any, Any],
) -> None:
    proxy = h2c(start_proxy, free_port, max_retries=1, retry_backoff=0.01)
    stub = connect(proxy.port)
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(protos[0].Msg(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "sidecar-proxy: 502 Bad Gateway: the app is unreachable"
    assert proxy.metrics.grpc.calls[("sidecar.test.Echo", "Unary", "UNAVAILABLE")] == 1


def test_a_grpc_call_toward_an_http1_app_says_so(
    free_port: int,
    connect: Callable[[int], Any],
    start_proxy: Callable[..., ProxyServer],
    protos: tuple[Any, Any],
) -> None:
    proxy = start_proxy(free_port)  # UPSTREAM_PROTOCOL=http1
    with pytest.raises(grpc.RpcError) as err:
        connect(proxy.port).Unary(protos[0].Msg(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "HTTP/1.1" in err.value.details() and "UPSTREAM_PROTOCOL=h2c" in err.value.details()


def test_load_shedding_is_resource_exhausted(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port, max_in_flight=1)
    stub = connect(proxy.port)
    hanging = stub.Unary.future(app.pb2.Msg(mode="sleep", delay_ms=500), timeout=5)
    time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(app.pb2.Msg(), timeout=5)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    md = dict(err.value.trailing_metadata())
    assert md["grpc-retry-pushback-ms"] == "1000"
    assert hanging.result().n == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_malformed_grpc_timeout_is_internal(
    app: GrpcApp, start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            "grpc-timeout: 123456789S",
            "--data-binary",
            "",
            f"http://127.0.0.1:{proxy.port}/sidecar.test.Echo/Unary",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.lower()
    assert "http/2 200" in out and "content-type: application/grpc" in out
    assert "grpc-status: 13" in out and "grpc-message: sidecar-proxy: malformed grpc-timeout" in out
    assert app.calls == {}


def test_cancellation_reaches_the_app(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port)
    call = connect(proxy.port).Unary.future(app.pb2.Msg(mode="hang"), timeout=20)
    deadline = time.monotonic() + 5
    while not app.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    call.cancel()
    assert app.cancelled.wait(5)


def test_four_mib_messages_both_ways(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port)
    stub = connect(proxy.port)
    big = bytes(range(256)) * (4 << 12)  # 4 MiB
    assert stub.Unary(app.pb2.Msg(data=big), timeout=10).data == big
    echoed = list(stub.Bidi(iter([app.pb2.Msg(n=i, data=big) for i in range(3)]), timeout=20))
    assert [(r.n, r.data == big) for r in echoed] == [(0, True), (1, True), (2, True)]


def test_a_slow_reader_holds_the_app_back(
    app: GrpcApp, connect: Callable[[int], Any], start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = h2c(start_proxy, app.port)
    size = 16 << 10
    stream = connect(proxy.port).ServerStream(app.pb2.Msg(n=2000, data=b"z" * size), timeout=30)
    read = 0
    for _ in stream:
        read += 1
        if read == 10:
            time.sleep(0.5)  # the app writes as fast as it may meanwhile
            ahead = (app.sent - read) * size
            # what the windows let through: the app's own buffer and stream window, the sidecar's
            # two stream windows (256 KiB each) and the client's: a few MiB, never the 32 MiB
            assert ahead < 6 << 20, ahead
    assert read == 2000


def test_a_slow_reader_costs_the_sidecar_no_memory_for_what_the_app_writes_ahead(
    app: GrpcApp, connect: Callable[[int], Any]
) -> None:
    # The sidecar as its own process, so its resident memory is its own: while the client stops
    # reading a 64 MiB stream the app writes as fast as it may, the sidecar's RSS must grow by
    # no more than its windows and write buffers hold (well under a MiB), whatever the app has
    # ready.
    size, count = 256 << 10, 256  # 64 MiB
    Msg = app.pb2.Msg
    with run_proxy(app.port, {"UPSTREAM_PROTOCOL": "h2c"}) as sidecar:
        stub = connect(sidecar.port)
        # the same stream read at full speed first: what a stream costs anyway is in the baseline
        assert (
            len(list(stub.ServerStream(Msg(n=count // 8, data=b"w" * size), timeout=30)))
            == count // 8
        )
        baseline = peak = sidecar.status_kib("VmRSS")
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, status_kib(sidecar.pid, "VmRSS"))

        sampler = threading.Thread(target=sample)
        sampler.start()
        read = lead = 0
        try:
            for _ in stub.ServerStream(Msg(n=count, data=b"z" * size), timeout=30):
                read += 1
                if read == 4:
                    time.sleep(1.5)  # long enough for the app to write all 64 MiB, unheld
                    lead = app.sent - read
        finally:
            done.set()
            sampler.join()
    assert read == count
    growth = (peak - baseline) << 10
    # measured: 0-0.2 MiB; 65 MiB with the app's stream never paused
    assert growth < 4 << 20, f"RSS grew {growth / 2**20:.1f} MiB"
    assert 0 < lead < count // 4, lead  # the app was held back, not done


# -- the sidecar's own deadline, against an app that ignores the one it is told --------------------

SIDECAR_DEADLINE = 0.5  # REQUEST_TIMEOUT; each call's own deadline is far longer
CANCEL = 0x8  # RFC 9113 §7


def raw_channel(port: int) -> grpc.Channel:
    """A channel whose calls take and return raw message bytes."""
    return grpc.insecure_channel(f"127.0.0.1:{port}")


def assert_ended_by_the_sidecar(app: H2App, log_pipe: tuple[int, int]) -> None:
    """The app had its stream cancelled, as a gRPC server cancels a call past its deadline, and
    the log says the app timed out (DEADLINE_EXCEEDED, flag UT)."""
    assert wait_for(lambda: bool(app.resets)) and app.resets == [(1, CANCEL)]
    (line,) = read_log(log_pipe[0], 1)
    assert (line["status"], line["flags"], line["grpc_status"]) == (200, "UT", 4)


def assert_told_the_deadline(app: H2App) -> None:
    """The app was told the sidecar's deadline (and ignored it)."""
    (told,) = app.requests
    assert parse_timeout(told[b"grpc-timeout"]) <= SIDECAR_DEADLINE


def test_the_sidecars_deadline_ends_a_call_the_app_never_answers(
    start_h2app: Callable[..., H2App],
    start_proxy: Callable[..., ProxyServer],
    log_pipe: tuple[int, int],
) -> None:
    app = start_h2app(hold=True)
    proxy = h2c(start_proxy, app.port, request_timeout=SIDECAR_DEADLINE, access_log_fd=log_pipe[1])
    with raw_channel(proxy.port) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/sidecar.test.Echo/Unary")(b"", timeout=60)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == (
        "sidecar-proxy: 504 Gateway Timeout: the app did not answer in time"
    )
    assert_told_the_deadline(app)
    assert_ended_by_the_sidecar(app, log_pipe)


def test_the_sidecars_deadline_ends_a_server_stream_the_app_stops_midway(
    start_h2app: Callable[..., H2App],
    start_proxy: Callable[..., ProxyServer],
    log_pipe: tuple[int, int],
) -> None:
    app = start_h2app(messages_then_hang=3)
    proxy = h2c(start_proxy, app.port, request_timeout=SIDECAR_DEADLINE, access_log_fd=log_pipe[1])
    got: list[bytes] = []
    with raw_channel(proxy.port) as channel, pytest.raises(grpc.RpcError) as err:
        got.extend(channel.unary_stream("/sidecar.test.Echo/ServerStream")(b"", timeout=60))
    assert got == [b"message 0", b"message 1", b"message 2"]  # delivered, then the deadline
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == "sidecar-proxy: deadline exceeded"
    assert_told_the_deadline(app)
    assert_ended_by_the_sidecar(app, log_pipe)
    assert proxy.metrics.grpc.response_messages[("sidecar.test.Echo", "ServerStream")] == 3


def test_a_client_stream_the_app_stops_reading_ends_with_the_apps_timeout(
    start_h2app: Callable[..., H2App],
    start_proxy: Callable[..., ProxyServer],
    log_pipe: tuple[int, int],
) -> None:
    # No deadline of the caller's: only the sidecar's stall limit ends a call whose messages the
    # app stopped taking (its window stays shut). Not the client's fault, so not its timeout.
    app = start_h2app(read_bodies=False)
    proxy = h2c(
        start_proxy,
        app.port,
        request_timeout=SIDECAR_DEADLINE,
        client_body_timeout=0.2,
        access_log_fd=log_pipe[1],
    )
    messages = (b"m" * 65536 for _ in range(1024))  # 64 MiB if it were all taken
    with raw_channel(proxy.port) as channel:
        call = channel.stream_unary("/sidecar.test.Echo/ClientStream").future(messages)
        try:
            err = call.exception(timeout=10)
        finally:
            call.cancel()
    assert isinstance(err, grpc.RpcError)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.details() == (
        "sidecar-proxy: 504 Gateway Timeout: the app stopped reading the request"
    )
    assert_ended_by_the_sidecar(app, log_pipe)
