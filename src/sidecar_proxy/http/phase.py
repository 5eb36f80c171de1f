"""The phases of an exchange, in one place, with every legal move between them.

Modelled on h11's ``_state.py``: the phase is one value, it changes in one method
(:meth:`Exchange._to <sidecar_proxy.http.exchange.Exchange>`), and a move this table does not
list raises :class:`IllegalTransition`. A raise is a bug in the proxy, never a peer's fault: the
legs catch it at their entry points, log it and cut the connection, so one broken exchange cannot
take the process with it (see ``docs/architecture.md``)::

    QUEUED ─► CONNECTING ─► AWAITING_HEAD ─► STREAMING ─► DONE
       │          ▲   │         │  │  ▲
       │          │   │         │  └─►INTERIM
       │          │   ▼         ▼
       │          └── BACKOFF ◄─┘   (a failed attempt that may be retried)
       │                            AWAITING_HEAD ─► TUNNEL (101) ─► DONE
       └─► AWAITING_HEAD (a warm pooled connection)     any phase but DONE ─► DONE

    while an async hook runs:
    QUEUED ─► REQUEST_HOOK ─► CONNECTING or AWAITING_HEAD     (on_request)
    AWAITING_HEAD ─► RESPONSE_HOOK ─► STREAMING               (on_response, the final head)

The two hook phases exist only while an ``async def`` hook is awaited; a plain hook runs inside
the move it guards, and with no hooks set neither phase is ever entered.

The request side has one more fact, orthogonal to these: whether the request body is complete
(``Exchange.request_complete``); a response may start, and even end, before it is.
"""

from __future__ import annotations

import enum
from typing import Final


class Phase(enum.IntEnum):
    QUEUED = 0  # parsed; waits its turn on the connection (HTTP/1.1 answers in order)
    REQUEST_HOOK = 1  # an async on_request hook runs; no attempt has started
    CONNECTING = 2  # an attempt waits for a new app connection
    AWAITING_HEAD = 3  # the request is (being) sent; no response head yet
    INTERIM = 4  # a 1xx came; its message ends before the final head
    BACKOFF = 5  # a failed attempt will be retried after a delay (maybe zero)
    RESPONSE_HOOK = 6  # the final head came; an async on_response hook runs before it goes out
    STREAMING = 7  # the response head is committed; the body flows
    TUNNEL = 8  # 101 Switching Protocols: raw bytes both ways
    DONE = 9  # answered, failed or abandoned, and recorded


# The members as module constants, for the hot path: ``Phase.DONE`` is an attribute lookup on
# the enum class (measured ~150 ns on CPython 3.11), a module constant a cached global (~10 ns)
# and, compiled, a C static.
QUEUED: Final = Phase.QUEUED
REQUEST_HOOK: Final = Phase.REQUEST_HOOK
CONNECTING: Final = Phase.CONNECTING
AWAITING_HEAD: Final = Phase.AWAITING_HEAD
INTERIM: Final = Phase.INTERIM
BACKOFF: Final = Phase.BACKOFF
RESPONSE_HOOK: Final = Phase.RESPONSE_HOOK
STREAMING: Final = Phase.STREAMING
TUNNEL: Final = Phase.TUNNEL
DONE: Final = Phase.DONE

NEXT: Final[dict[Phase, frozenset[Phase]]] = {
    QUEUED: frozenset({REQUEST_HOOK, CONNECTING, AWAITING_HEAD, DONE}),
    REQUEST_HOOK: frozenset({CONNECTING, AWAITING_HEAD, DONE}),
    CONNECTING: frozenset({AWAITING_HEAD, BACKOFF, DONE}),
    AWAITING_HEAD: frozenset({INTERIM, RESPONSE_HOOK, STREAMING, TUNNEL, BACKOFF, DONE}),
    INTERIM: frozenset({AWAITING_HEAD, BACKOFF, DONE}),
    BACKOFF: frozenset({CONNECTING, AWAITING_HEAD, DONE}),
    RESPONSE_HOOK: frozenset({STREAMING, DONE}),
    STREAMING: frozenset({DONE}),
    TUNNEL: frozenset({DONE}),
    DONE: frozenset(),
}
assert set(NEXT) == set(Phase) and all(DONE in NEXT[p] for p in Phase if p is not DONE)


def _mask(phases: frozenset[Phase]) -> int:
    return sum(1 << p for p in phases)


# The table as bit masks indexed by phase: a transition check is a shift and an and.
ALLOWED: Final[tuple[int, ...]] = tuple(_mask(NEXT[p]) for p in Phase)
# Phases in which an attempt is under way and the request deadline applies.
WAITING_FOR_APP: Final = _mask(frozenset({CONNECTING, AWAITING_HEAD, INTERIM, BACKOFF}))


class IllegalTransition(Exception):
    """A move the table does not allow: a bug in the proxy."""

    def __init__(self, old: Phase, new: Phase) -> None:
        super().__init__(f"illegal exchange transition {old.name} -> {new.name}")
        self.old = old
        self.new = new
