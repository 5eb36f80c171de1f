"""The obvious Python reverse proxy, as a reference point: what a competent engineer writes in an
afternoon with aiohttp.

An ``aiohttp.web`` server on uvloop, one shared ``ClientSession`` (so upstream connections are
pooled and kept alive), and the response streamed back chunk by chunk with ``StreamResponse`` and
``iter_chunked`` rather than read whole. No access log, no metrics, no retries, no timeouts of its
own: it is the cost of "an HTTP/1.1 proxy in Python" before any sidecar features.

Run: ``python -m bench.peers.aiohttp_proxy --port 8080 --upstream 127.0.0.1:3000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Mapping

import aiohttp
import uvloop
from aiohttp import web

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus the ones aiohttp
# sets itself from what it actually sends.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_CHUNK = 64 * 1024
_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)


def _forwardable(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[_SESSION]
    url = request.app[_UPSTREAM] + request.rel_url.raw_path_qs
    body = request.content if request.body_exists else None
    async with session.request(
        request.method,
        url,
        headers=_forwardable(request.headers),
        data=body,
        allow_redirects=False,
        auto_decompress=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.update(_forwardable(upstream.headers))
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


async def serve(port: int, upstream: str) -> None:
    app = web.Application()
    app[_UPSTREAM] = f"http://{upstream}"
    # aiohttp's default pool: up to 100 connections kept alive, more than the 64 clients need.
    app[_SESSION] = aiohttp.ClientSession(auto_decompress=False)
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    try:
        await asyncio.Event().wait()
    finally:
        await app[_SESSION].close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the app")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
