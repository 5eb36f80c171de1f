"""A real TLS scanner (sslyze) against the proxy port: what SECURITY.md records as its findings.

The scan is held to Mozilla's "intermediate" profile. Two deviations are expected and recorded
in SECURITY.md: the test CA is in no public trust store (certificate_path_validation), and
OpenSSL's default groups include X448 and P-521 (tls_curves), which Python 3.11's ssl module
cannot remove without also removing X25519. Anything else fails this test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.tls import Pki
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

SSLYZE = Path(sys.executable).with_name("sslyze")
EXPECTED_DEVIATIONS = {"certificate_path_validation", "tls_curves"}
# sslyze's default scan plus 0-RTT and session resumption
COMMANDS = [
    "--certinfo",
    *("--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3"),
    *("--compression", "--heartbleed", "--openssl_ccs", "--robot", "--reneg", "--fallback"),
    *("--elliptic_curves", "--ems", "--early_data", "--resum"),
]


def scan(port: int, ca_file: str, out: Path) -> tuple[dict[str, Any], set[str]]:
    """The scan's results by scan command, and the names of the failed compliance checks."""
    result = subprocess.run(
        [
            str(SSLYZE),
            "--mozilla_config",
            "intermediate",
            *COMMANDS,
            "--certinfo_ca_file",
            ca_file,
            "--json_out",
            str(out),
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.exists(), result.stdout + result.stderr
    (server,) = json.loads(out.read_text())["server_scan_results"]
    assert server["scan_status"] == "COMPLETED", server
    compliance = result.stdout.split("COMPLIANCE AGAINST TLS CONFIGURATION", 1)[1]
    failed = set(re.findall(r"^\s+\* (\w+):", compliance, re.M))
    return server["scan_result"], failed


def accepted(results: dict[str, Any], command: str) -> list[str]:
    entry = results[command]
    assert entry["status"] == "COMPLETED", entry
    return [c["cipher_suite"]["openssl_name"] for c in entry["result"]["accepted_cipher_suites"]]


@pytest.mark.skipif(
    not SSLYZE.exists(),
    reason="sslyze is a dev tool: the compiled run's venv has it, the pure-Python venv (the "
    "test extra only) does not; the scan is of the TLS settings, the same in both builds",
)
def test_sslyze_finds_nothing_above_low(
    start_proxy: Callable[..., ProxyServer], upstream: Upstream, pki: Pki, tmp_path: Path
) -> None:
    proxy = start_proxy(upstream.port, **pki.settings())
    results, failed = scan(proxy.port, pki.ca.write(tmp_path), tmp_path / "scan.json")

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert accepted(results, f"{old}_cipher_suites") == [], old
    tls12 = accepted(results, "tls_1_2_cipher_suites")
    assert tls12 and all(
        name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name) for name in tls12
    ), tls12
    assert accepted(results, "tls_1_3_cipher_suites")

    def result(command: str) -> dict[str, Any]:
        entry = results[command]
        assert entry["status"] == "COMPLETED", entry
        found: dict[str, Any] = entry["result"]
        return found

    assert result("tls_compression")["supports_compression"] is False
    assert result("heartbleed")["is_vulnerable_to_heartbleed"] is False
    assert result("openssl_ccs_injection")["is_vulnerable_to_ccs_injection"] is False
    assert result("robot")["robot_result"].startswith("NOT_VULNERABLE")
    reneg = result("session_renegotiation")
    assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False
    assert reneg["supports_secure_renegotiation"] is True
    assert result("tls_fallback_scsv")["supports_fallback_scsv"] is True
    assert result("tls_extended_master_secret")["supports_ems_extension"] is True
    assert result("tls_1_3_early_data")["supports_early_data"] is False  # no 0-RTT replays
    curves = {c["name"] for c in result("elliptic_curves")["supported_curves"]}
    assert curves <= {"X25519", "X448", "secp256r1", "secp384r1", "secp521r1"}, curves

    assert failed <= EXPECTED_DEVIATIONS, failed
