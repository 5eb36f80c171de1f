"""The proxy port's TLS handshake.

uvloop's ``create_server(ssl=...)`` handshakes in C and says nothing about a failed handshake: it
closes the connection and logs only in debug mode, so failures could not be counted, and a client
speaking plain HTTP would see its connection drop without a word. So the listener accepts plain
TCP and a :class:`TLSAcceptor` looks at the first bytes:

* a TLS handshake record (content type 22, RFC 8446 §5.1) goes to the same SSL protocol uvloop
  uses (its Cython ``SSLProtocol``, the one ``start_tls`` builds), fed the bytes already read; the
  application protocol gets ``connection_made`` with the TLS transport once the handshake is done;
* anything that looks like an HTTP request line gets a plain ``400`` saying to use ``https://``
  (as nginx and Go's net/http answer), then the connection closes;
* the whole handshake, first byte included, must finish within ``client_header_timeout``.

Every failed handshake is counted by :func:`failure_reason`. The first read costs one Python
callback per connection; after the handshake the acceptor is out of the path entirely.

Certificates change without a restart: the listener's context is fixed, and its SNI callback
(which OpenSSL calls for every ClientHello, with or without a server name) points the handshake
at the newest context the :class:`~.reload.Reloader` holds (``SSL_set_SSL_CTX``). The new
certificate, key and client CAs apply from that handshake on; established connections keep theirs.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast

import uvloop.loop

from sidecar_proxy.config import Settings
from sidecar_proxy.tls import identity
from sidecar_proxy.tls.material import ServerContext, files, server_context
from sidecar_proxy.tls.reload import Reloader

_HANDSHAKE_RECORD = 0x16
# After close(), how long a connection waits for the client's close_notify (uvloop's default is
# 30 s): as long as a plain connection lingers after an early answer (downstream.py).
SHUTDOWN_SECONDS = 2.0

# sidecar_tls_handshake_errors_total{reason}
PLAIN_HTTP = "plain_http"  # an HTTP request on the TLS port (answered 400)
PROTOCOL_VERSION = "protocol_version"  # the client offered only versions below the minimum
NO_SHARED_CIPHER = "no_shared_cipher"  # no cipher suite, group or signature in common
CLIENT_CERTIFICATE = "client_certificate"  # missing, or not verified against the client CA
PEER_ALERT = "peer_alert"  # the client gave up with an alert, e.g. it does not trust our cert
TIMEOUT = "timeout"  # not finished within client_header_timeout
CLOSED = "closed"  # the client closed or reset the connection after its first bytes
OTHER = "other"  # anything else: garbage instead of a ClientHello, internal errors
HANDSHAKE_ERRORS = (
    PLAIN_HTTP,
    PROTOCOL_VERSION,
    NO_SHARED_CIPHER,
    CLIENT_CERTIFICATE,
    PEER_ALERT,
    TIMEOUT,
    CLOSED,
    OTHER,
)

# OpenSSL 3 reason codes (ssl.SSLError.reason) by label
_REASONS = {
    PROTOCOL_VERSION: {
        "UNSUPPORTED_PROTOCOL",
        "WRONG_SSL_VERSION",
        "VERSION_TOO_LOW",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
    },
    NO_SHARED_CIPHER: {
        "NO_SHARED_CIPHER",
        "NO_SHARED_GROUPS",
        "NO_SUITABLE_KEY_SHARE",
        "NO_SUITABLE_SIGNATURE_ALGORITHM",
        "NO_SHARED_SIGNATURE_ALGORITHMS",
    },
    CLIENT_CERTIFICATE: {
        "CERTIFICATE_VERIFY_FAILED",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "NO_CERTIFICATE_RETURNED",
    },
    PLAIN_HTTP: {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"},
}
_BY_REASON = {code: label for label, codes in _REASONS.items() for code in codes}

_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 54\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"400 Bad Request: this port speaks HTTPS; use https://\n"
)


def failure_reason(exc: BaseException | None) -> str:
    """The handshake-error label for what ended a handshake (None: a clean close)."""
    if exc is None or isinstance(exc, ConnectionResetError | BrokenPipeError | EOFError):
        return CLOSED
    if isinstance(exc, ssl.SSLError):
        code = exc.reason or ""
        if code in _BY_REASON:
            return _BY_REASON[code]
        if code.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
            return PEER_ALERT
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return CLOSED
        return OTHER
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return TIMEOUT  # uvloop aborts a handshake past its timeout with ConnectionAbortedError
    return OTHER


class ServerTLS:
    """The proxy port's TLS: the listener's context, the reloader, the client-identity policy."""

    __slots__ = ("_on_error", "_pending", "allowed", "front", "reloader", "timeout")

    def __init__(self, settings: Settings, on_error: Callable[[str], None]) -> None:
        self.reloader = Reloader(
            files(settings, "tls_cert_file", "tls_key_file", "tls_client_ca_file"),
            lambda: server_context(settings),
        )
        self.front = self.reloader.current.context
        self.front.sni_callback = self._client_hello
        self.allowed = settings.tls_allowed_identities
        self.timeout = settings.client_header_timeout
        self._on_error = on_error
        self._pending: set[TLSAcceptor] = set()

    def _client_hello(
        self, sslobj: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext
    ) -> None:
        sslobj.context = self.reloader.current.context

    def acceptor(self, app: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The listener's protocol factory around ``app``, the plain-HTTP protocol factory."""
        return lambda: TLSAcceptor(self, app())

    def peer(self, transport: asyncio.BaseTransport) -> identity.Peer:
        """Who is on a handshaken connection, and whether they may in."""
        obj: ssl.SSLObject = transport.get_extra_info("ssl_object")
        version = obj.version() or ""
        der = obj.getpeercert(binary_form=True)
        try:
            cert = identity.client_cert(der) if der else None
        except ValueError:
            # OpenSSL verified it but it cannot be read for names: let nothing in on its account.
            return identity.Peer(version, "", False, b"")
        line = b""
        if cert is not None:
            by = cast(ServerContext, obj.context).by
            line = b"X-Forwarded-Client-Cert: " + identity.xfcc(by, cert).encode() + b"\r\n"
        return identity.Peer(
            version,
            cert.identity if cert is not None else "",
            identity.allowed(self.allowed, cert),
            line,
        )

    def done(self, acceptor: TLSAcceptor, reason: str | None) -> None:
        """A handshake is over: finished (``reason`` None) or failed for ``reason``."""
        self._pending.discard(acceptor)
        if reason is not None:
            self._on_error(reason)

    def started(self, acceptor: TLSAcceptor) -> None:
        self._pending.add(acceptor)

    def close(self) -> None:
        """Abort the handshakes in progress (the end of a drain)."""
        for acceptor in list(self._pending):
            acceptor.abort()
        self._pending.clear()


