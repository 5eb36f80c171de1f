"""Go durations, byte sizes and booleans: parsing and printing.

Durations follow Go's ``time.ParseDuration`` to the letter, because the settings keep the
names and value syntax of the Go sidecar this proxy replaces: a deployment manifest written
for one must mean the same to the other. So ``30s``, ``1.5h``, ``2h45m``, ``100us``/``100µs``
parse; a bare number other than ``0`` does not (``REQUEST_TIMEOUT=30`` is ambiguous, and Go
rejects it too). A leading sign parses, as in Go; refusing negative values is the validator's
job, where the message can say which setting was negative.

The arithmetic is done in integer nanoseconds, like Go's ``Duration``, so that ``0.1s`` is
exactly 100,000,000 ns and printing a parsed value gives back Go's own spelling
(``format_duration`` is ``Duration.String``). Callers get float seconds, which is what asyncio
and the rest of the proxy use.

Sizes are whole bytes, written plain (``65536``) or with one unit (``64KiB``, ``1MB``): the
decimal units are powers of 1000 and the binary ``i`` units powers of 1024, as in Kubernetes
quantities. Fractions (``1.5MiB``) are refused rather than rounded.

Every parser raises :class:`ValueError` whose message is the *reason* only; the caller knows
which setting the text came from and builds the full message around it.
"""

from __future__ import annotations

import re

_NANOS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_NANOS = (1 << 63) - 1  # Go's Duration is an int64 count of nanoseconds
_NANOS_PER_SECOND = 1_000_000_000
DURATION_EXAMPLES = "such as 300ms, 1.5s or 2m30s (units ns, us, ms, s, m, h)"


def parse_duration(text: str) -> float:
    """Parse a Go duration string into seconds; negative values are returned, not refused."""
    return parse_duration_nanos(text) / _NANOS_PER_SECOND


def parse_duration_nanos(text: str) -> int:
    """Parse a Go duration string into integer nanoseconds, exactly as Go does."""
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"not a duration; expected a duration {DURATION_EXAMPLES}")
    total = 0
    while rest:
        number = re.match(r"([0-9]*)(?:\.([0-9]*))?", rest)
        assert number is not None  # the pattern can match the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise ValueError(f"not a duration; expected a duration {DURATION_EXAMPLES}")
        rest = rest[number.end() :]
        unit_match = re.match(r"[^0-9.]*", rest)
        assert unit_match is not None
        unit = unit_match.group(0)
        rest = rest[len(unit) :]
        if not unit:
            raise ValueError(f"missing unit; expected a duration {DURATION_EXAMPLES}")
        scale = _NANOS_PER_UNIT.get(unit)
        if scale is None:
            raise ValueError(f"unknown unit {unit!r}; expected a duration {DURATION_EXAMPLES}")
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
        if total > _MAX_NANOS:
            raise ValueError("out of range; the longest duration is about 2562047h")
    return -total if negative else total


def format_duration(seconds: float) -> str:
    """Print seconds the way Go's ``Duration.String`` does: ``1m30s``, ``100ms``, ``0s``."""
    nanos = round(seconds * _NANOS_PER_SECOND)
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos == 0:
        return "0s"
    if nanos < _NANOS_PER_SECOND:
        # Below a second Go switches to the largest unit that keeps an integer part.
        for unit, digits in (("ms", 6), ("µs", 3)):
            if nanos >= 10**digits:
                return f"{sign}{_decimal(nanos, digits)}{unit}"
        return f"{sign}{nanos}ns"
    whole_seconds, frac_nanos = divmod(nanos, _NANOS_PER_SECOND)
    minutes, secs = divmod(whole_seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = _decimal(secs * _NANOS_PER_SECOND + frac_nanos, 9) + "s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _decimal(value: int, digits: int) -> str:
    """``value / 10**digits`` without trailing zeros or a bare point (Go's ``fmtFrac``)."""
    whole, fraction = divmod(value, 10**digits)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


_BYTES_PER_UNIT = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}
SIZE_EXAMPLES = "such as 65536, 64KiB or 1MB (units B, KB, KiB, MB, MiB, GB, GiB)"


def parse_size(text: str) -> int:
    """Parse a byte size: a whole number of bytes, optionally with one unit suffix."""
    match = re.fullmatch(r"([0-9]+)([A-Za-z]*)", text)
    scale = _BYTES_PER_UNIT.get(match.group(2).lower()) if match else None
    if match is None or scale is None:
        raise ValueError(f"expected a size {SIZE_EXAMPLES}")
    return int(match.group(1)) * scale


def format_size(size: int) -> str:
    """Print a size exactly, in the largest unit that divides it (binary units first)."""
    if size == 0:
        return "0"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}
BOOL_EXAMPLES = "true/false, 1/0, yes/no or on/off"


def parse_bool(text: str) -> bool:
    """Parse the usual spellings of a boolean, case-insensitively."""
    value = _BOOLS.get(text.lower())
    if value is None:
        raise ValueError(f"expected a boolean: {BOOL_EXAMPLES}")
    return value
