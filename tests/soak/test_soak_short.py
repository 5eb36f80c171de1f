"""A short soak in the normal suite: ``python -m bench.soak`` for 10 s, as ``make soak`` runs it
for 120 s, against the real ``sidecar-proxy`` process, with every fault kind once (resets, a 503
burst, slow answers, and an app restart last).

It runs with the circuit breaker off (``--breaker-threshold 0``). With the breaker on, it opens
within milliseconds of the restart, and whether a request with a body meets the app's refused
connection first is a race; with it off, every request of the restart window does, so the
outcome does not depend on timing.

Known defect (see docs/reliability.md, "Defects found"): a request whose body arrives while the
proxy is still connecting to the app, and which is then answered by the proxy itself (502 after
the connection is refused, or 503 from the breaker on the retry), leaves its keep-alive client
connection with reading paused for good. The next request on that connection is never read; it
is answered by nobody, and the connection and its fd stay open until CLIENT_IDLE_TIMEOUT. That
breaks three checks (one-response-each, fds-back-to-baseline, in-flight-back-to-zero), so the
all-checks test is a strict xfail until it is fixed; the rest are asserted on their own.
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
# The checks the keep-alive defect above breaks; every other check must pass regardless.
BROKEN_BY_KNOWN_DEFECT = frozenset(
    {"one-response-each", "fds-back-to-baseline", "in-flight-back-to-zero"}
)


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


def _failures(doc: dict[str, Any], skip: frozenset[str] = frozenset()) -> str:
    lines = []
    for check in doc["checks"]:
        if not check["passed"] and check["name"] not in skip:
            lines.append(f"{check['name']}: {check['summary']}")
            lines += [f"    {json.dumps(example)}" for example in check["examples"]]
    return "\n".join(lines)


def test_the_soak_ran_traffic_and_every_fault(soak: dict[str, Any]) -> None:
    assert sum(sum(c.values()) for c in soak["requests"].values()) > 500
    assert {f["kind"] for f in soak["faults"]} == {"reset", "503", "slow", "restart"}
    assert soak["app"]["restarts"] == 1


def test_no_lost_duplicate_or_altered_request_and_no_unexplained_5xx(
    soak: dict[str, Any],
) -> None:
    """Everything the known defect does not touch: no POST twice, nothing the client did not
    send, no 5xx outside a fault window, intact bodies, flat RSS and threads."""
    failures = _failures(soak, skip=BROKEN_BY_KNOWN_DEFECT)
    assert not failures, failures


@pytest.mark.xfail(
    strict=True,
    reason="defect: a local 502/503 to a request whose body arrived while connecting leaves "
    "the keep-alive client connection unread (docs/reliability.md, Defects found)",
)
def test_every_check_passes(soak: dict[str, Any]) -> None:
    failures = _failures(soak)
    assert not failures, failures
