"""h2spec, the HTTP/2 conformance suite, against the proxy (generic, http2 and hpack sections).

Built from ../shared/third_party/h2spec by scripts/build-h2spec.sh (``make test`` runs it); the
test skips where ../shared is absent. Every case passes except those SECURITY.md explains, and
that list is checked exactly: a new failure fails the test, and so does a fixed one (then drop
it from the list and from SECURITY.md).
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from support.upstream import Upstream

from sidecar_proxy.server import ProxyServer

ROOT = Path(__file__).parents[2]

# Explained in SECURITY.md ("HTTP/2 conformance").
EXPECTED_FAILURES = {
    # bytes that are not the preface are HTTP/1.1 on this port: answered 400 and closed
    ("http2/3.5", "Sends invalid connection preface"),
    # jh2's HPACK decoder accepts these two encoder mistakes (RFC 7541 §4.2, §5.2)
    ("hpack/4.2", "Sends a dynamic table size update at the end of header block"),
    ("hpack/5.2", "Sends a Huffman-encoded string literal representation padded by zero"),
}


def h2spec_binary() -> str:
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-h2spec.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    path = built.stdout.strip().splitlines()[-1] if built.stdout.strip() else ""
    if not path:
        pytest.skip("h2spec needs ../shared (its source and build tool), which is absent here")
    return path


def test_h2spec(
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., ProxyServer],
    tmp_path: Path,
) -> None:
    binary = h2spec_binary()
    up = start_upstream()
    proxy = start_proxy(up.port)
    report = tmp_path / "h2spec.xml"
    subprocess.run(
        [binary, "-p", str(proxy.port), "-o", "2", "-j", str(report), "generic", "http2", "hpack"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    cases = list(ET.parse(report).getroot().iter("testcase"))
    failed = {
        (case.get("package", ""), case.get("classname", ""))
        for case in cases
        if case.find("failure") is not None or case.find("error") is not None
    }
    assert len(cases) > 140
    assert failed == EXPECTED_FAILURES
