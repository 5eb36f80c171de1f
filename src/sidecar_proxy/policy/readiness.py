"""Hysteresis for the app's readiness: one bad check must not pull a pod out of its Service.

The rule is the kubelet's for a readiness probe with ``successThreshold: 1``: not ready until the
first success; once ready, ``failures`` consecutive failed checks turn it not ready, and a single
success turns it ready again. A flapping check therefore costs at most one check interval of
traffic in each direction, and a lone timeout on a busy app costs none.
"""

from __future__ import annotations


class ReadinessGate:
    """Consecutive-failure hysteresis over a stream of check results."""

    __slots__ = ("_ready", "_run", "_threshold")

    def __init__(self, failures: int) -> None:
        if failures < 1:
            raise ValueError(f"failures must be >= 1, not {failures!r}")
        self._threshold = failures
        self._run = 0  # failed checks since the last success
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def record(self, ok: bool) -> bool:
        """Take one check's result; returns whether :attr:`ready` changed."""
        before = self._ready
        if ok:
            self._run = 0
            self._ready = True
        else:
            self._run += 1
            if self._run >= self._threshold:
                self._ready = False
        return self._ready != before
