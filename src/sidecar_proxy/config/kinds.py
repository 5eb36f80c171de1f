"""Value kinds: how one setting's text (or config-file value) becomes a typed value and back.

A kind bundles everything that differs between settings of different types, so the loader,
the flag generator and ``check-config`` each have one code path for all settings:

* ``parse(text)`` reads what a user typed in an env var, a flag or a string in a file;
* ``coerce(value)`` reads a native YAML/TOML value (a string goes through ``parse``);
* ``format(value)`` prints it back in the same syntax ``parse`` accepts (Go durations, exact
  sizes), so ``check-config`` output can be pasted into a manifest;
* ``to_json(value)`` gives a plain JSON value for ``check-config --json``;
* ``expected`` is the allowed-values phrase that error messages end with.

Native file values: ports, integers, floats and booleans may be written as the file format's
own numbers and booleans. A number for a size means bytes, as a plain integer string does.
A number for a duration is refused (except ``0``): ``retry_backoff: 100`` could mean
milliseconds or seconds, and Go gives bare numbers no unit either, so durations are strings
with a unit in every source. Lists may be a comma-separated string or a file list.

Each parse failure raises :class:`ValueError` with the reason only; the loader adds where the
value came from. Range checks live in the kind too, so a number that parses but is out of
range gets the same "expected ..." text as one that does not parse at all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Generic, TypeVar

from sidecar_proxy.config.units import (
    BOOL_EXAMPLES,
    DURATION_EXAMPLES,
    SIZE_EXAMPLES,
    format_duration,
    format_size,
    parse_bool,
    parse_duration_nanos,
    parse_size,
)
from sidecar_proxy.hooks.load import is_file
from sidecar_proxy.observe.record import GRPC_STATUS_NAMES

T = TypeVar("T")
JSONValue = str | int | float | bool | list[str] | list[int]


class Kind(Generic[T]):
    """Base kind: strings parse through :meth:`parse`, other native values are refused."""

    metavar: str  # placeholder in --help, e.g. DURATION
    expected: str  # the allowed values, as a phrase: "expected a port number 1-65535"

    def parse(self, text: str) -> T:
        raise NotImplementedError

    def coerce(self, value: object) -> T:
        if isinstance(value, str):
            return self.parse(value)
        return self.coerce_native(value)

    def coerce_native(self, value: object) -> T:
        raise ValueError(self.expected)

    def format(self, value: T) -> str:
        return str(value)

    def to_json(self, value: T) -> JSONValue:
        return self.format(value)


class HostKind(Kind[str]):
    """A host name or IP address, without scheme, port or path.

    ``UPSTREAM_HOST=http://app`` or ``localhost:3000`` are common slips; they would otherwise
    surface only later as a baffling DNS failure, so anything with a colon must be an IPv6
    address (brackets optional, stored without them).
    """

    metavar = "HOST"
    expected = "expected a host name or IP address (no scheme, port or path)"

    def parse(self, text: str) -> str:
        host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        if not host or re.search(r"[\s/\[\]@]", host):
            raise ValueError(self.expected)
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(self.expected) from None
        return host


# How "not set" is written for an optional value: nothing, or the empty quotes that format()
# prints so check-config output can be pasted into a shell or a manifest.
_UNSET = ("", "''", '""')


class ServerNameKind(HostKind):
    """A host name or IP address to expect in a peer's certificate; empty means "not set"."""

    metavar = "NAME"

    def parse(self, text: str) -> str:
        return "" if text in _UNSET else super().parse(text)

    def format(self, value: str) -> str:
        return value or "''"


def _integer(text: str) -> int | None:
    """Strict decimal integer: no ``+``, spaces or ``_`` (Python's ``int()`` takes all three)."""
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else None


class IntKind(Kind[int]):
    """An integer within ``[low, high]``; ``high=None`` means unbounded."""

    metavar = "INT"

    def __init__(self, low: int, high: int | None = None, noun: str = "an integer") -> None:
        self.low, self.high = low, high
        bounds = f"{low}-{high}" if high is not None else f">= {low}"
        self.expected = f"expected {noun} {bounds}"

    def parse(self, text: str) -> int:
        return self._check(_integer(text))

    def coerce_native(self, value: object) -> int:
        # bool is an int subclass; `true` for a port is a mistake, not 1.
        return self._check(
            value if isinstance(value, int) and not isinstance(value, bool) else None
        )

    def _check(self, value: int | None) -> int:
        if value is None or value < self.low or (self.high is not None and value > self.high):
            raise ValueError(self.expected)
        return value

    def to_json(self, value: int) -> int:
        return value


