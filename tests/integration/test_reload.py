"""Reloads applied to a running proxy: what changes at once, what keeps its state, what waits."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.client import get
from support.logpipe import read_log
from support.loop import LoopThread
from support.proxy import TEST_SETTINGS
from support.scrape import value
from support.upstream import Received, Upstream, response

from sidecar_proxy.config import ConfigError, LoadedSettings, Settings
from sidecar_proxy.policy.breaker import BreakerState
from sidecar_proxy.server import ProxyServer


class Reloadable:
    """A proxy whose configuration source the test rewrites, then reloads as SIGHUP would."""

    def __init__(self, loop: LoopThread, upstream_port: int, log_fd: int) -> None:
        self.loop = loop
        self.upstream_port = upstream_port
        self.next: Settings | ConfigError = self.settings()
        self.server = ProxyServer(self.settings(), log_fd, self.source)
        loop.run(self.server.start())

    def settings(self, **changes: Any) -> Settings:
        fields = {**TEST_SETTINGS, "upstream_port": self.upstream_port, **changes}
        return dataclasses.replace(Settings(), **fields)

    def source(self) -> LoadedSettings:
        if isinstance(self.next, ConfigError):
            raise self.next
        return LoadedSettings(self.next, {})

    def reload(self, next: Settings | ConfigError) -> None:
        self.next = next

        async def on_the_loop() -> None:
            self.server.reload()

        self.loop.run(on_the_loop())

    @property
    def port(self) -> int:
        return self.server.port


async def failing(req: Received, w: asyncio.StreamWriter) -> None:
    w.write(response(503 if req.target.startswith("/fail") else 200, b"x"))


@pytest.fixture
def proxy(
    loop: LoopThread, start_upstream: Callable[..., Upstream], log_pipe: tuple[int, int]
) -> Iterator[Reloadable]:
    up = start_upstream(failing)
    reloadable = Reloadable(loop, up.port, log_pipe[1])
    yield reloadable
    loop.run(reloadable.server.close())


def test_rate_limit_turns_on_and_off_without_a_restart(proxy: Reloadable) -> None:
    assert [get(proxy.port, "/").status for _ in range(3)] == [200, 200, 200]
    proxy.reload(proxy.settings(rate_limit_rps=0.1, rate_limit_burst=1))
    assert [get(proxy.port, "/").status for _ in range(2)] == [200, 429]
    proxy.reload(proxy.settings())
    assert get(proxy.port, "/").status == 200
    assert value(proxy.server.metrics.registry, "sidecar_config_reloads_total", result="success")


def test_the_breaker_keeps_its_state_through_a_reload(proxy: Reloadable) -> None:
    proxy.reload(proxy.settings(circuit_breaker_threshold=1, max_retries=0))
    assert get(proxy.port, "/fail").status == 503
    ctx = proxy.server.ctx
    assert ctx is not None
    breaker = ctx.breaker
    assert breaker.state is BreakerState.OPEN
    proxy.reload(proxy.settings(circuit_breaker_threshold=5, max_retries=0))
    assert ctx.breaker is breaker and breaker.state is BreakerState.OPEN
    refused = get(proxy.port, "/")
    assert refused.status == 503 and refused.header("Retry-After")  # still open: no app call


def test_in_flight_places_survive_a_new_concurrency_limit(proxy: Reloadable) -> None:
    ctx = proxy.server.ctx
    assert ctx is not None
    limiter = ctx.limiter
    proxy.reload(proxy.settings(max_in_flight=1))
    assert ctx.limiter is limiter  # requests that took a place release into the same one
    assert get(proxy.port, "/").status == 200
    assert limiter.in_flight == 0


def test_the_access_log_turns_on_and_off(proxy: Reloadable, log_pipe: tuple[int, int]) -> None:
    get(proxy.port, "/quiet-1")
    proxy.reload(proxy.settings(access_log=True))
    get(proxy.port, "/logged")
    proxy.reload(proxy.settings(access_log=False))
    get(proxy.port, "/quiet-2")
    proxy.reload(proxy.settings(access_log=True))
    get(proxy.port, "/logged-again")
    assert [line["path"] for line in read_log(log_pipe[0], 2)] == ["/logged", "/logged-again"]


def test_the_log_level_changes(proxy: Reloadable) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        proxy.reload(proxy.settings(log_level="error"))
        assert root.level == logging.ERROR
        proxy.reload(proxy.settings(log_level="debug"))
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


def test_settings_that_need_a_restart_keep_their_running_value(
    proxy: Reloadable, caplog: pytest.LogCaptureFixture
) -> None:
    running = proxy.server.settings
    with caplog.at_level(logging.INFO, logger="sidecar_proxy.server"):
        proxy.reload(proxy.settings(listen_port=1, attempts_header=True))
    assert proxy.server.settings.listen_port == running.listen_port == 0
    assert get(proxy.port, "/").header("X-Sidecar-Attempts") == "1"
    kept = next(r for r in caplog.records if r.getMessage().startswith("reload: some"))
    assert kept.kept == {"listen_port": "0 (new: 1)"}  # type: ignore[attr-defined]


def test_a_bad_configuration_keeps_everything_and_is_counted(
    proxy: Reloadable, caplog: pytest.LogCaptureFixture
) -> None:
    running = proxy.server.settings
    with caplog.at_level(logging.ERROR, logger="sidecar_proxy.server"):
        proxy.reload(ConfigError("MAX_RETRIES='many': expected an integer 0-10"))
    assert proxy.server.settings is running
    assert [r.getMessage() for r in caplog.records] == [
        "configuration error: MAX_RETRIES='many': expected an integer 0-10"
    ]
    registry = proxy.server.metrics.registry
    assert value(registry, "sidecar_config_reloads_total", result="failure") == 1
    assert value(registry, "sidecar_config_reloads_total", result="success") == 0


def test_without_a_configuration_source_a_reload_changes_nothing(
    loop: LoopThread, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(Settings(), **{**TEST_SETTINGS, "upstream_port": upstream.port})
    server = ProxyServer(settings)
    loop.run(server.start())

    async def reload() -> None:
        server.reload()

    try:
        with caplog.at_level(logging.WARNING, logger="sidecar_proxy.server"):
            loop.run(reload())
        assert server.settings is settings
        assert "no configuration source" in caplog.text
    finally:
        loop.run(server.close())
