"""The admin HTTP server: ``/metrics``, ``/health``, ``/ready`` and ``POST /quitquitquit``.

It runs :class:`http.server.ThreadingHTTPServer` in a daemon thread, one thread per connection:
a scrape renders the whole registry (milliseconds of Python for a few hundred series) and must
never run on the proxy's event loop, and a slow scrape must not hold up a probe. The stdlib
server is enough for a handful of local clients (Prometheus, the kubelet) and adds no dependency;
``wsgiref``'s server is single-threaded, so one stuck client would block the probes.

``/metrics`` negotiates the format with
:func:`prometheus_client.exposition.choose_encoder`: OpenMetrics when the scraper asks for it
(Prometheus does when exemplar storage is enabled), which is the only format that carries the
``# {trace_id="..."}`` exemplars; the Prometheus text format otherwise. Responses are not gzipped:
the scraper is in the same cluster, and the pod's CPU limit is scarcer than bandwidth.

GET and HEAD are served. The other standard methods get ``405`` with ``Allow: GET, HEAD``, and
methods the server does not recognise get ``501``, as RFC 9110 (sections 15.5.6 and 15.6.2) asks.
The default per-request stderr logging is replaced by DEBUG records on this module's logger.

``POST /quitquitquit`` (Envoy's and Istio's name) starts the same drain as SIGTERM, after which
the process exits 0: a Job's app calls it when its work is done, so a classic sidecar does not
keep the pod running for ever. It changes the pod's state, so unlike the read-only endpoints it
answers only clients whose address is in ``admin_allow`` (loopback by default: the containers
of the pod itself); others get 403. Any other method on it gets 405 with ``Allow: POST``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sidecar_proxy.lifecycle.health import CONTENT_TYPE, HealthState, health_body, ready_body

_log = logging.getLogger(__name__)

_TEXT = "text/plain; charset=utf-8"
# Prometheus keeps its connection open between scrapes; a connection idle for longer than this
# is closed so that its thread ends.
_IDLE_TIMEOUT = 120.0
# How often serve_forever checks for stop(); it bounds how long stop() takes.
_POLL_INTERVAL = 0.1
QUIT_PATH = "/quitquitquit"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed(address: str, networks: Iterable[Network]) -> bool:
    """Whether a client's address is in one of ``networks``. An IPv4 client of a dual-stack
    listener shows up as ``::ffff:a.b.c.d`` and is matched as the IPv4 address it is."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        family: int,
        registry: CollectorRegistry,
        health: HealthState,
        *,
        allow: tuple[Network, ...],
        on_quit: Callable[[], None] | None,
    ) -> None:
        self.address_family = family
        self.registry = registry
        self.health = health
        self.allow = allow
        self.on_quit = on_quit
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # The default prints a traceback to stderr; keep stderr JSON-only, and a scraper or probe
        # hanging up mid-response is routine, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            _log.debug("admin client went away", extra={"client": str(client_address)})
        else:
            _log.exception("admin request failed", extra={"client": str(client_address)})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a scraper need not reconnect every time
    # Headers and body go out as two writes; with Nagle on, the second waits for the client's
    # delayed ACK, adding ~40 ms to every response on a kept-alive connection.
    disable_nagle_algorithm = True
    server_version = "sidecar-proxy-admin"
    timeout = _IDLE_TIMEOUT
    # Used by the stdlib for its own errors (400, 501, ...): plain text instead of HTML.
    error_content_type = _TEXT
    error_message_format = "%(code)d %(message)s\n"
    # The stdlib assumes HTTP/0.9 until a request line parses, and answers garbage (a TLS
    # ClientHello, binary noise) in 0.9 form: a bare body with no status line. Nobody speaks 0.9.
    default_request_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _not_allowed(self, send_body: bool = True) -> None:
        # The request may have a body we will not read; close rather than misparse it as the
        # next request.
        methods = "POST" if self._path() == QUIT_PATH else "GET, HEAD"
        allow, close = ("Allow", methods), ("Connection", "close")
        self._reply(405, _TEXT, b"405 method not allowed\n", send_body, allow, close)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def do_POST(self) -> None:
        server = cast(_Server, self.server)
        if self._path() != QUIT_PATH:
            self._not_allowed()
            return
        close = ("Connection", "close")  # any body is left unread, as for a 405
        if server.on_quit is None:
            self._reply(404, _TEXT, b"404 not found\n", True, close)
            return
        client = self.client_address[0]
        if not allowed(client, server.allow):
            _log.warning("quit refused", extra={"client": client})
            body = b"403 forbidden: this address is not in ADMIN_ALLOW\n"
            self._reply(403, _TEXT, body, True, close)
            return
        _log.info("quit requested", extra={"client": client})
        self._reply(200, _TEXT, b"draining; the sidecar exits when done\n", True, close)
        server.on_quit()

    def _path(self) -> str:
        return self.path.partition("?")[0]

    def _serve(self, send_body: bool) -> None:
        server = cast(_Server, self.server)
        path = self._path()
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, content_type, encoder(server.registry), send_body)
        elif path == "/health":
            status, body = health_body()
            self._reply(status, CONTENT_TYPE, body, send_body)
        elif path == "/ready":
            status, body = ready_body(server.health)
            self._reply(status, CONTENT_TYPE, body, send_body)
        elif path == QUIT_PATH and server.on_quit is not None:
            self._not_allowed(send_body)
        else:
            self._reply(404, _TEXT, b"404 not found\n", send_body)

    def _reply(
        self,
        status: int,
        content_type: str,
        body: bytes,
        send_body: bool,
        *extra_header: tuple[str, str],
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra_header:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def version_string(self) -> str:
        return self.server_version  # not the stdlib's "BaseHTTP/0.6 Python/3.x.y"

    def log_message(self, format: str, *args: object) -> None:
        _log.debug(format, *args)


class AdminServer:
    """Serves the admin endpoints from a daemon thread; :meth:`start` binds, :meth:`stop` ends."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: HealthState,
        *,
        allow: Iterable[str] = (),
        on_quit: Callable[[], None] | None = None,
    ) -> None:
        """``allow`` holds the networks (CIDR text) that may quit; ``on_quit`` is called on the
        admin thread when one does, and must hand the shutdown to the event loop itself. Without
        it there is no quit endpoint."""
        self._host = host
        self._requested_port = port
        self._registry = registry
        self._health = health
        self._allow = tuple(ipaddress.ip_network(network) for network in allow)
        self._on_quit = on_quit
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); valid after start()."""
        if self._server is None:
            raise RuntimeError("admin server not started")
        return self._server.server_address[1]

    def start(self) -> None:
        """Bind (raising OSError if the port is taken) and serve in a daemon thread."""
        # getaddrinfo picks the family, so "::" or an IPv6 address works as well as "0.0.0.0".
        family = socket.getaddrinfo(
            self._host or None,
            self._requested_port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0][0]
        self._server = _Server(
            (self._host, self._requested_port),
            family,
            self._registry,
            self._health,
            allow=self._allow,
            on_quit=self._on_quit,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(_POLL_INTERVAL,),
            name="admin-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close the listening socket; connections in progress are abandoned."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None
        self._thread = None
