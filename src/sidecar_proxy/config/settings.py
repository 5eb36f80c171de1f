"""The :class:`Settings` type, and the one table every source of configuration is read through.

Each field of :class:`Settings` is declared with :func:`_setting`, which records its env var,
value kind, default (as text, the way a user would write it) and help text in the dataclass
field's metadata. :data:`FIELDS` is read back from there, so the dataclass *is* the table:
env parsing, config-file keys, ``--flags``, ``check-config`` and the documentation cannot drift
apart, and the typed default a test gets from ``Settings()`` is the table's default text run
through the same parser a user's value goes through.

``Settings`` is frozen (the running proxy shares one instance across everything) and slotted
(attribute reads on the hot path are slot reads). Constructing it directly validates nothing:
tests build variants with ``dataclasses.replace(Settings(), listen_port=0)``, where port 0
means "any free port". Users' values go through :func:`~sidecar_proxy.config.load_settings`.

Units: durations are float seconds, sizes int bytes, lists frozensets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from sidecar_proxy.config.kinds import (
    BoolKind,
    DurationKind,
    EnumKind,
    FloatKind,
    HostKind,
    IntKind,
    Kind,
    PortKind,
    RetryOnKind,
    SizeKind,
    StatusListKind,
    WorkersKind,
)

T = TypeVar("T")
_SPEC = "sidecar_proxy.setting"

HOST = HostKind()
PORT = PortKind()
DURATION = DurationKind(allow_zero=True)
POSITIVE_DURATION = DurationKind(allow_zero=False)
COUNT = IntKind(0)
BOOL = BoolKind()


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: its name (also the file key), env var, kind, default text and help."""

    name: str
    env: str
    kind: Kind[Any]
    default: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _setting(env: str, kind: Kind[T], default: str, help: str) -> T:
    # Typed as returning T, like dataclasses.field, so `port: int = _setting(..., PORT, ...)`
    # type-checks against the kind; the name is filled in when FIELDS is built.
    spec = Field(name="", env=env, kind=kind, default=default, help=help)
    return dataclasses.field(default=kind.parse(default), metadata={_SPEC: spec})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy can be told; see the module docstring for units."""

    listen_host: str = _setting("LISTEN_HOST", HOST, "0.0.0.0", "address the proxy listens on")
    listen_port: int = _setting("SIDECAR_LISTEN_PORT", PORT, "8080", "port the proxy listens on")
    upstream_host: str = _setting("UPSTREAM_HOST", HOST, "localhost", "the app's host")
    upstream_port: int = _setting("UPSTREAM_PORT", PORT, "3000", "the app's port")
    metrics_host: str = _setting(
        "METRICS_HOST", HOST, "0.0.0.0", "address of the admin server (/metrics /health /ready)"
    )
    metrics_port: int = _setting("METRICS_PORT", PORT, "9090", "port of the admin server")
    request_timeout: float = _setting(
        "REQUEST_TIMEOUT",
        POSITIVE_DURATION,
        "30s",
        "deadline for the app's response head, counted from the end of the request, "
        "retries included; also the longest the response body may stall",
    )
    per_try_timeout: float = _setting(
        "PER_TRY_TIMEOUT",
        DURATION,
        "0",
        "deadline for each attempt's response head; 0 = off; at most request_timeout",
    )
    connect_timeout: float = _setting(
        "UPSTREAM_CONNECT_TIMEOUT", POSITIVE_DURATION, "1s", "deadline to connect to the app"
    )
    max_retries: int = _setting(
        "MAX_RETRIES", IntKind(0, 10), "3", "retries after the first attempt"
    )
    retry_backoff: float = _setting(
        "RETRY_BACKOFF", DURATION, "100ms", "base of the exponential backoff (full jitter)"
    )
    retry_max_backoff: float = _setting(
        "RETRY_MAX_BACKOFF", DURATION, "5s", "cap of the backoff; at least retry_backoff"
    )
    retry_on: frozenset[str] = _setting(
        "RETRY_ON",
        RetryOnKind(),
        "connect-failure,reset,timeout,502,503,504",
        "conditions worth a retry: connect-failure, reset, timeout, 429, 500-599",
    )
    retry_buffer_limit: int = _setting(
        "RETRY_BUFFER_LIMIT",
        SizeKind(0),
        "64KiB",
        "largest request body kept for replay; larger bodies are not retried",
    )
    retry_budget_ratio: float = _setting(
        "RETRY_BUDGET_RATIO",
        FloatKind(0, 1),
        "0.2",
        "retries allowed as a fraction of requests in the budget window",
    )
    retry_budget_min_per_second: int = _setting(
        "RETRY_BUDGET_MIN_PER_SECOND",
        COUNT,
        "10",
        "retries per second always allowed, whatever the ratio",
    )
    retry_budget_ttl: float = _setting(
        "RETRY_BUDGET_TTL", POSITIVE_DURATION, "10s", "window of the retry budget"
    )
    circuit_breaker_threshold: int = _setting(
        "CIRCUIT_BREAKER_THRESHOLD",
        COUNT,
        "5",
        "consecutive failures that open the breaker; 0 disables it",
    )
    circuit_breaker_timeout: float = _setting(
        "CIRCUIT_BREAKER_TIMEOUT",
        POSITIVE_DURATION,
        "30s",
        "how long the breaker stays open before probing",
    )
    circuit_breaker_half_open_requests: int = _setting(
        "CIRCUIT_BREAKER_HALF_OPEN_REQUESTS",
        IntKind(1, 100),
        "1",
        "probe requests allowed while half-open",
    )
    circuit_breaker_failure_statuses: frozenset[int] = _setting(
        "CIRCUIT_BREAKER_FAILURE_STATUSES",
        StatusListKind(),
        "5xx",
        "app responses that count as failures: codes 500-599 or 5xx",
    )
    max_in_flight: int = _setting(
        "MAX_IN_FLIGHT", COUNT, "1000", "requests in flight before shedding load; 0 = unlimited"
    )
    upstream_max_idle: int = _setting(
        "UPSTREAM_MAX_IDLE_CONNECTIONS", COUNT, "100", "idle keep-alive connections kept to the app"
    )
    upstream_idle_timeout: float = _setting(
        "UPSTREAM_IDLE_TIMEOUT",
        POSITIVE_DURATION,
        "4s",
        "idle app connections are closed after this; keep it under the app's keep-alive",
    )
    client_header_timeout: float = _setting(
        "CLIENT_HEADER_TIMEOUT",
        POSITIVE_DURATION,
        "10s",
        "time a client has to send the request headers (else 408)",
    )
    client_body_timeout: float = _setting(
        "CLIENT_BODY_TIMEOUT", POSITIVE_DURATION, "30s", "longest a request body may stall"
    )
    client_idle_timeout: float = _setting(
        "CLIENT_IDLE_TIMEOUT",
        POSITIVE_DURATION,
        "120s",
        "idle keep-alive client connections are closed after this",
    )
    max_header_bytes: int = _setting(
        "MAX_HEADER_BYTES",
        SizeKind(1024, 1024**2),
        "64KiB",
        "largest request head (else 431)",
    )
    max_header_count: int = _setting(
        "MAX_HEADER_COUNT", IntKind(1, 1000), "100", "most request headers (else 431)"
    )
    max_url_bytes: int = _setting(
        "MAX_URL_BYTES", SizeKind(256, 1024**2), "8KiB", "longest request target (else 414)"
    )
    max_request_body_bytes: int = _setting(
        "MAX_REQUEST_BODY_BYTES",
        SizeKind(0),
        "0",
        "largest request body (else 413); 0 = unlimited",
    )
    drain_delay: float = _setting(
        "DRAIN_DELAY",
        DURATION,
        "5s",
        "after SIGTERM, /ready answers 503 this long before the listener closes",
    )
    shutdown_grace_period: float = _setting(
        "SHUTDOWN_GRACE_PERIOD",
        DURATION,
        "20s",
        "after the listener closes, in-flight requests may finish within this",
    )
    health_on_proxy_port: bool = _setting(
        "HEALTH_ON_PROXY_PORT", BOOL, "true", "answer /health and /ready on the proxy port too"
    )
    access_log: bool = _setting("ACCESS_LOG", BOOL, "true", "log one line per request")
    log_level: str = _setting(
        "LOG_LEVEL",
        EnumKind("debug", "info", "warning", "error"),
        "info",
        "least severe level logged",
    )
    metrics_path_label_limit: int = _setting(
        "METRICS_PATH_LABEL_LIMIT",
        IntKind(1, 100_000),
        "200",
        "distinct path label values before the rest are counted as 'other'",
    )
    attempts_header: bool = _setting(
        "ATTEMPTS_HEADER", BOOL, "false", "add X-Sidecar-Attempts to responses"
    )
    workers: int = _setting(
        "WORKERS",
        WorkersKind(256),
        "1",
        "processes serving the proxy port; auto = the container's CPU limit, rounded up",
    )
    metrics_per_worker: bool = _setting(
        "METRICS_PER_WORKER",
        BOOL,
        "false",
        "with several workers, label every worker's series with worker=N instead of summing",
    )
    trust_forwarded_headers: bool = _setting(
        "TRUST_FORWARDED_HEADERS",
        BOOL,
        "true",
        "keep incoming X-Forwarded-Proto/Host instead of overwriting them",
    )


FIELDS: tuple[Field, ...] = tuple(
    dataclasses.replace(f.metadata[_SPEC], name=f.name) for f in dataclasses.fields(Settings)
)
FIELDS_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}
