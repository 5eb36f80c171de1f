"""App behaviours for resilience tests: every way an app can fail a proxy, as upstream handlers.

Each behaviour is an :data:`~support.upstream.Handler`. :class:`Script` strings them together per
request (the first requests misbehave one way, the rest another) and stamps the moment each
request reached the app, so tests can measure the gaps between attempts where they matter: at
the app.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence

from support.upstream import Handler, Received, response

Behaviour = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


def status(code: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Behaviour:
    """A complete response with ``code``; the body names the status unless one is given."""
    payload = body or f"app says {code}".encode()

    async def answer(req: Received, w: asyncio.StreamWriter) -> None:
        w.write(response(code, payload, list(headers), reason="App"))

    return answer


async def hang(req: Received, w: asyncio.StreamWriter) -> None:
    """Read the request and never answer; the connection stays open until the proxy gives up."""


async def reset(req: Received, w: asyncio.StreamWriter) -> None:
    """Read the request, then abort the connection before any byte of a response."""
    w.transport.abort()


async def reset_mid_body(req: Received, w: asyncio.StreamWriter) -> None:
    """Send a head promising 1000 bytes and 10 of them, then abort the connection."""
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"0123456789")
    await w.drain()
    # Let the proxy read the head and the 10 bytes before the reset: an abort with unread
    # data in flight could make the kernel drop them, and then this would be a reset before
    # headers instead.
    await asyncio.sleep(0.05)
    w.transport.abort()


def slow(delay: float, then: Behaviour) -> Behaviour:
    """``then``, after ``delay`` seconds."""

    async def behave(req: Received, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        await then(req, w)

    return behave


OK = status(200, body=b"ok")


class Script:
    """A handler that gives the n-th request ``first[n]`` and every later one ``then``.

    ``then`` may be swapped while the proxy runs (a recovering app). ``arrivals`` holds the
    ``time.monotonic()`` at which each complete request reached the app, in order; monotonic time
    is the same clock in every thread of the process, so the test thread can compare it with its
    own readings.
    """

    def __init__(self, *first: Behaviour, then: Behaviour = OK) -> None:
        self.first = list(first)
        self.then = then
        self.arrivals: list[float] = []

    async def __call__(self, req: Received, w: asyncio.StreamWriter) -> None:
        n = len(self.arrivals)
        self.arrivals.append(time.monotonic())
        behaviour = self.first[n] if n < len(self.first) else self.then
        await behaviour(req, w)

    def gaps(self) -> list[float]:
        """Seconds between consecutive arrivals."""
        a = self.arrivals
        return [b - x for x, b in itertools.pairwise(a)]


def flaky(failures: int, failure: Behaviour | None = None) -> Script:
    """The first ``failures`` requests get ``failure`` (a 503 by default), the rest a 200."""
    bad = failure if failure is not None else status(503)
    return Script(*([bad] * failures), then=OK)


def always(behaviour: Behaviour) -> Handler:
    """Every request gets ``behaviour``."""
    return Script(then=behaviour)