class PortKind(IntKind):
    """A TCP port a user means to use: 0 ("any free port") only makes sense in tests."""

    metavar = "PORT"

    def __init__(self) -> None:
        super().__init__(1, 65535, noun="a port number")


class WorkersKind(Kind[int]):
    """A number of worker processes, or ``auto`` (stored as :data:`AUTO`): the CPU limit's,
    worked out by :func:`sidecar_proxy.config.cpus.worker_count` when the proxy starts."""

    metavar = "{INT,auto}"
    AUTO = 0

    def __init__(self, high: int) -> None:
        self._count = IntKind(1, high)
        self.expected = f"expected auto or an integer 1-{high}"

    def parse(self, text: str) -> int:
        if text.lower() == "auto":
            return self.AUTO
        return self._number(self._count.parse, text)

    def coerce_native(self, value: object) -> int:
        return self._number(self._count.coerce_native, value)

    def _number(self, parse: Callable[[T], int], value: T) -> int:
        try:
            return parse(value)
        except ValueError:
            raise ValueError(self.expected) from None

    def format(self, value: int) -> str:
        return "auto" if value == self.AUTO else str(value)

    def to_json(self, value: int) -> JSONValue:
        return self.format(value) if value == self.AUTO else value


class FloatKind(Kind[float]):
    """A number within ``[low, high]``; ``low_open``/``high_open`` leave that end out, for
    ranges such as a rate that must be above 0 or a percentage that must stay below 100."""

    metavar = "NUMBER"

    def __init__(
        self, low: float, high: float, *, low_open: bool = False, high_open: bool = False
    ) -> None:
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        if low_open or high_open:
            self.expected = (
                f"expected a number {'>' if low_open else '>='} {self.format(low)} "
                f"and {'<' if high_open else '<='} {self.format(high)}"
            )
        else:
            self.expected = f"expected a number {self.format(low)}-{self.format(high)}"

    def parse(self, text: str) -> float:
        if not re.fullmatch(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)", text):
            raise ValueError(self.expected)
        return self._check(float(text))

    def coerce_native(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(self.expected)
        return self._check(float(value))

    def _check(self, value: float) -> float:
        # Each comparison is false for NaN, so NaN is refused whichever ends are open.
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if not (above and below):
            raise ValueError(self.expected)
        return value

    def format(self, value: float) -> str:
        # Plain decimal, as parse() takes it: "0" and "50" rather than "0.0" and "50.0", and
        # never an exponent ("1e-05"), which parse() would refuse.
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text

    def to_json(self, value: float) -> float:
        return value


class DurationKind(Kind[float]):
    """A Go duration in seconds; ``allow_zero`` says whether ``0`` ("off") is meaningful."""

    metavar = "DURATION"

    def __init__(self, allow_zero: bool) -> None:
        self.allow_zero = allow_zero
        self.expected = f"expected a duration {'>=' if allow_zero else '>'} 0 {DURATION_EXAMPLES}"

    def parse(self, text: str) -> float:
        nanos = parse_duration_nanos(text)
        if nanos < 0:
            raise ValueError("must not be negative")
        if nanos == 0 and not self.allow_zero:
            raise ValueError("must be greater than 0")
        return nanos / 1_000_000_000

    def coerce_native(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(self.expected)
        if value == 0:
            return self.parse("0")
        raise ValueError(f"a bare number has no unit; {self.expected}")

    def format(self, value: float) -> str:
        return format_duration(value)

    def to_json(self, value: float) -> float:
        return value


class SizeKind(Kind[int]):
    """A byte count; ``high=None`` means unbounded."""

    metavar = "SIZE"

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high
        self.expected = (
            f"expected a size {format_size(low)}-{format_size(high)} "
            "(bytes, or with a unit B, KB, KiB, MB, MiB, GB, GiB)"
            if high is not None
            else f"expected a size {SIZE_EXAMPLES}"
        )

    def parse(self, text: str) -> int:
        try:
            size = parse_size(text)
        except ValueError:
            raise ValueError(self.expected) from None
        return self._check(size)

    def coerce_native(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(self.expected)
        return self._check(value)

    def _check(self, size: int) -> int:
        if size < self.low or (self.high is not None and size > self.high):
            raise ValueError(self.expected)
        return size

    def format(self, value: int) -> str:
        return format_size(value)

    def to_json(self, value: int) -> int:
        return value


class BoolKind(Kind[bool]):
    metavar = "BOOL"
    expected = f"expected a boolean: {BOOL_EXAMPLES}"

    def parse(self, text: str) -> bool:
        return parse_bool(text)

    def coerce_native(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        raise ValueError(self.expected)

    def format(self, value: bool) -> str:
        return "true" if value else "false"

    def to_json(self, value: bool) -> bool:
        return value


class EnumKind(Kind[str]):
    """One of a fixed set of words, case-insensitive, stored lower-case."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.metavar = "{" + ",".join(choices) + "}"
        self.expected = "expected one of " + ", ".join(choices)

    def parse(self, text: str) -> str:
        if text.lower() not in self.choices:
            raise ValueError(self.expected)
        return text.lower()


class AppCheckKind(Kind[str]):
    """How the app's readiness is checked: ``none``, ``tcp`` or ``http:/path``.

    The path goes into a request line as it is, so it must be an origin-form target (RFC 9112
    §3.2.1): a ``/`` followed by visible ASCII, no fragment.
    """

    metavar = "CHECK"
    expected = "expected none, tcp or http:/path (e.g. http:/healthz)"

    def parse(self, text: str) -> str:
        word = text.lower()
        if word in ("none", "tcp"):
            return word
        if word.startswith("http:"):
            path = text[len("http:") :]
            if re.fullmatch(r"/[\x21-\x7e]*", path) and "#" not in path:
                return "http:" + path
        raise ValueError(self.expected)


class _ListKind(Kind[frozenset[T]]):
    """A set of tokens: a comma-separated string, or a list in a config file.

    An empty list is allowed and means "none" (e.g. ``--retry-on=''`` retries nothing); an
    empty *env var* never gets here, because the loader treats it as unset.
    """

    metavar = "LIST"

    def parse(self, text: str) -> frozenset[T]:
        return self._tokens(part.strip() for part in text.split(",") if part.strip())

    def coerce_native(self, value: object) -> frozenset[T]:
        if not isinstance(value, list) or not all(
            isinstance(item, str | int) and not isinstance(item, bool) for item in value
        ):
            raise ValueError(self.expected)
        return self._tokens(str(item).strip() for item in value)

    def _tokens(self, tokens: Iterable[str]) -> frozenset[T]:
        items: set[T] = set()
        for token in tokens:
            items.update(self.token(token))
        return frozenset(items)

    def token(self, token: str) -> Iterable[T]:
        raise NotImplementedError


class CidrListKind(_ListKind[str]):
    """IP networks, each an address (a host) or a CIDR block with no host bits set.

    Kept as their canonical text (``127.0.0.0/8``, ``::1/128``); a host prints back as the bare
    address, so the default round-trips.
    """

    expected = "expected a comma-separated list of IP addresses or CIDR blocks (10.0.0.0/8, ::1)"

    def token(self, token: str) -> Iterable[str]:
        try:
            return (str(ipaddress.ip_network(token)),)
        except ValueError as exc:
            raise ValueError(f"{exc}; {self.expected}") from None

    def format(self, value: frozenset[str]) -> str:
        return ",".join(self._ordered(value)) if value else "''"

    def to_json(self, value: frozenset[str]) -> list[str]:
        return self._ordered(value)

    @staticmethod
    def _ordered(value: frozenset[str]) -> list[str]:
        networks = sorted(
            (ipaddress.ip_network(text) for text in value), key=lambda n: (n.version, n)
        )
        return [
            str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in networks
        ]


class FileKind(Kind[str]):
    """A file path; empty means "not set". Only the text is checked here: whether the file
    exists and holds what it should is for whoever reads it (the TLS files are checked by
    :func:`sidecar_proxy.tls.material.check_files`, with the same one-line errors)."""

    metavar = "FILE"
    expected = "expected a file path without control characters"

    def parse(self, text: str) -> str:
        if text in _UNSET:
            return ""
        if any(ord(c) < 0x20 for c in text):
            raise ValueError(self.expected)
        return text

    def format(self, value: str) -> str:
        return value or "''"


class HooksKind(Kind[str]):
    """Where the Python hooks are: a file (a path with a ``/``, or ending in ``.py``) or an
    importable module's dotted name; empty means none. Only the text is checked here: the code
    is loaded by :func:`sidecar_proxy.hooks.load.load_hooks`, which reports its own errors."""

    metavar = "FILE|MODULE"
    expected = (
        "expected a Python file (e.g. /etc/sidecar/hooks.py) or a dotted module name "
        "(e.g. mypkg.hooks)"
    )

    def parse(self, text: str) -> str:
        if text in _UNSET:
            return ""
        if any(ord(c) < 0x20 for c in text):
            raise ValueError(self.expected)
        if is_file(text) or all(part.isidentifier() for part in text.split(".")):
            return text
        raise ValueError(self.expected)

    def format(self, value: str) -> str:
        return value or "''"


class DirKind(FileKind):
    """A directory path; empty means "not set" (the setting says what it then stands for)."""

    metavar = "DIR"
    expected = "expected a directory path without control characters"


class IdentityListKind(_ListKind[str]):
    """Client identities: URI SANs (``spiffe://...``, any ``scheme://``) or DNS SANs, each
    matched exactly or, with one trailing ``*``, as a prefix."""

    expected = (
        "expected a comma-separated list of URI SANs (spiffe://trust-domain/path) or DNS "
        "names, each optionally ending in *"
    )

    def token(self, token: str) -> Iterable[str]:
        stem = token.removesuffix("*")
        if not stem or "*" in stem or re.search(r"[\s,]", stem):
            raise ValueError(f"bad identity {token!r}; {self.expected}")
        if "://" in stem:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://.*", stem):
                raise ValueError(f"bad identity {token!r}; {self.expected}")
            return (token,)
        if not re.fullmatch(r"[A-Za-z0-9.-]+", stem):
            raise ValueError(f"bad identity {token!r}; {self.expected}")
        return (token.lower(),)  # DNS names compare case-insensitively (RFC 4343)

    def parse(self, text: str) -> frozenset[str]:
        return frozenset() if text.strip() in _UNSET else super().parse(text)

    def format(self, value: frozenset[str]) -> str:
        return ",".join(sorted(value)) if value else "''"

    def to_json(self, value: frozenset[str]) -> list[str]:
        return sorted(value)


def _status(token: str, low: int, high: int) -> int | None:
    code = int(token) if re.fullmatch(r"[0-9]{3}", token) else None
    return code if code is not None and low <= code <= high else None


class RetryOnKind(_ListKind[str]):
    """Retry conditions: failure kinds by name, or response status codes as digit strings."""

    CONDITIONS = ("connect-failure", "reset", "timeout")
    expected = "expected a comma-separated list of connect-failure, reset, timeout, 429 or 500-599"

    def token(self, token: str) -> Iterable[str]:
        lowered = token.lower()
        if lowered in self.CONDITIONS or token == "429" or _status(token, 500, 599) is not None:
            return (lowered,)
        raise ValueError(f"unknown retry condition {token!r}; {self.expected}")

    def format(self, value: frozenset[str]) -> str:
        return ",".join(self._ordered(value)) if value else "''"

    def to_json(self, value: frozenset[str]) -> list[str]:
        return self._ordered(value)

    def _ordered(self, value: frozenset[str]) -> list[str]:
        names = [name for name in self.CONDITIONS if name in value]
        return names + sorted(value.difference(self.CONDITIONS), key=int)


class StatusListKind(_ListKind[int]):
    """5xx status codes, with ``5xx`` standing for all of 500-599."""

    ALL = frozenset(range(500, 600))
    expected = "expected a comma-separated list of status codes 500-599 or the word 5xx"

    def token(self, token: str) -> Iterable[int]:
        if token.lower() == "5xx":
            return self.ALL
        code = _status(token, 500, 599)
        if code is None:
            raise ValueError(f"unknown status {token!r}; {self.expected}")
        return (code,)

    def format(self, value: frozenset[int]) -> str:
        if value == self.ALL:
            return "5xx"
        return ",".join(map(str, sorted(value))) if value else "''"

    def to_json(self, value: frozenset[int]) -> list[int]:
        return sorted(value)


class GrpcStatusListKind(_ListKind[int]):
    """gRPC status codes by name, as gRPC's service config writes them in any case, with ``-``
    or ``_`` (``unavailable``, ``resource-exhausted``, ``DEADLINE_EXCEEDED``), or by number."""

    expected = (
        "expected a comma-separated list of gRPC status names (unavailable, resource-exhausted, "
        "internal, ...) or codes 0-16"
    )

    def token(self, token: str) -> Iterable[int]:
        name = token.upper().replace("-", "_")
        if name in GRPC_STATUS_NAMES:
            return (GRPC_STATUS_NAMES.index(name),)
        code = int(token) if token.isascii() and token.isdigit() and len(token) <= 2 else -1
        if not 0 <= code < len(GRPC_STATUS_NAMES):
            raise ValueError(f"unknown gRPC status {token!r}; {self.expected}")
        return (code,)

    def parse(self, text: str) -> frozenset[int]:
        return frozenset() if text.strip() in _UNSET else super().parse(text)

    def format(self, value: frozenset[int]) -> str:
        return ",".join(self._names(value)) if value else "''"

    def to_json(self, value: frozenset[int]) -> list[str]:
        return self._names(value)

    @staticmethod
    def _names(value: frozenset[int]) -> list[str]:
        return [GRPC_STATUS_NAMES[code].lower().replace("_", "-") for code in sorted(value)]
