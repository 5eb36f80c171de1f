"""The proxy as the in-process tests run it: on the test loop, on loopback ports the kernel picks,
with small timeouts."""

from __future__ import annotations

import dataclasses
from typing import Any

from sidecar_proxy.config import Settings
from sidecar_proxy.server import ProxyServer
from support.loop import LoopThread

# Tests run the proxy with small timeouts; anything a test needs differently it passes itself.
TEST_SETTINGS: dict[str, Any] = {
    "listen_host": "127.0.0.1",
    "listen_port": 0,
    "metrics_host": "127.0.0.1",
    "metrics_port": 0,
    "upstream_host": "127.0.0.1",
    "request_timeout": 5.0,
    "retry_backoff": 0.001,
    "retry_max_backoff": 0.01,
    "drain_delay": 0.0,
    "access_log": False,
}


def new_proxy(
    lt: LoopThread, upstream_port: int, access_log_fd: int | None = None, **overrides: Any
) -> ProxyServer:
    """A started proxy in front of ``upstream_port``, with the access log on when it is given a
    descriptor to write to; the caller closes it."""
    fields = {**TEST_SETTINGS, "upstream_port": upstream_port, **overrides}
    if access_log_fd is not None:
        fields["access_log"] = True
    settings = dataclasses.replace(Settings(), **fields)
    server = ProxyServer(settings, access_log_fd=access_log_fd or 1)
    lt.run(server.start())
    return server
