"""Spooled replay over real sockets: a replay-safe body too large for the memory buffer is copied
to disk as it streams, so the retry after a reset still sends it whole; the copy never outlives
its request, and a disk that fails costs the retry, never the request."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support.calls import build, send
from support.misbehave import OK, Script, reset
from support.scrape import value
from support.upstream import Received, Upstream, response

from sidecar_proxy.server import ProxyServer

StartUpstream = Callable[..., Upstream]
StartProxy = Callable[..., ProxyServer]

KIB = 1024
MIB = 1024 * KIB
# Every byte value, in a pattern that does not repeat within a megabyte: a chunk sent twice,
# dropped or out of order would show in the digest.
BODY = hashlib.shake_256(b"spooled replay").digest(3 * MIB // 2)
OTHER = BODY[::-1]
DIGEST = hashlib.sha256(BODY).hexdigest()


def spool_files(directory: Path) -> list[str]:
    """Descriptors of this process open on a file in ``directory``: the spool files are
    nameless, so /proc/self/fd is where they can be seen."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, say)
        if target.startswith(str(directory) + "/"):
            found.append(target)
    return found


class ResetAfterBody:
    """The app reads the whole body and notes what it got and whether a spool file was open
    meanwhile. A body it has not seen before it resets, after reading it; one it has seen gets
    a 200 naming the body's digest."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.bodies: list[bytes] = []
        self.spooling: list[bool] = []

    async def __call__(self, req: Received, w: asyncio.StreamWriter) -> None:
        seen = req.body in self.bodies
        self.bodies.append(req.body)
        self.spooling.append(bool(spool_files(self.spool_dir)))
        if seen:
            w.write(response(200, hashlib.sha256(req.body).hexdigest().encode()))
        else:
            await reset(req, w)


def spooling_proxy(
    start_proxy: StartProxy, port: int, spool_dir: Path, **more: object
) -> ProxyServer:
    settings: dict[str, object] = {
        "retry_buffer_limit": 64 * KIB,
        "retry_spool_limit": 4 * MIB,
        "retry_spool_max_total": 16 * MIB,
        "retry_spool_dir": str(spool_dir),
        **more,
    }
    return start_proxy(port, **settings)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_put_reset_after_its_body_is_retried_whole_from_the_spool(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, chunked: bool
) -> None:
    app = ResetAfterBody(tmp_path)
    up = start_upstream(app)
    proxy = spooling_proxy(start_proxy, up.port, tmp_path)
    out = send(proxy.port, build("PUT", "/objects/1", BODY, chunked=chunked), timeout=20)

    assert out.status == 200 and out.response is not None
    assert out.response.body == DIGEST.encode()  # the retry's body, whole and in order
    assert [len(b) for b in app.bodies] == [len(BODY), len(BODY)]
    assert app.bodies[0] == app.bodies[1] == BODY
    assert app.spooling == [True, True]  # the copy existed while each attempt was sent
    ctx = proxy.ctx
    assert ctx is not None and ctx.spool is not None
    assert spool_files(tmp_path) == [] and ctx.spool.in_use == 0  # and is gone with the request
    assert list(tmp_path.iterdir()) == []  # it never had a name to leave behind
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_retry_spool_errors_total") == 0


def test_a_body_over_the_spool_limit_streams_without_a_copy(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    app = ResetAfterBody(tmp_path)
    up = start_upstream(app)
    proxy = spooling_proxy(start_proxy, up.port, tmp_path, retry_spool_limit=MIB)
    # Content-Length says at once that it cannot fit: never spooled. A chunked one is spooled
    # until it outgrows the limit, then the copy is dropped.
    for body, chunked in ((BODY, False), (OTHER, True)):
        out = send(proxy.port, build("PUT", "/big", body, chunked=chunked), timeout=20)
        assert out.status == 502, out  # reset, and not replayable: as without a spool
    assert app.spooling == [False, False] and app.bodies == [BODY, OTHER]
    ctx = proxy.ctx
    assert ctx is not None and ctx.spool is not None and ctx.spool.in_use == 0


def test_a_post_is_never_spooled(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    app = ResetAfterBody(tmp_path)
    up = start_upstream(app)
    proxy = spooling_proxy(start_proxy, up.port, tmp_path)
    assert send(proxy.port, build("POST", "/orders", BODY), timeout=20).status == 502
    assert app.spooling == [False] and len(app.bodies) == 1  # once, and only once
    keyed = build("POST", "/orders", OTHER, "Idempotency-Key: k-1\r\n")
    assert send(proxy.port, keyed, timeout=20).status == 200  # a keyed upload is replay-safe
    assert app.spooling == [False, True, True]


def test_a_failing_disk_means_no_spool_and_no_failed_request(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    up = start_upstream(Script(then=OK))  # every request answered 200
    proxy = spooling_proxy(start_proxy, up.port, spool_dir)
    shutil.rmtree(spool_dir)  # the directory goes away under the running proxy
    caplog.set_level(logging.WARNING, logger="sidecar_proxy.spool")
    for _ in range(2):
        out = send(proxy.port, build("PUT", "/objects/2", BODY), timeout=20)
        assert out.status == 200 and out.response is not None and out.response.body == b"ok"
    assert [r.body for r in up.received] == [BODY, BODY]
    registry = proxy.metrics.registry
    assert value(registry, "sidecar_retry_spool_errors_total") == 2
    warnings = [r for r in caplog.records if r.name == "sidecar_proxy.spool"]
    assert len(warnings) == 1 and getattr(warnings[0], "error", None) == "ENOENT"

    # Without a copy, a reset is not retried: the client gets what it would without a spool.
    resets = ResetAfterBody(spool_dir)
    proxy = spooling_proxy(start_proxy, start_upstream(resets).port, spool_dir)
    assert send(proxy.port, build("PUT", "/objects/3", BODY), timeout=20).status == 502
    assert resets.bodies == [BODY]
