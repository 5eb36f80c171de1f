"""Client identities from verified certificates: who is let in, and what the app is told.

Pure functions over :class:`ClientCert`, the few facts of a verified client certificate the
proxy uses; :func:`client_cert` makes one from the certificate's DER bytes.

Identities are the certificate's URI SANs (SPIFFE IDs are URI SANs) and DNS SANs. The subject's
CN is not an identity: RFC 6125 §6.4.4 and SPIFFE (X.509-SVID §2) both leave it out.

``X-Forwarded-Client-Cert`` follows Envoy's format (``By``, ``Hash``, ``Subject``, ``URI``,
``DNS``, in that order, ``;`` between pairs), so apps behind Envoy and Istio read it unchanged:
``By`` is each URI SAN of the sidecar's own certificate, ``Hash`` the SHA-256 of the client
certificate's DER in lower-case hex, ``Subject`` the RFC 4514 subject, always quoted, then one
``URI=`` per URI SAN and one ``DNS=`` per DNS SAN. A value holding ``,``, ``;``, ``=`` or ``"`` is
quoted, with ``"`` and ``\\`` escaped, as Envoy's documentation asks. Control characters and
non-ASCII are percent-encoded (as UTF-8): a certificate is data, and a CR or LF from it must never
end the header line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509


@dataclass(frozen=True, slots=True)
class ClientCert:
    sha256: str  # hex of the DER
    subject: str  # RFC 4514
    uris: tuple[str, ...]
    dns: tuple[str, ...]

    @property
    def identity(self) -> str:
        """The name the access log shows: the first URI SAN, else the first DNS SAN."""
        return (self.uris or self.dns or ("",))[0]


@dataclass(frozen=True, slots=True)
class Peer:
    """What one TLS client connection tells the data path, worked out once per connection."""

    version: str  # "TLSv1.3"
    identity: str  # ClientCert.identity, "" without a client certificate
    allowed: bool  # False: every request on the connection is answered 403
    xfcc_line: bytes  # the whole header line for the app, b"" without a client certificate


def sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The URI and DNS SANs of a certificate, in certificate order."""
    from cryptography import x509  # noqa: PLC0415 - 8 MiB: loaded only where TLS is used

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    uris = tuple(ext.get_values_for_type(x509.UniformResourceIdentifier))
    return uris, tuple(ext.get_values_for_type(x509.DNSName))


def client_cert(der: bytes) -> ClientCert:
    from cryptography import x509  # noqa: PLC0415 - see sans()

    cert = x509.load_der_x509_certificate(der)
    uris, dns = sans(cert)
    return ClientCert(hashlib.sha256(der).hexdigest(), cert.subject.rfc4514_string(), uris, dns)


def allowed(patterns: frozenset[str], cert: ClientCert | None) -> bool:
    """Whether a client may in. No patterns: any client the handshake let through (with
    ``TLS_CLIENT_AUTH=optional`` that includes one without a certificate). Otherwise a
    certificate must carry a matching name: a pattern with ``://`` is matched against the URI
    SANs, others against the DNS SANs (case-insensitively); a trailing ``*`` matches any rest,
    including nothing and ``/``, so ``spiffe://cluster.local/ns/shop/*`` lets in the namespace.
    """
    if not patterns:
        return True
    if cert is None:
        return False
    return any(
        _matches(p, cert.uris if "://" in p else [d.lower() for d in cert.dns]) for p in patterns
    )


def _matches(pattern: str, names: Iterable[str]) -> bool:
    if pattern.endswith("*"):
        stem = pattern[:-1]
        return any(name.startswith(stem) for name in names)
    return pattern in names


def xfcc(by: Iterable[str], cert: ClientCert) -> str:
    """The X-Forwarded-Client-Cert value for one client certificate."""
    pairs = [f"By={_quoted(uri)}" for uri in by]
    pairs.append(f"Hash={cert.sha256}")
    pairs.append(f"Subject={_quoted(cert.subject, always=True)}")
    pairs += [f"URI={_quoted(uri)}" for uri in cert.uris]
    pairs += [f"DNS={_quoted(name)}" for name in cert.dns]
    return ";".join(pairs)


def _quoted(value: str, always: bool = False) -> str:
    if not value.isascii() or not value.isprintable():
        value = "".join(c if c.isascii() and c.isprintable() else _percent(c) for c in value)
    if always or any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _percent(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode())
