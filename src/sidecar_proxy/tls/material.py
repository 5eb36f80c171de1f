"""The PEM files named by the settings, read into ``ssl.SSLContext`` objects.

Every file is read and parsed here first (with ``cryptography``), so a problem is reported as one
line naming the setting, the file and what is wrong with it: missing, unreadable, not PEM, a key
that does not belong to the certificate. OpenSSL's own errors name neither the file nor, often,
the problem ("[SSL] PEM lib"). Python's ``ssl`` module can load a certificate but not describe
one, which is why ``cryptography`` is a runtime dependency: the expiry metric, ``check-config``
and the client identities need the certificates' subjects, SANs and dates.

The proxy port's policy (RFC 9325, Mozilla's "intermediate" profile):

* TLS 1.2 or 1.3 (``TLS_MIN_VERSION``); never SSLv3, 1.0 or 1.1 (RFC 8996);
* for TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305): forward
  secrecy, no CBC padding oracles; TLS 1.3 suites are all AEAD and stay OpenSSL's defaults;
* the server's cipher order, no compression (CRIME), no renegotiation (a client could otherwise
  make the server redo expensive handshakes on one connection);
* ALPN ``h2`` and ``http/1.1`` (:data:`ALPN`).
"""

from __future__ import annotations

import errno
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sidecar_proxy.config import FIELDS, Settings
from sidecar_proxy.tls.identity import sans

if TYPE_CHECKING:
    from cryptography import x509

# What the proxy port offers in ALPN, preferred first: h2 (the HTTP/1.1 leg hands a connection
# to the HTTP/2 leg at its preface, RFC 9113 §3.2), then http/1.1. TLS12_CIPHERS and the options
# below already meet RFC 9113 §9.2 for h2 over TLS 1.2 (ECDHE, AEAD, no compression, no
# renegotiation).
ALPN = ("h2", "http/1.1")
# What the proxy offers the app over TLS: HTTP/1.1 only (its HTTP/2 app leg is cleartext, h2c).
UPSTREAM_ALPN = ("http/1.1",)
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_ENV = {field.name: field.env for field in FIELDS}


class MaterialError(Exception):
    """A TLS file is unusable; the message is one line naming the setting and the file."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """One certificate as ``check-config`` and the expiry metric show it."""

    setting: str  # the setting that names the file: tls_cert_file, tls_client_ca_file, ...
    path: str
    subject: str
    sans: tuple[str, ...]  # "URI:spiffe://...", "DNS:..."
    not_after: datetime  # aware, UTC


class ServerContext(ssl.SSLContext):
    """The proxy port's context, with what the handshake's peer description needs from it."""

    def __init__(self, protocol: int, by: tuple[str, ...]) -> None:
        # ssl.SSLContext.__new__ has used ``protocol``; its __init__ is object's.
        super().__init__()
        self.by = by  # URI SANs of the served certificate: XFCC's By=


@dataclass(frozen=True, slots=True)
class Loaded:
    """A context and the certificates it was built from."""

    context: ssl.SSLContext
    certs: tuple[CertInfo, ...]


def server_context(settings: Settings) -> Loaded:
    """The proxy port's context from tls_cert_file, tls_key_file and tls_client_ca_file."""
    chain = _cert_and_key(settings, "tls_cert_file", "tls_key_file")
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER, by=sans(chain[0])[0])
    ctx.minimum_version = _VERSIONS[settings.tls_min_version]
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(ALPN))
    _load_chain(ctx, settings, "tls_cert_file", "tls_key_file")
    certs = [_info("tls_cert_file", settings.tls_cert_file, chain[0])]
    if settings.tls_client_auth != "none":
        cas = _load_cas(ctx, settings, "tls_client_ca_file")
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if settings.tls_client_auth == "require" else ssl.CERT_OPTIONAL
        )
        certs += cas
    return Loaded(ctx, tuple(certs))


