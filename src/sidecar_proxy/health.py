"""Liveness and readiness: the state and the exact responses, shared by both ports.

The bodies are the seed's byte for byte, trailing newline included (Go's ``json.Encoder`` writes
one), so anything that matched on them keeps matching. Both the admin server and the proxy port
answer from these functions; neither formats its own.
"""

from __future__ import annotations

CONTENT_TYPE = "application/json"

_ALIVE = b'{"status":"alive"}\n'
_READY = b'{"status":"ready"}\n'
_NOT_READY = b'{"status":"not ready"}\n'


class HealthState:
    """Whether the pod should receive traffic.

    ``ready`` starts True and the lifecycle code sets it False when draining, so Kubernetes takes
    the pod out of its Service endpoints before the listener closes. A bool attribute is read and
    written atomically under the GIL, so the admin thread and the event loop can share it freely.
    """

    __slots__ = ("ready",)

    def __init__(self) -> None:
        self.ready = True


def health_body() -> tuple[int, bytes]:
    """Liveness: the process is up and answering; always ``200 {"status":"alive"}``."""
    return 200, _ALIVE


def ready_body(state: HealthState) -> tuple[int, bytes]:
    """Readiness: ``200 {"status":"ready"}``, or ``503 {"status":"not ready"}`` when draining."""
    if state.ready:
        return 200, _READY
    return 503, _NOT_READY
