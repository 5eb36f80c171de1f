"""Hold many idle keep-alive client connections open on a peer, to measure its memory per
connection: each connection has sent one request and read its response, so the peer has
allocated whatever it keeps per client connection (parser, buffers, protocol object), and the
connection is then left idle, as a real client pool would leave it between requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

from bench.procs import HOST
from sidecar_proxy.http.h2 import frames as F
from sidecar_proxy.http.h2.hpack import new_encoder

T = TypeVar("T")

# Connects at most this many at once: a burst of 1,000 SYNs can overflow a small accept backlog
# (aiohttp's is 128) and turn into 1 s SYN retransmits, which measure the backlog, not memory.
_CONCURRENCY = 100
_TIMEOUT = 10.0


async def _open_one(
    port: int, path: str, gate: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), _TIMEOUT)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: keep-alive\r\n\r\n"
            )
            writer.write(request.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _TIMEOUT)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await asyncio.wait_for(reader.readexactly(length), _TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return None
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            return None
        return reader, writer


async def _open_one_h2(
    port: int, path: str, gate: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The same over HTTP/2 with prior knowledge: one stream answered, the connection kept."""
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), _TIMEOUT)
            fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path.encode())]
            block = new_encoder().encode([(name, value, False) for name, value in fields])
            writer.write(F.PREFACE + F.settings([]) + F.frame(F.HEADERS, 5, 1, block))
            while True:  # frames until the end of stream 1
                head = await asyncio.wait_for(reader.readexactly(9), _TIMEOUT)
                hi, lo, ftype, flags, sid = F.HEAD.unpack(head)
                await asyncio.wait_for(reader.readexactly((hi << 16) | lo), _TIMEOUT)
                if ftype == F.SETTINGS and not flags & F.ACK:
                    writer.write(F.SETTINGS_ACK)
                if sid == 1 and ftype in (F.DATA, F.HEADERS) and flags & F.END_STREAM:
                    return reader, writer
                if ftype in (F.GOAWAY, F.RST_STREAM):
                    writer.close()
                    return None
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return None


async def _hold(
    port: int, path: str, count: int, measure: Callable[[int], T], h2: bool
) -> tuple[int, T]:
    gate = asyncio.Semaphore(_CONCURRENCY)
    opener = _open_one_h2 if h2 else _open_one
    opened = await asyncio.gather(*(opener(port, path, gate) for _ in range(count)))
    held = [pair for pair in opened if pair is not None]
    try:
        await asyncio.sleep(0.5)  # let the peer finish its own bookkeeping after the last reply
        # Count only connections the peer has not closed meanwhile.
        alive = sum(1 for reader, _ in held if not reader.at_eof())
        return alive, measure(alive)
    finally:
        for _, writer in held:
            writer.close()
        for _, writer in held:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def with_connections(
    port: int, path: str, count: int, measure: Callable[[int], T], h2: bool = False
) -> tuple[int, T]:
    """Open ``count`` keep-alive connections to ``port`` (HTTP/2 ones with ``h2``), call
    ``measure(number_open)`` while they are held, close them; returns the number held and what
    ``measure`` returned."""
    return asyncio.run(_hold(port, path, count, measure, h2))