def upstream_context(settings: Settings) -> Loaded:
    """The context for connections to the app (``UPSTREAM_TLS``): the app's certificate must
    chain to upstream_ca_file (or the system's CAs) and name upstream_server_name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(UPSTREAM_ALPN))
    certs: list[CertInfo] = []
    if settings.upstream_ca_file:
        certs += _load_cas(ctx, settings, "upstream_ca_file")
    else:
        ctx.load_default_certs()
    if settings.upstream_cert_file:
        chain = _cert_and_key(settings, "upstream_cert_file", "upstream_key_file")
        _load_chain(ctx, settings, "upstream_cert_file", "upstream_key_file")
        certs.append(_info("upstream_cert_file", settings.upstream_cert_file, chain[0]))
    return Loaded(ctx, tuple(certs))


def check_files(settings: Settings) -> tuple[CertInfo, ...]:
    """Build every context the settings ask for; the certificates, or :class:`MaterialError`."""
    certs: list[CertInfo] = []
    if settings.tls_cert_file:
        certs += server_context(settings).certs
    if settings.upstream_tls:
        certs += upstream_context(settings).certs
    return tuple(certs)


def files(settings: Settings, *names: str) -> tuple[str, ...]:
    """The paths the named settings hold, those that are set."""
    return tuple(path for path in (getattr(settings, name) for name in names) if path)


def _where(setting: str, path: str) -> str:
    return f"{_ENV[setting]}={path!r}"


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MaterialError(f"{_where(setting, path)}: file not found") from None
    except IsADirectoryError:
        raise MaterialError(f"{_where(setting, path)}: a directory, not a file") from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise MaterialError(f"{_where(setting, path)}: cannot read the file: {reason}") from None


def _certificates(setting: str, path: str) -> list[x509.Certificate]:
    # cryptography costs 8 MiB of memory: imported where TLS is used, not by every sidecar
    from cryptography import x509  # noqa: PLC0415

    data = _read(setting, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise MaterialError(f"{_where(setting, path)}: no valid PEM certificate in it") from None
    return certs


def _cert_and_key(
    settings: Settings, cert_setting: str, key_setting: str
) -> list[x509.Certificate]:
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - as above
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    cert_path, key_path = getattr(settings, cert_setting), getattr(settings, key_setting)
    chain = _certificates(cert_setting, cert_path)
    data = _read(key_setting, key_path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise MaterialError(
            f"{_where(key_setting, key_path)}: the key is encrypted; give it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise MaterialError(
            f"{_where(key_setting, key_path)}: no valid PEM private key in it"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != chain[0].public_key().public_bytes(
        der, public
    ):
        raise MaterialError(
            f"{_where(key_setting, key_path)}: the key does not match the first certificate of "
            f"{_where(cert_setting, cert_path)}"
        )
    return chain


def _load_chain(ctx: ssl.SSLContext, settings: Settings, cert: str, key: str) -> None:
    # Both files were just parsed; OpenSSL reads them again by path (the ssl module has no
    # in-memory API for a key). A file replaced in between fails here, or is caught by the
    # reloader, which compares the files before and after.
    cert_path, key_path = getattr(settings, cert), getattr(settings, key)
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise MaterialError(f"{_where(cert, cert_path)}: OpenSSL refused it: {exc}") from None


def _load_cas(ctx: ssl.SSLContext, settings: Settings, setting: str) -> list[CertInfo]:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - as above

    path = getattr(settings, setting)
    cas = _certificates(setting, path)
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in cas)
    ctx.load_verify_locations(cadata=pem)  # the bytes parsed above: no second read, no race
    return [_info(setting, path, ca) for ca in cas]


def _info(setting: str, path: str, cert: x509.Certificate) -> CertInfo:
    uris, dns = sans(cert)
    return CertInfo(
        setting,
        path,
        cert.subject.rfc4514_string(),
        tuple(f"URI:{u}" for u in uris) + tuple(f"DNS:{d}" for d in dns),
        cert.not_valid_after_utc,
    )
