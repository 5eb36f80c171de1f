"""App readiness hysteresis: not ready until a first success, N failures to fall, one to rise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_proxy.policy.readiness import ReadinessGate


def run(gate: ReadinessGate, results: str) -> str:
    """Feed S (success) and F (failure); returns the readiness after each, as R or N."""
    return "".join("R" if (gate.record(r == "S"), gate.ready)[1] else "N" for r in results)


def test_not_ready_until_the_first_success() -> None:
    gate = ReadinessGate(3)
    assert not gate.ready
    assert run(gate, "FFFFFS") == "NNNNNR"


def test_needs_consecutive_failures_to_fall_and_one_success_to_rise() -> None:
    gate = ReadinessGate(3)
    assert run(gate, "S" + "FFS" + "FFFF" + "S") == "R" + "RRR" + "RRNN" + "R"


def test_one_failure_is_enough_when_configured_so() -> None:
    gate = ReadinessGate(1)
    assert run(gate, "SFSF") == "RNRN"


def test_record_reports_changes_only() -> None:
    gate = ReadinessGate(2)
    assert [gate.record(ok) for ok in (False, True, True, False, False, False, True)] == [
        False,
        True,
        False,
        False,
        True,
        False,
        True,
    ]


@given(st.integers(1, 5), st.lists(st.booleans(), max_size=60))
def test_ready_is_a_function_of_the_tail(failures: int, results: list[bool]) -> None:
    gate = ReadinessGate(failures)
    for ok in results:
        gate.record(ok)
    if True not in results:
        assert not gate.ready
    else:
        last_success = len(results) - 1 - results[::-1].index(True)
        assert gate.ready == (len(results) - 1 - last_success < failures)


def test_zero_failures_is_refused() -> None:
    with pytest.raises(ValueError, match="failures"):
        ReadinessGate(0)
