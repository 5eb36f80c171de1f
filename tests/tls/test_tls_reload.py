"""Live reload of the proxy port's certificate, key and client CA, laid out the way Kubernetes
mounts a Secret: files behind a ``..data`` symlink that is swapped in one rename."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.certs import CA, Issued
from support.scrape import value, wait_until
from support.tls import client_context, exchange, refused, tls_connect
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

RELOADS = "sidecar_tls_reloads_total"
# POLL_SECONDS is 1 s; a reload is visible to new handshakes within about that.
WITHIN = 5.0


class SecretVolume:
    """A directory like a mounted Secret: tls.crt, tls.key and ca.crt through ..data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0

    def publish(self, files: dict[str, bytes]) -> None:
        """Write a new version and swap ..data to it atomically, as the kubelet does."""
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir()
        for name, data in files.items():
            (version / name).write_bytes(data)
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.rename(tmp, self.root / "..data")

    def path(self, name: str) -> str:
        return str(self.root / name)


def served(port: int, ca: CA) -> bytes:
    """The DER of the certificate a new connection is served."""
    with tls_connect(port, client_context(ca)) as sock:
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    root = tmp_path / "tls"
    root.mkdir()
    return SecretVolume(root)


def start(
    start_proxy: Callable[..., ProxyServer],
    upstream: Upstream,
    volume: SecretVolume,
    **extra: object,
) -> ProxyServer:
    return start_proxy(
        upstream.port,
        tls_cert_file=volume.path("tls.crt"),
        tls_key_file=volume.path("tls.key"),
        **extra,
    )


def pair(cert: Issued) -> dict[str, bytes]:
    return {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem}


def test_a_swapped_certificate_serves_new_handshakes_while_open_connections_keep_going(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, volume: SecretVolume
) -> None:
    ca = CA()
    first, second = ca.issue("first"), ca.issue("second")
    volume.publish(pair(first))
    proxy = start(start_proxy, upstream, volume)
    registry = proxy.metrics.registry
    kept = tls_connect(proxy.port, client_context(ca))
    with kept:
        assert exchange(kept).status == 200
        assert kept.getpeercert(binary_form=True) == first.der

        volume.publish(pair(second))
        assert wait_until(lambda: served(proxy.port, ca) == second.der, timeout=WITHIN)
        assert value(registry, RELOADS, result="success") == 1
        assert (
            value(
                registry,
                "sidecar_tls_certificate_expiry_timestamp_seconds",
                file=volume.path("tls.crt"),
            )
            == second.cert.not_valid_after_utc.timestamp()
        )

        # The keep-alive connection opened before the swap is untouched.
        assert exchange(kept).status == 200
        assert exchange(kept).status == 200


def test_a_broken_new_key_keeps_the_old_pair_and_says_why(
    start_proxy: Callable[..., ProxyServer],
    upstream: Upstream,
    volume: SecretVolume,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = CA()
    good, other = ca.issue("good"), ca.issue("other")
    volume.publish(pair(good))
    proxy = start(start_proxy, upstream, volume)
    registry = proxy.metrics.registry
    caplog.set_level(logging.ERROR, logger="sidecar_proxy.server")

    # A certificate with somebody else's key.
    volume.publish({"tls.crt": other.cert_pem, "tls.key": good.key_pem})
    assert wait_until(lambda: value(registry, RELOADS, result="failure") == 1, timeout=WITHIN)
    assert value(registry, "sidecar_tls_reload_failing") == 1
    assert served(proxy.port, ca) == good.der
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    reason = errors[0].__dict__["error"]
    assert volume.path("tls.key") in reason and "does not match" in reason

    # Still broken on the next polls: no second error for the same files.
    volume.publish({"tls.crt": other.cert_pem, "tls.key": b"-----BEGIN PRIVATE KEY-----\n"})
    assert wait_until(lambda: value(registry, RELOADS, result="failure") == 2, timeout=WITHIN)
    assert "no valid PEM private key" in caplog.records[-1].__dict__["error"]
    assert served(proxy.port, ca) == good.der

    # Fixed: the new pair is served, the failure gauge clears.
    volume.publish(pair(other))
    assert wait_until(lambda: served(proxy.port, ca) == other.der, timeout=WITHIN)
    assert value(registry, "sidecar_tls_reload_failing") == 0
    assert value(registry, RELOADS, result="failure") == 2


def test_a_rotated_client_ca_applies_to_new_handshakes(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, volume: SecretVolume
) -> None:
    server_ca, old_ca, new_ca = CA(), CA("Old client CA"), CA("New client CA")
    server = server_ca.issue("proxy")
    volume.publish({**pair(server), "ca.crt": old_ca.pem})
    proxy = start(
        start_proxy,
        upstream,
        volume,
        tls_client_ca_file=volume.path("ca.crt"),
        tls_client_auth="require",
    )
    old_client = old_ca.issue("client")
    new_client = new_ca.issue("client")
    old_ctx = client_context(server_ca, old_client, directory=volume.root)
    new_ctx = client_context(server_ca, new_client, directory=volume.root)
    assert not refused(proxy.port, old_ctx)
    assert refused(proxy.port, new_ctx)

    volume.publish({**pair(server), "ca.crt": new_ca.pem})
    assert wait_until(lambda: not refused(proxy.port, new_ctx), timeout=WITHIN)
    assert refused(proxy.port, old_ctx)