class TLSAcceptor(asyncio.Protocol):
    """One accepted connection until its handshake is done (see the module docstring)."""

    __slots__ = ("_app", "_deadline", "_timer", "_tls", "_transport")

    def __init__(self, tls: ServerTLS, app: asyncio.Protocol) -> None:
        self._tls = tls
        self._app = app
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._tls.timeout
        self._timer = loop.call_at(self._deadline, self._timed_out)
        self._tls.started(self)

    def data_received(self, data: bytes) -> None:
        t = self._transport
        if t is None or self._timer is None:
            return
        self._timer.cancel()
        self._timer = None
        if data[0] != _HANDSHAKE_RECORD:
            if data[:1].isalpha():  # a method: someone sent HTTP to the TLS port
                t.write(_PLAIN_HTTP_ANSWER)
                self._give_up(PLAIN_HTTP)
            else:
                self._give_up(OTHER)
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        # uvloop's stubs omit SSLProtocol; its constructor is asyncio.sslproto.SSLProtocol's.
        proto = uvloop.loop.SSLProtocol(  # type: ignore[attr-defined]
            loop,
            self._app,
            self._tls.front,
            waiter,
            server_side=True,
            ssl_handshake_timeout=max(self._deadline - loop.time(), 0.001),
            ssl_shutdown_timeout=SHUTDOWN_SECONDS,
        )
        waiter.add_done_callback(self._handshake_done)
        t.set_protocol(proto)
        proto.connection_made(t)
        view = memoryview(data)
        while view:  # the bytes read so far go first, as if the SSL protocol had read them
            buf = proto.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        t = self._transport
        if waiter.cancelled():
            self._tls.done(self, CLOSED)
        elif (exc := waiter.exception()) is not None:
            self._tls.done(self, failure_reason(exc))
        elif t is None or t.is_closing():
            # The SSL protocol wakes the waiter without an error when the connection closes
            # mid-handshake; only a live transport means the handshake finished.
            self._tls.done(self, CLOSED)
        else:
            self._tls.done(self, None)
        self._transport = None

    def _timed_out(self) -> None:
        self._timer = None
        self._give_up(TIMEOUT)

    def _give_up(self, reason: str) -> None:
        t = self._transport
        self._transport = None
        self._tls.done(self, reason)
        if t is not None:
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        # Only before the first byte (after it the transport belongs to the SSL protocol). A
        # connection closed without a byte is no handshake: TCP health checks and port probes
        # do that all day, and counting them would bury real failures.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._transport = None
            self._tls.done(self, None)

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
