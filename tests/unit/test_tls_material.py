"""TLS settings and files: every unusable one stops start-up with one line naming it."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path
from typing import Any

import pytest
from support.certs import CA, key_pem, new_key

from sidecar_proxy.config import ConfigError, Settings, load_settings
from sidecar_proxy.tls.material import (
    ALPN,
    MaterialError,
    ServerContext,
    check_files,
    server_context,
    upstream_context,
)
from sidecar_proxy.tls.reload import Reloader


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings({}, env)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = CA()
    cert, key = ca.issue("proxy", uris=("spiffe://td/proxy",)).write(tmp_path, "server")
    return {"cert": cert, "key": key, "ca": ca.write(tmp_path)}


def settings(**fields: Any) -> Settings:
    return dataclasses.replace(Settings(), **fields)


def material_error(s: Settings) -> str:
    with pytest.raises(MaterialError) as info:
        check_files(s)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_tls_settings_parse() -> None:
    s = load_settings(
        {},
        {
            "TLS_CERT_FILE": "/tls/tls.crt",
            "TLS_KEY_FILE": "/tls/tls.key",
            "TLS_MIN_VERSION": "1.3",
            "TLS_CLIENT_CA_FILE": "/tls/ca.crt",
            "TLS_CLIENT_AUTH": "REQUIRE",
            "TLS_ALLOWED_IDENTITIES": "spiffe://cluster.local/ns/shop/*, Checkout.Shop.svc",
        },
    ).settings
    assert (s.tls_min_version, s.tls_client_auth) == ("1.3", "require")
    assert s.tls_allowed_identities == {"spiffe://cluster.local/ns/shop/*", "checkout.shop.svc"}


@pytest.mark.parametrize(
    ("env", "parts"),
    [
        ({"TLS_MIN_VERSION": "1.1"}, ["TLS_MIN_VERSION='1.1'", "expected one of 1.2, 1.3"]),
        ({"TLS_CLIENT_AUTH": "yes"}, ["TLS_CLIENT_AUTH='yes'", "none, optional, require"]),
        ({"TLS_ALLOWED_IDENTITIES": "spiffe://a/*/b"}, ["bad identity 'spiffe://a/*/b'"]),
        ({"TLS_ALLOWED_IDENTITIES": "*"}, ["bad identity '*'"]),
        ({"TLS_ALLOWED_IDENTITIES": "a b"}, ["bad identity 'a b'"]),
        ({"UPSTREAM_SERVER_NAME": "https://app"}, ["UPSTREAM_SERVER_NAME", "host name"]),
        ({"TLS_CERT_FILE": "/a"}, ["TLS_CERT_FILE='/a'", "tls_key_file=''", "both or neither"]),
        ({"UPSTREAM_KEY_FILE": "/k", "UPSTREAM_TLS": "1"}, ["UPSTREAM_KEY_FILE", "both"]),
        ({"TLS_MIN_VERSION": "1.3"}, ["TLS_MIN_VERSION='1.3' has no effect", "tls_cert_file"]),
        (
            {"TLS_CERT_FILE": "/c", "TLS_KEY_FILE": "/k", "TLS_CLIENT_AUTH": "require"},
            ["TLS_CLIENT_AUTH='require' needs tls_client_ca_file"],
        ),
        (
            {"TLS_CERT_FILE": "/c", "TLS_KEY_FILE": "/k", "TLS_CLIENT_CA_FILE": "/ca"},
            ["TLS_CLIENT_CA_FILE='/ca' has no effect while tls_client_auth=none (default)"],
        ),
        (
            {"TLS_CERT_FILE": "/c", "TLS_KEY_FILE": "/k", "TLS_ALLOWED_IDENTITIES": "x"},
            ["TLS_ALLOWED_IDENTITIES='x' has no effect while tls_client_auth"],
        ),
        ({"UPSTREAM_CA_FILE": "/ca"}, ["UPSTREAM_CA_FILE='/ca' has no effect while upstream_tls"]),
    ],
)
def test_bad_tls_settings(env: dict[str, str], parts: list[str]) -> None:
    message = config_error(env)
    for part in parts:
        assert part in message


def test_defaults_given_explicitly_are_fine_without_tls() -> None:
    load_settings({}, {"TLS_MIN_VERSION": "1.2", "TLS_CLIENT_AUTH": "none"})


def test_missing_files_are_named(files: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.crt")
    assert material_error(settings(tls_cert_file=missing, tls_key_file=files["key"])) == (
        f"TLS_CERT_FILE={missing!r}: file not found"
    )
    message = material_error(settings(tls_cert_file=files["cert"], tls_key_file=str(tmp_path)))
    assert message == f"TLS_KEY_FILE={str(tmp_path)!r}: a directory, not a file"


def test_not_pem(files: dict[str, str], tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    message = material_error(settings(tls_cert_file=str(junk), tls_key_file=files["key"]))
    assert message.endswith("no valid PEM certificate in it")
    message = material_error(settings(tls_cert_file=files["cert"], tls_key_file=str(junk)))
    assert message.endswith("no valid PEM private key in it")


def test_a_key_that_does_not_match_the_certificate(files: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(key_pem(new_key()))
    message = material_error(settings(tls_cert_file=files["cert"], tls_key_file=str(other)))
    assert message == (
        f"TLS_KEY_FILE={str(other)!r}: the key does not match the first certificate of "
        f"TLS_CERT_FILE={files['cert']!r}"
    )


def test_an_encrypted_key_is_refused_with_a_hint(files: dict[str, str], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        new_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    message = material_error(settings(tls_cert_file=files["cert"], tls_key_file=str(encrypted)))
    assert "encrypted" in message


def test_server_context_policy(files: dict[str, str]) -> None:
    loaded = server_context(
        settings(
            tls_cert_file=files["cert"],
            tls_key_file=files["key"],
            tls_client_ca_file=files["ca"],
            tls_client_auth="optional",
        )
    )
    ctx = loaded.context
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode is ssl.CERT_OPTIONAL
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION):
        assert ctx.options & option
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA" in n) for n in tls12)
    assert ALPN == ("h2", "http/1.1")  # h2 preferred: the server's order decides
    assert [c.setting for c in loaded.certs] == ["tls_cert_file", "tls_client_ca_file"]
    assert loaded.certs[0].sans == ("URI:spiffe://td/proxy", "DNS:localhost")
    assert isinstance(ctx, ServerContext) and ctx.by == ("spiffe://td/proxy",)


def test_upstream_context_verifies_by_default(files: dict[str, str]) -> None:
    ctx = upstream_context(settings(upstream_tls=True, upstream_ca_file=files["ca"])).context
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1  # only the given CA, not the system's


def test_reloader_reports_changes_once(files: dict[str, str], tmp_path: Path) -> None:
    s = settings(tls_cert_file=files["cert"], tls_key_file=files["key"])
    reloader = Reloader((files["cert"], files["key"]), lambda: server_context(s))
    first = reloader.current
    assert reloader.poll().loaded is None  # nothing changed

    Path(files["key"]).write_bytes(key_pem(new_key()))
    outcome = reloader.poll()
    assert outcome.error is not None and "does not match" in outcome.error
    assert reloader.failing and reloader.current is first
    assert reloader.poll().error is None  # reported once per state of the files

    cert, key = CA().issue("new").write(tmp_path, "new")
    Path(files["cert"]).write_bytes(Path(cert).read_bytes())
    Path(files["key"]).write_bytes(Path(key).read_bytes())
    outcome = reloader.poll()
    assert outcome.loaded is not None and reloader.current is outcome.loaded
    assert not reloader.failing
