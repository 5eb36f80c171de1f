"""Go durations, byte sizes and booleans, checked against Go's own behaviour."""

from __future__ import annotations

import pytest

from sidecar_proxy.config.units import (
    format_duration,
    format_size,
    parse_bool,
    parse_duration,
    parse_duration_nanos,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("0s", 0),
        ("10ns", 10),
        ("100us", 100_000),
        ("100µs", 100_000),  # U+00B5 micro sign
        ("100μs", 100_000),  # U+03BC greek mu
        ("300ms", 300_000_000),
        ("1s", 1_000_000_000),
        ("1.5s", 1_500_000_000),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
        ("1m30s", 90_000_000_000),
        ("2h45m", 9_900_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("1h1m1s1ms1us1ns", 3_661_001_001_001),
        ("+5s", 5_000_000_000),
        ("-5s", -5_000_000_000),
        ("0.1s", 100_000_000),
        ("1.0000000001s", 1_000_000_000),  # below a nanosecond truncates, as in Go
        ("2562047h", 2562047 * 3_600_000_000_000),
    ],
)
def test_valid_durations(text: str, nanos: int) -> None:
    assert parse_duration_nanos(text) == nanos
    assert parse_duration(text) == nanos / 1e9


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a duration"),
        ("-", "not a duration"),
        ("ms", "not a duration"),
        (".s", "not a duration"),
        ("5", "missing unit"),
        ("30", "missing unit"),
        ("1.5.5s", "missing unit"),
        ("3x", "unknown unit 'x'"),
        ("5S", "unknown unit 'S'"),
        ("5 s", "unknown unit ' s'"),
        (" 5s", "not a duration"),
        ("1e3s", "unknown unit 'e'"),
        ("5sec", "unknown unit 'sec'"),
        ("3000000h", "out of range"),
    ],
)
def test_invalid_durations(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="^" + reason) as info:
        parse_duration(text)
    assert "expected a duration" in str(info.value) or reason == "out of range"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (30, "30s"),
        (0.1, "100ms"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (120, "2m0s"),
        (9900, "2h45m0s"),
        (0.0000015, "1.5µs"),
        (0.00000001, "10ns"),
        (-5, "-5s"),
        (3661.001, "1h1m1.001s"),
    ],
)
def test_format_duration_is_go_duration_string(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("65536", 65536),
        ("10B", 10),
        ("1KB", 1000),
        ("64KiB", 65536),
        ("64kib", 65536),
        ("2MB", 2_000_000),
        ("1MiB", 1_048_576),
        ("1mib", 1_048_576),
        ("3GB", 3_000_000_000),
        ("1GiB", 1_073_741_824),
    ],
)
def test_valid_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "KiB", "1.5MiB", "-1", "64 KiB", "10TB", "1Kb2", "+5", "1_000"]
)
def test_invalid_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (65536, "64KiB"),
        (8192, "8KiB"),
        (1_048_576, "1MiB"),
        (1000, "1KB"),
        (1500, "1500B"),
    ],
)
def test_format_size_round_trips(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("On", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_valid_bools(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "t", " true", "enabled"])
def test_invalid_bools(text: str) -> None:
    with pytest.raises(ValueError, match="expected a boolean: true/false, 1/0, yes/no or on/off"):
        parse_bool(text)
