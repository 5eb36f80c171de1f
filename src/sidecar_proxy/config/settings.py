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
    AppCheckKind,
    BoolKind,
    CidrListKind,
    DirKind,
    DurationKind,
    EnumKind,
    FileKind,
    FloatKind,
    GrpcStatusListKind,
    HooksKind,
    HostKind,
    IdentityListKind,
    IntKind,
    Kind,
    PortKind,
    RetryOnKind,
    ServerNameKind,
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
FILE = FileKind()


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: its name (also the file key), env var, kind, default text and help."""

    name: str
    env: str
    kind: Kind[Any]
    default: str
    help: str
    # Whether a SIGHUP reload applies a new value to the running proxy. The others (ports,
    # hosts, what the upstream pool and the admin thread were built with) keep their start-up
    # value until a restart; the reload reports them.
    live: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _setting(env: str, kind: Kind[T], default: str, help: str, *, live: bool = False) -> T:
    # Typed as returning T, like dataclasses.field, so `port: int = _setting(..., PORT, ...)`
    # type-checks against the kind; the name is filled in when FIELDS is built.
    spec = Field(name="", env=env, kind=kind, default=default, help=help, live=live)
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
    admin_allow: frozenset[str] = _setting(
        "ADMIN_ALLOW",
        CidrListKind(),
        "127.0.0.0/8,::1",
        "client addresses (IPs or CIDRs) allowed to POST /quitquitquit on the admin port",
    )
    request_timeout: float = _setting(
        "REQUEST_TIMEOUT",
        POSITIVE_DURATION,
        "30s",
        "deadline for the app's response head, counted from the end of the request, "
        "retries included; also the longest the response body may stall, and the longest the app "
        "may leave the request body unread",
        live=True,
    )
    per_try_timeout: float = _setting(
        "PER_TRY_TIMEOUT",
        DURATION,
        "0",
        "deadline for each attempt's response head; 0 = off; at most request_timeout",
        live=True,
    )
    connect_timeout: float = _setting(
        "UPSTREAM_CONNECT_TIMEOUT", POSITIVE_DURATION, "1s", "deadline to connect to the app"
    )
    max_retries: int = _setting(
        "MAX_RETRIES", IntKind(0, 10), "3", "retries after the first attempt", live=True
    )
    retry_backoff: float = _setting(
        "RETRY_BACKOFF",
        DURATION,
        "100ms",
        "base of the exponential backoff (full jitter)",
        live=True,
    )
    retry_max_backoff: float = _setting(
        "RETRY_MAX_BACKOFF", DURATION, "5s", "cap of the backoff; at least retry_backoff", live=True
    )
    retry_on: frozenset[str] = _setting(
        "RETRY_ON",
        RetryOnKind(),
        "connect-failure,reset,timeout,502,503,504",
        "conditions worth a retry: connect-failure, reset, timeout, 429, 500-599",
        live=True,
    )
    retry_buffer_limit: int = _setting(
        "RETRY_BUFFER_LIMIT",
        SizeKind(0),
        "64KiB",
        "largest request body kept in memory for replay; larger bodies are not retried unless "
        "retry_spool_limit spools them",
        live=True,
    )
    retry_spool_limit: int = _setting(
        "RETRY_SPOOL_LIMIT",
        SizeKind(0),
        "0",
        "largest replay-safe request body copied to disk as it streams, so it can still be "
        "retried (above retry_buffer_limit, e.g. 64MiB); 0 = off",
        live=True,
    )
    retry_spool_dir: str = _setting(
        "RETRY_SPOOL_DIR",
        DirKind(),
        "",
        "directory for the spool's nameless files, on a local disk (an emptyDir); '' = the "
        "system temp dir",
        live=True,
    )
    retry_spool_max_total: int = _setting(
        "RETRY_SPOOL_MAX_TOTAL",
        SizeKind(1),
        "1GiB",
        "disk all spooled bodies together may take; past it a body streams without a replay copy",
        live=True,
    )
    retry_budget_ratio: float = _setting(
        "RETRY_BUDGET_RATIO",
        FloatKind(0, 1),
        "0.2",
        "retries allowed as a fraction of requests in the budget window",
        live=True,
    )
    retry_budget_min_per_second: int = _setting(
        "RETRY_BUDGET_MIN_PER_SECOND",
        COUNT,
        "10",
        "retries per second always allowed, whatever the ratio",
        live=True,
    )
    retry_budget_ttl: float = _setting(
        "RETRY_BUDGET_TTL", POSITIVE_DURATION, "10s", "window of the retry budget", live=True
    )
    circuit_breaker_threshold: int = _setting(
        "CIRCUIT_BREAKER_THRESHOLD",
        COUNT,
        "5",
        "consecutive failures that open the breaker; 0 = failures never do",
        live=True,
    )
    circuit_breaker_timeout: float = _setting(
        "CIRCUIT_BREAKER_TIMEOUT",
        POSITIVE_DURATION,
        "30s",
        "how long the breaker stays open before probing",
        live=True,
    )
    circuit_breaker_half_open_requests: int = _setting(
        "CIRCUIT_BREAKER_HALF_OPEN_REQUESTS",
        IntKind(1, 100),
        "1",
        "probe requests allowed while half-open",
        live=True,
    )
    circuit_breaker_failure_statuses: frozenset[int] = _setting(
        "CIRCUIT_BREAKER_FAILURE_STATUSES",
        StatusListKind(),
        "5xx",
        "app responses that count as failures: codes 500-599 or 5xx",
        live=True,
    )
    circuit_breaker_slow_call_duration: float = _setting(
        "CIRCUIT_BREAKER_SLOW_CALL_DURATION",
        DURATION,
        "0",
        "attempts slower than this to the response head are slow calls; 0 = off; < request_timeout",
    )
    circuit_breaker_slow_call_rate: float = _setting(
        "CIRCUIT_BREAKER_SLOW_CALL_RATE",
        FloatKind(0, 1, low_open=True),
        "0.5",
        "share of slow calls in the window that opens the breaker",
    )
    circuit_breaker_window: int = _setting(
        "CIRCUIT_BREAKER_WINDOW",
        IntKind(1, 10_000),
        "20",
        "recent calls the slow-call rate is judged over (no verdict before that many)",
    )
    max_in_flight: int = _setting(
        "MAX_IN_FLIGHT",
        COUNT,
        "1000",
        "requests in flight before shedding load; 0 = unlimited",
        live=True,
    )
    rate_limit_rps: float = _setting(
        "RATE_LIMIT_RPS",
        FloatKind(0, 1_000_000),
        "0",
        "requests per second the token bucket refills (else 429); 0 = no rate limit",
        live=True,
    )
    rate_limit_burst: int = _setting(
        "RATE_LIMIT_BURST",
        IntKind(0, 1_000_000),
        "0",
        "requests the bucket holds, taken at once after a quiet spell; "
        "0 = one second's worth (rate_limit_rps rounded up)",
        live=True,
    )
    rate_limit_key: str = _setting(
        "RATE_LIMIT_KEY",
        EnumKind("global", "client_ip"),
        "global",
        "one bucket for all clients, or one per client address",
        live=True,
    )
    rate_limit_max_keys: int = _setting(
        "RATE_LIMIT_MAX_KEYS",
        IntKind(1, 1_000_000),
        "10000",
        "client buckets kept with rate_limit_key=client_ip; the least recently used goes first",
        live=True,
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
        live=True,
    )
    client_body_timeout: float = _setting(
        "CLIENT_BODY_TIMEOUT",
        POSITIVE_DURATION,
        "30s",
        "longest a request body may stall",
        live=True,
    )
    client_idle_timeout: float = _setting(
        "CLIENT_IDLE_TIMEOUT",
        POSITIVE_DURATION,
        "120s",
        "idle keep-alive client connections are closed after this",
        live=True,
    )
    max_header_bytes: int = _setting(
        "MAX_HEADER_BYTES",
        SizeKind(1024, 1024**2),
        "64KiB",
        "largest request head (else 431)",
    )
    max_header_count: int = _setting(
        "MAX_HEADER_COUNT", IntKind(1, 1000), "100", "most request headers (else 431)", live=True
    )
    max_url_bytes: int = _setting(
        "MAX_URL_BYTES",
        SizeKind(256, 1024**2),
        "8KiB",
        "longest request target (else 414)",
        live=True,
    )
    max_request_body_bytes: int = _setting(
        "MAX_REQUEST_BODY_BYTES",
        SizeKind(0),
        "0",
        "largest request body (else 413); 0 = unlimited",
        live=True,
    )
    drain_delay: float = _setting(
        "DRAIN_DELAY",
        DURATION,
        "5s",
        "after SIGTERM, /ready answers 503 and every response closes its connection this long "
        "before the listener closes",
        live=True,
    )
    shutdown_grace_period: float = _setting(
        "SHUTDOWN_GRACE_PERIOD",
        DURATION,
        "20s",
        "after the listener closes, in-flight requests may finish within this",
        live=True,
    )
    health_on_proxy_port: bool = _setting(
        "HEALTH_ON_PROXY_PORT",
        BOOL,
        "true",
        "answer /health and /ready on the proxy port too",
        live=True,
    )
    app_ready_check: str = _setting(
        "APP_READY_CHECK",
        AppCheckKind(),
        "none",
        "what /ready also requires of the app: none, tcp (its port accepts) "
        "or http:/path (it answers 2xx there)",
    )
    app_ready_interval: float = _setting(
        "APP_READY_INTERVAL",
        POSITIVE_DURATION,
        "1s",
        "how often the app is checked; a check not done within it fails",
    )
    app_ready_failures: int = _setting(
        "APP_READY_FAILURES",
        IntKind(1, 100),
        "3",
        "consecutive failed checks before /ready turns 503 (one success turns it back)",
    )
    access_log: bool = _setting("ACCESS_LOG", BOOL, "true", "log one line per request", live=True)
    log_level: str = _setting(
        "LOG_LEVEL",
        EnumKind("debug", "info", "warning", "error"),
        "info",
        "least severe level logged",
        live=True,
    )
    metrics_path_label_limit: int = _setting(
        "METRICS_PATH_LABEL_LIMIT",
        IntKind(1, 100_000),
        "200",
        "distinct path label values before the rest are counted as 'other'",
    )
    slo_availability: float = _setting(
        "SLO_AVAILABILITY",
        FloatKind(0, 100, high_open=True),
        "0",
        "availability objective, percent of requests not answered 5xx (e.g. 99.9); 0 = off",
    )
    slo_latency: float = _setting(
        "SLO_LATENCY",
        DURATION,
        "0",
        "latency objective: requests answered within this are fast (e.g. 300ms); 0 = off",
    )
    slo_latency_objective: float = _setting(
        "SLO_LATENCY_OBJECTIVE",
        FloatKind(0, 100, low_open=True, high_open=True),
        "99",
        "percent of requests that must be answered within slo_latency",
    )
    attempts_header: bool = _setting(
        "ATTEMPTS_HEADER", BOOL, "false", "add X-Sidecar-Attempts to responses", live=True
    )
    server_timing: bool = _setting(
        "SERVER_TIMING",
        BOOL,
        "false",
        "add Server-Timing: sidecar;dur=..., app;dur=... to the app's responses",
        live=True,
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
    worker_heartbeat_timeout: float = _setting(
        "WORKER_HEARTBEAT_TIMEOUT",
        DURATION,
        "10s",
        "with several workers, a worker whose event loop has not run for this long is killed "
        "and restarted; 0 = off, else at least 2s",
    )
    hooks: str = _setting(
        "HOOKS",
        HooksKind(),
        "",
        "Python hooks on every request: a file (/etc/sidecar/hooks.py) or a module (mypkg.hooks) "
        "defining on_request(request) and/or on_response(request, response); reloaded on SIGHUP",
        live=True,
    )
    hook_timeout: float = _setting(
        "HOOK_TIMEOUT",
        POSITIVE_DURATION,
        "1s",
        "longest an async hook is awaited: then on_request answers 504, on_response leaves the "
        "response unchanged",
        live=True,
    )
    trust_forwarded_headers: bool = _setting(
        "TRUST_FORWARDED_HEADERS",
        BOOL,
        "true",
        "keep incoming X-Forwarded-Proto/Host instead of overwriting them",
        live=True,
    )
    upstream_protocol: str = _setting(
        "UPSTREAM_PROTOCOL",
        EnumKind("http1", "h2c"),
        "http1",
        "protocol spoken to the app: http1, or h2c (HTTP/2 over cleartext, streams multiplexed)",
    )
    grpc_retry_on: frozenset[int] = _setting(
        "GRPC_RETRY_ON",
        GrpcStatusListKind(),
        "",
        "gRPC statuses worth a retry (unavailable, resource-exhausted, ...); Trailers-Only "
        "answers to calls still held within retry_buffer_limit; empty = none",
        live=True,
    )
    grpc_failure_statuses: frozenset[int] = _setting(
        "GRPC_FAILURE_STATUSES",
        GrpcStatusListKind(),
        "unavailable,internal,unknown,data-loss,deadline-exceeded",
        "gRPC statuses that count as app failures for the circuit breaker",
        live=True,
    )
    h2_max_concurrent_streams: int = _setting(
        "H2_MAX_CONCURRENT_STREAMS",
        IntKind(1, 10_000),
        "100",
        "streams an HTTP/2 client may have open on one connection; more are refused",
    )
    h2_stream_window: int = _setting(
        "H2_STREAM_WINDOW",
        SizeKind(65_535, 2**31 - 1),
        "256KiB",
        "HTTP/2 receive window per stream: request body held per stream before the app drains it",
    )
    h2_connection_window: int = _setting(
        "H2_CONNECTION_WINDOW",
        SizeKind(65_535, 2**31 - 1),
        "1MiB",
        "HTTP/2 receive window per connection: body held per connection before the other leg "
        "drains it",
    )
    h2_max_reset_rate: int = _setting(
        "H2_MAX_RESET_RATE",
        IntKind(1, 1_000_000),
        "200",
        "stream resets per second one HTTP/2 connection may cause before GOAWAY "
        "ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487)",
    )
    h2_max_control_frame_rate: int = _setting(
        "H2_MAX_CONTROL_FRAME_RATE",
        IntKind(1, 1_000_000),
        "500",
        "SETTINGS, PING, PRIORITY and empty DATA or CONTINUATION frames per second one HTTP/2 "
        "connection may send before GOAWAY ENHANCE_YOUR_CALM",
    )
    h2_send_stall_timeout: float = _setting(
        "H2_SEND_STALL_TIMEOUT",
        POSITIVE_DURATION,
        "30s",
        "longest an HTTP/2 response may wait on a flow-control window the client keeps at zero",
    )
    h2_keepalive_interval: float = _setting(
        "H2_KEEPALIVE_INTERVAL",
        DURATION,
        "0",
        "with upstream_protocol=h2c: PING a connection to the app that has sent nothing for "
        "this long, and close it if h2_keepalive_timeout passes without an answer; 0 = off",
    )
    h2_keepalive_timeout: float = _setting(
        "H2_KEEPALIVE_TIMEOUT",
        POSITIVE_DURATION,
        "20s",
        "how long a keepalive PING to the app may go unanswered (any frame counts) before "
        "its connection is closed",
    )
    tls_cert_file: str = _setting(
        "TLS_CERT_FILE",
        FILE,
        "",
        "PEM certificate chain (leaf first) the proxy port serves; set with tls_key_file to "
        "make the proxy port TLS-only",
    )
    tls_key_file: str = _setting("TLS_KEY_FILE", FILE, "", "PEM private key of tls_cert_file")
    tls_min_version: str = _setting(
        "TLS_MIN_VERSION", EnumKind("1.2", "1.3"), "1.2", "oldest TLS version accepted"
    )
    tls_client_ca_file: str = _setting(
        "TLS_CLIENT_CA_FILE", FILE, "", "PEM CA certificates that client certificates must chain to"
    )
    tls_client_auth: str = _setting(
        "TLS_CLIENT_AUTH",
        EnumKind("none", "optional", "require"),
        "none",
        "ask clients for a certificate: none, optional (verified if sent) or require",
    )
    tls_allowed_identities: frozenset[str] = _setting(
        "TLS_ALLOWED_IDENTITIES",
        IdentityListKind(),
        "",
        "client URI SANs (spiffe://...) or DNS SANs let in, a trailing * matches any rest; "
        "others get 403; empty = any verified client",
    )
    upstream_tls: bool = _setting("UPSTREAM_TLS", BOOL, "false", "speak TLS to the app")
    upstream_ca_file: str = _setting(
        "UPSTREAM_CA_FILE",
        FILE,
        "",
        "PEM CA certificates the app's certificate must chain to; empty = the system's",
    )
    upstream_server_name: str = _setting(
        "UPSTREAM_SERVER_NAME",
        ServerNameKind(),
        "",
        "name sent as SNI and checked against the app's certificate; empty = upstream_host",
    )
    upstream_cert_file: str = _setting(
        "UPSTREAM_CERT_FILE", FILE, "", "PEM client certificate chain presented to the app"
    )
    upstream_key_file: str = _setting(
        "UPSTREAM_KEY_FILE", FILE, "", "PEM private key of upstream_cert_file"
    )


FIELDS: tuple[Field, ...] = tuple(
    dataclasses.replace(f.metadata[_SPEC], name=f.name) for f in dataclasses.fields(Settings)
)
FIELDS_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}
