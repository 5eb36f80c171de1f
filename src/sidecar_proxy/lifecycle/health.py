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
    """Whether the pod should receive traffic: the app is ready, every process serves, and no
    shutdown has begun.

    Three independent inputs, each with one writer: the shutdown (:meth:`shut_down`, once, so
    Kubernetes takes the pod out of its Service endpoints before the listener closes), the app
    readiness check (:meth:`set_app_ready`; without a check the app counts as ready from the
    start, the seed's behaviour), and, with several worker processes, whether the whole pod
    serves (:meth:`set_pod_ready`: in the parent, every worker serves; in a worker, the parent's
    verdict, app check included). One process is always its own pod. Bool attributes are read
    and written atomically under the GIL, so the admin thread and the event loop share them
    freely.
    """

    __slots__ = ("_app_ready", "_pod_ready", "_shutting_down")

    def __init__(self, app_ready: bool = True, pod_ready: bool = True) -> None:
        self._app_ready = app_ready
        self._pod_ready = pod_ready
        self._shutting_down = False

    @property
    def ready(self) -> bool:
        return self._app_ready and self._pod_ready and not self._shutting_down

    def set_app_ready(self, ready: bool) -> None:
        self._app_ready = ready

    def set_pod_ready(self, ready: bool) -> None:
        self._pod_ready = ready

    def shut_down(self) -> None:
        self._shutting_down = True


def health_body() -> tuple[int, bytes]:
    """Liveness: the process is up and answering; always ``200 {"status":"alive"}``."""
    return 200, _ALIVE


def ready_body(state: HealthState) -> tuple[int, bytes]:
    """Readiness: ``200 {"status":"ready"}``, or ``503 {"status":"not ready"}`` while the app is
    not ready or once a shutdown has begun."""
    if state.ready:
        return 200, _READY
    return 503, _NOT_READY
