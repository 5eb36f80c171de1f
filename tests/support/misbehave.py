"""App behaviours for resilience tests: every way an app can fail a proxy, as upstream handlers.

Each behaviour is an :data:`~support.upstream.Handler`. :class:`Script` strings them together per
request (the first requests misbehave one way, the rest another). Timing rules (backoff, deadlines,
the breaker's open period) are tested on the fake clock in tests/dataplane/ instead.
"""

from __future__ import annotations

import asyncio
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


def slow(delay: float, then: Behaviour) -> Behaviour:
    """``then``, after ``delay`` seconds."""

    async def behave(req: Received, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        await then(req, w)

    return behave


OK = status(200, body=b"ok")


class Script:
    """A handler that gives the n-th request ``first[n]`` and every later one ``then``.

    ``then`` may be swapped while the proxy runs (a recovering app).
    """

    def __init__(self, *first: Behaviour, then: Behaviour = OK) -> None:
        self.first = list(first)
        self.then = then
        self.seen = 0  # complete requests that reached the app

    async def __call__(self, req: Received, w: asyncio.StreamWriter) -> None:
        n = self.seen
        self.seen += 1
        behaviour = self.first[n] if n < len(self.first) else self.then
        await behaviour(req, w)


def flaky(failures: int, failure: Behaviour | None = None) -> Script:
    """The first ``failures`` requests get ``failure`` (a 503 by default), the rest a 200."""
    bad = failure if failure is not None else status(503)
    return Script(*([bad] * failures), then=OK)


def always(behaviour: Behaviour) -> Handler:
    """Every request gets ``behaviour``."""
    return Script(then=behaviour)
