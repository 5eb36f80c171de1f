"""A small sample app to put the proxy in front of: ``sidecar-proxy demo``.

Each route shows one behaviour of the proxy from the outside: ``/`` echoes the request headers
(so the added ``X-Forwarded-*`` and ``X-Request-ID`` are visible), ``/slow`` and ``/flaky`` give
timeouts and retries something to do, ``/stream`` shows responses are streamed rather than
buffered, ``/echo`` takes request bodies in both framings, ``/status/<code>`` answers anything.

It is built on the standard library's threading HTTP server so it needs nothing installed and
behaves like a typical app: HTTP/1.1 keep-alive with a 5 s idle timeout (Node's default, which
the proxy's shorter ``upstream_idle_timeout`` is designed around). It logs nothing: the point is
to read the proxy's access log, not the app's.
"""

from __future__ import annotations

import json
import random
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_SLOW_MS = 10_000
MAX_BODY_BYTES = 10 * 1024 * 1024
STREAM_EVENTS = 5
STREAM_INTERVAL = 0.2
KEEPALIVE_TIMEOUT = 5.0


def start_demo_app(host: str, port: int) -> ThreadingHTTPServer:
    """Bind ``host:port`` (port 0 picks a free one) and serve from a daemon thread.

    Binding happens before this returns, so a busy port raises :class:`OSError` here. Stop the
    app with ``shutdown()`` then ``server_close()``.
    """
    server = _DemoServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="demo-app", daemon=True).start()
    return server


class _DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        # An IPv6 literal needs an AF_INET6 socket; host names bind IPv4, as "localhost" apps do.
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients (the proxy included) hang up mid-response; that is not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _BadBody(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sidecar-proxy-demo"
    timeout = KEEPALIVE_TIMEOUT
    # Headers and body go out in separate writes; with Nagle on, each response would wait
    # for the client's delayed ACK (~40 ms) and the demo would look slow through the proxy.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _respond(self) -> None:
        try:
            body = self._read_body()
        except _BadBody as exc:
            self.close_connection = True
            self._json(exc.status, {"error": str(exc)})
            return
        url = urlsplit(self.path)
        method = self.command
        if method in ("GET", "HEAD"):
            self._get(url.path, parse_qs(url.query))
        elif method == "POST" and url.path == "/echo":
            content_type = self.headers.get("Content-Type", "application/octet-stream")
            self._send(200, body, content_type)
        else:
            self._not_found()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _respond

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        if path == "/":
            self._json(
                200,
                {
                    "message": "hello from the demo app behind sidecar-proxy",
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                },
            )
        elif match := re.fullmatch(r"/users/([^/]+)", path):
            user = match.group(1)
            self._json(
                200, {"id": user, "name": f"User {user}", "email": f"user{user}@example.com"}
            )
        elif path == "/slow":
            text = query.get("ms", ["1000"])[0]
            if not text.isdigit():
                self._json(400, {"error": "ms must be a whole number of milliseconds"})
                return
            delay = min(int(text), MAX_SLOW_MS)
            time.sleep(delay / 1000)
            self._json(200, {"slept_ms": delay})
        elif path == "/flaky":
            if random.random() < 0.5:
                self._json(503, {"error": "flaky failure, try again"})
            else:
                self._json(200, {"message": "lucky this time"})
        elif match := re.fullmatch(r"/status/([0-9]{3})", path):
            code = int(match.group(1))
            if 200 <= code <= 599:
                self._json(code, {"status": code})
            else:
                self._json(400, {"error": "status must be 200-599"})
        elif path == "/stream":
            self._stream()
        else:
            self._not_found()

    def _stream(self) -> None:
        """Server-sent events, one chunk each, flushed as written."""
        chunked = self.request_version != "HTTP/1.0"  # 1.0 clients get a close-delimited body
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        for n in range(1, STREAM_EVENTS + 1):
            event = f"id: {n}\nevent: tick\ndata: {json.dumps({'n': n, 'of': STREAM_EVENTS})}\n\n"
            data = event.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            self.wfile.flush()
            if n < STREAM_EVENTS:
                time.sleep(STREAM_INTERVAL)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _not_found(self) -> None:
        self._json(404, {"error": "not found", "method": self.command, "path": self.path})

    def _json(self, status: int, document: dict[str, Any]) -> None:
        self._send(status, json.dumps(document).encode() + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        bodiless = status in (204, 304)
        self.send_response(status)
        if not bodiless:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not bodiless and self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        """Read the whole request body, whatever the route, so keep-alive stays in step."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.isdigit():
            raise _BadBody(400, "bad Content-Length")
        if int(length) > MAX_BODY_BYTES:
            raise _BadBody(413, "body too large")
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadBody(400, "bad chunk size") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                raise _BadBody(413, "body too large")
            body += self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF closing the chunk
