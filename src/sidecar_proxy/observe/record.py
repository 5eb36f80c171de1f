"""The one record of one request.

The data path fills a :class:`Record` as the request travels; when the request is over
(answered, failed or abandoned) the :class:`~sidecar_proxy.observe.recorder.Recorder` turns it,
once, into metrics and one access-log line. Nothing else records a request, so the two can never
disagree.

It is a plain ``__slots__`` class rather than a dataclass: one is made per request on the hot
path, and slots make both construction and attribute stores measurably cheaper.
"""

from __future__ import annotations

from typing import Final

# Envoy-style response flags: short, greppable codes for what went wrong. Every module constant
# of the compiled packages that the data path reads is Final: mypyc then compiles a read to the
# constant itself, where a plain module global is a dictionary lookup by name on every read.
UPSTREAM_CONNECT_FAILURE: Final = "UF"  # the app refused or could not be reached
UPSTREAM_RESET: Final = "UC"  # the app closed or reset the connection before the response ended
UPSTREAM_TIMEOUT: Final = "UT"  # no response within the deadline (or a per-try timeout)
UPSTREAM_PROTOCOL_ERROR: Final = "UPE"  # the app sent a response we could not parse
DOWNSTREAM_DISCONNECT: Final = "DC"  # the client hung up before the response ended
DOWNSTREAM_PROTOCOL_ERROR: Final = "DPE"  # the client sent a request we rejected
BREAKER_OPEN: Final = "UH"  # the circuit breaker refused the request ("no healthy upstream")
LOAD_SHED: Final = "UO"  # too many requests in flight ("upstream overflow")
RATE_LIMITED: Final = "RL"  # over the local rate limit (429), Envoy's flag for its local rate limit
RETRIES_EXHAUSTED: Final = "URX"  # the last attempt failed too and retries ran out
RETRY_BUDGET_EXHAUSTED: Final = "RBX"  # a retry was wanted but the retry budget refused it
DOWNSTREAM_TIMEOUT: Final = "DT"  # the client was too slow sending the request
LOCAL_REPLY: Final = "LR"  # answered by the sidecar itself (health probe on the proxy port)
HOOK_ANSWERED: Final = "HA"  # the on_request hook answered with a Response of its own
# a hook raised or timed out (500/504 from on_request; on_response: unchanged)
HOOK_FAILED: Final = "HF"
CLIENT_IDENTITY_DENIED: Final = "CID"  # the client certificate's identity is not allowed in (403)

# Label values of sidecar_upstream_errors_total{type}. The first three are the seed's.
ERR_CONNECTION: Final = "connection_error"
ERR_5XX: Final = "5xx_error"
ERR_CIRCUIT_OPEN: Final = "circuit_open"
ERR_TIMEOUT: Final = "timeout"
ERR_RESET: Final = "reset"
ERR_PROTOCOL: Final = "protocol_error"

STATUS_CLIENT_CLOSED: Final = 499  # nginx's convention for "the client went away first"

# gRPC status codes by number (grpc/grpc doc/statuscodes.md): the grpc_status label values and
# the names GRPC_RETRY_ON and GRPC_FAILURE_STATUSES take.
GRPC_STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


class Record:
    """Everything known about one request, filled in by the data path."""

    __slots__ = (
        "attempts",
        "bytes_in",
        "bytes_out",
        "client_identity",
        "end",
        "flags",
        "grpc",
        "grpc_requests",
        "grpc_responses",
        "grpc_status",
        "has_query",
        "method",
        "path",
        "protocol",
        "remote_addr",
        "request_id",
        "retries_refused",
        "start",
        "start_wall",
        "status",
        "tls_version",
        "trace_id",
        "traced",
        "ttfb",
        "upstream_errors",
        "user_agent",
    )

    def __init__(self, start: float, start_wall: float, remote_addr: str, protocol: str) -> None:
        self.start = start  # time.monotonic() when the request head was parsed
        self.start_wall = start_wall  # time.time() of the same moment, for the log timestamp
        self.end = start
        self.remote_addr = remote_addr
        self.protocol = protocol  # the client's: HTTP/1.1, HTTP/1.0
        self.method = ""
        self.path = ""  # request path as received, without the query string
        self.has_query = False
        self.request_id = ""
        self.trace_id = ""
        self.traced = False  # trace_id came from a trace header rather than the request id
        self.user_agent = ""
        self.status = 0  # status sent to the client; 499 when it hung up first
        self.ttfb: float | None = None  # seconds from start to the app's response head
        self.bytes_in = 0  # request body bytes received from the client
        self.bytes_out = 0  # response body bytes sent to the client
        self.attempts = 0  # attempts sent to the app (0: answered locally or refused)
        self.retries_refused = 0  # retries the budget refused
        self.flags: list[str] = []
        self.upstream_errors: list[str] = []  # one entry per failed attempt, ERR_* values
        self.tls_version = ""  # "TLSv1.3"; "" on a plain-HTTP listener
        self.client_identity = ""  # first URI SAN, else first DNS SAN, of the client certificate
        # a gRPC call (content-type application/grpc): its status (-1 until known) and the
        # messages of each direction
        self.grpc = False
        self.grpc_status = -1
        self.grpc_requests = 0
        self.grpc_responses = 0
