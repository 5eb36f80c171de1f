"""A short soak in the normal suite: ``python -m bench.soak`` for 10 s, as ``make soak`` runs it
for 120 s, against the real ``sidecar-proxy`` process, with every fault kind once (resets, a 503
burst, slow answers, and an app restart last), asserting that every check passes.

It runs with the circuit breaker off (``--breaker-threshold 0``). With the breaker on, it opens
within milliseconds of the restart, and which requests meet the app's refused connection first is
a race; with it off, every request of the restart window does, so the connect-failure path is
exercised on every run rather than on most. That path is where the soak found its first defect (a
keep-alive client connection left unread after the proxy's own 502 to a request whose body arrived
while it was connecting; docs/reliability.md), which this test failed on every time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DURATION = "10"


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("soak")
    argv = [sys.executable, "-m", "bench.soak", "--duration", DURATION]
    argv += ["--breaker-threshold", "0", "--results-dir", str(out)]
    # On timeout the soak is killed outright; it starts the proxy with a parent-death signal, so
    # the proxy goes with it.
    proc = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=55)
    assert proc.returncode in (0, 1), f"the soak could not run:\n{proc.stderr[-3000:]}"
    doc: dict[str, Any] = json.loads((out / "soak-latest.json").read_text())
    assert proc.returncode == (0 if doc["passed"] else 1), "exit code disagrees with the checks"
    return doc


def test_the_soak_ran_traffic_and_every_fault(soak: dict[str, Any]) -> None:
    assert sum(sum(c.values()) for c in soak["requests"].values()) > 500
    assert {f["kind"] for f in soak["faults"]} == {"reset", "503", "slow", "restart"}
    assert soak["app"]["restarts"] == 1


def test_every_check_passes(soak: dict[str, Any]) -> None:
    """Nothing lost, no POST twice, nothing the client did not send, no 5xx outside a fault
    window, intact bodies, and RSS, threads, fds and the gauges back where they belong."""
    lines = []
    for check in soak["checks"]:
        if not check["passed"]:
            lines.append(f"{check['name']}: {check['summary']}")
            lines += [f"    {json.dumps(example)}" for example in check["examples"]]
    assert not lines, "\n".join(lines)
