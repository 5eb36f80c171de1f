"""TLS clients for the tests: Python's ssl over a blocking socket, one request at a time."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from support.certs import CA, Issued
from support.client import Response, read_responses


@dataclass
class Pki:
    """A server certificate for 127.0.0.1/localhost and the files the proxy reads."""

    directory: Path
    ca: CA
    server: Issued
    cert_file: str
    key_file: str

    def settings(self, **extra: object) -> dict[str, object]:
        return {"tls_cert_file": self.cert_file, "tls_key_file": self.key_file, **extra}


def make_pki(directory: Path) -> Pki:
    ca = CA("Server CA")
    server = ca.issue("proxy", uris=("spiffe://cluster.local/ns/shop/sa/proxy",))
    cert_file, key_file = server.write(directory, "server")
    return Pki(directory, ca, server, cert_file, key_file)


def client_context(
    ca: CA,
    client: Issued | None = None,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    directory: Path | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``ca``, presenting ``client`` if given (its files are written
    to ``directory``, as ssl loads keys only from files)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.pem.decode())
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if client is not None:
        assert directory is not None
        cert, key = client.write(directory, f"client-{id(client)}")
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_connect(
    port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost", timeout: float = 5.0
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=server_hostname)


def exchange(sock: socket.socket, headers: str = "", path: str = "/") -> Response:
    """One keep-alive GET on an open connection."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
    responses, _ = read_responses(sock, 1)
    assert responses, "no response"
    return responses[0]


def tls_get(
    port: int, ctx: ssl.SSLContext, headers: str = "", path: str = "/"
) -> tuple[Response, ssl.SSLSocket]:
    """A GET on a new TLS connection; the response and the (still open) connection."""
    sock = tls_connect(port, ctx)
    return exchange(sock, headers, path), sock


def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether the proxy refuses this client's handshake. A TLS 1.3 client finishes its side of
    the handshake before the server has judged its certificate, so the refusal shows as an
    error, or a closed connection, on its first read rather than in ``wrap_socket``."""
    try:
        sock = tls_connect(port, ctx)
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            responses, _ = read_responses(sock, 1)
            return not responses
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
