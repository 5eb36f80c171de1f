"""Hung-worker detection: which workers' event loops have stopped running.

A worker that has died is seen at once (its control channel closes), but one whose event loop is
stuck, in a hook that blocks, an endless loop or a SIGSTOP, is alive and serves nothing: the
connections the kernel hands its socket wait forever. So each worker's loop stamps a heartbeat,
the time of its monotonic clock, in the pod's shared memory every :data:`BEAT_INTERVAL` from a
loop timer, and the parent looks every :data:`BEAT_INTERVAL` as well: a heartbeat older than the
timeout (``WORKER_HEARTBEAT_TIMEOUT``) means that loop has not run for that long, and the parent
kills and replaces the worker. ``CLOCK_MONOTONIC`` is one clock for every process of the machine,
so the worker's stamp and the parent's clock compare directly.

A timer of the loop, not a thread of the worker, stamps the beat: a thread would go on beating
while the loop it is meant to vouch for is stuck. The timer costs one callback per interval.

A false verdict kills a healthy worker with its requests in flight, so the rule leans to
patience: the timeout is at least :data:`MIN_TIMEOUT` (four intervals), and when the parent's
own look comes late (the parent was not scheduled either: the machine stalled, a VM paused),
it judges nothing that round, since the workers had no chance to beat meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar_proxy.policy.clock import Clock

# Seconds between two heartbeats of a worker, and between two looks of the parent.
BEAT_INTERVAL = 0.5
# The shortest WORKER_HEARTBEAT_TIMEOUT: four missed beats.
MIN_TIMEOUT = 4 * BEAT_INTERVAL


class HangWatch:
    """The parent's judge of the workers' heartbeats; ``timeout`` 0 is off.

    :meth:`hung` is called every :data:`BEAT_INTERVAL` with every worker's last heartbeat, 0
    for a worker that has not beaten yet (a process still starting: its interpreter's start-up
    is not judged, since no loop runs yet to beat).
    """

    __slots__ = ("_clock", "_looked", "_timeout")

    def __init__(self, timeout: float, clock: Clock) -> None:
        if timeout and timeout < MIN_TIMEOUT:
            raise ValueError(f"heartbeat timeout must be 0 or >= {MIN_TIMEOUT}, not {timeout!r}")
        self._timeout = timeout
        self._clock = clock
        self._looked = clock()

    def hung(self, beats: Sequence[float]) -> list[tuple[int, float]]:
        """The workers whose loops have not run within the timeout, each as its index and the
        seconds since its last beat."""
        now = self._clock()
        looked, self._looked = self._looked, now
        timeout = self._timeout
        if not timeout or now - looked > timeout / 2:
            return []  # off, or this look is late: the workers may have been stalled with us
        return [
            (worker, now - beat)
            for worker, beat in enumerate(beats)
            if beat and now - beat > timeout
        ]
