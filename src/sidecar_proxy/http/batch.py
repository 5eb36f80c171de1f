"""Writes held until the end of the loop's turn, then made one after another.

A write to a loopback (or any) socket wakes the reader if it sleeps, and waking a task on
another core costs the writer an inter-processor interrupt: in a VM, an exit to the hypervisor
(measured here: 0.6 interrupts per request cost about 11 us of it). Made as each request or
response is ready, 20 to 30 us of work apart, the writes let the peer fall asleep between them,
and nearly every one paid that wake-up. Made in a burst once the loop has run every callback of
the current read, one wake-up serves them all.
Measured in docs/benchmarks.md ("Kernel crossings per request").

``call_soon`` is the end of the turn: the loop runs it at the start of its next iteration, after
every I/O callback of this one and before it polls again. One handle per turn, not per write.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Unsent(Protocol):
    """A leg holding bytes for the end of the turn."""

    def write_unsent(self) -> None: ...


class TurnWrites:
    """The legs with bytes held this turn; each writes them when the turn ends."""

    __slots__ = ("_legs", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._legs: list[Unsent] = []

    def add(self, leg: Unsent) -> None:
        """``leg.write_unsent()`` at the end of this turn; once per leg and turn, by the leg."""
        if not self._legs:
            self._loop.call_soon(self._write)
        self._legs.append(leg)

    def _write(self) -> None:
        legs, self._legs = self._legs, []
        for leg in legs:
            leg.write_unsent()


def write_held(transport: asyncio.Transport | None, out: list[bytes]) -> None:
    """Write a leg's held bytes, unless its connection went meanwhile (lost or closed by a read
    later in the same turn): the exchange hears of that from ``connection_lost``, and a closed
    transport refuses writes."""
    if transport is not None and not transport.is_closing():
        transport.writelines(out)
