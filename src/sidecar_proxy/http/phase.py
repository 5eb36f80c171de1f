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

The request side has one more fact, orthogonal to these: whether the request body is complete
(``Exchange.request_complete``); a response may start, and even end, before it is.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    QUEUED = "queued"  # parsed; waits its turn on the connection (HTTP/1.1 answers in order)
    CONNECTING = "connecting"  # an attempt waits for a new app connection
    AWAITING_HEAD = "awaiting_head"  # the request is (being) sent; no response head yet
    INTERIM = "interim"  # a 1xx came; its message ends before the final head
    BACKOFF = "backoff"  # a failed attempt will be retried after a delay (maybe zero)
    STREAMING = "streaming"  # the response head is committed; the body flows
    TUNNEL = "tunnel"  # 101 Switching Protocols: raw bytes both ways
    DONE = "done"  # answered, failed or abandoned, and recorded


_ANY_LIVE = frozenset(Phase) - {Phase.DONE}

NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.QUEUED: frozenset({Phase.CONNECTING, Phase.AWAITING_HEAD, Phase.DONE}),
    Phase.CONNECTING: frozenset({Phase.AWAITING_HEAD, Phase.BACKOFF, Phase.DONE}),
    Phase.AWAITING_HEAD: frozenset(
        {Phase.INTERIM, Phase.STREAMING, Phase.TUNNEL, Phase.BACKOFF, Phase.DONE}
    ),
    Phase.INTERIM: frozenset({Phase.AWAITING_HEAD, Phase.BACKOFF, Phase.DONE}),
    Phase.BACKOFF: frozenset({Phase.CONNECTING, Phase.AWAITING_HEAD, Phase.DONE}),
    Phase.STREAMING: frozenset({Phase.DONE}),
    Phase.TUNNEL: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}
assert set(NEXT) == set(Phase) and all(Phase.DONE in NEXT[p] for p in _ANY_LIVE)

# Phases in which the response head has gone to the client leg.
COMMITTED = frozenset({Phase.STREAMING, Phase.TUNNEL})
# Phases in which an attempt is under way and the request deadline applies.
WAITING_FOR_APP = frozenset({Phase.CONNECTING, Phase.AWAITING_HEAD, Phase.INTERIM, Phase.BACKOFF})


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in the proxy."""

    def __init__(self, old: Phase, new: Phase) -> None:
        super().__init__(f"illegal exchange transition {old.value} -> {new.value}")
        self.old = old
        self.new = new
