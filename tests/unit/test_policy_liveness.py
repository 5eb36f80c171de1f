"""Hung-worker detection, on a fake clock: which heartbeats are too old, and when the watch
holds its verdict."""

from __future__ import annotations

import pytest
from support.fakeclock import FakeClock

from sidecar_proxy.policy.liveness import BEAT_INTERVAL, MIN_TIMEOUT, HangWatch

TIMEOUT = 10.0


def looking(clock: FakeClock, watch: HangWatch, beats: list[float], until: float) -> list[int]:
    """Look every BEAT_INTERVAL up to ``until``; the workers found hung, in order."""
    found = []
    while clock.now < until:
        clock.now += BEAT_INTERVAL
        found += [worker for worker, _ in watch.hung(beats)]
    return found


def test_a_worker_that_stops_beating_is_hung_once_its_beat_is_older_than_the_timeout() -> None:
    clock = FakeClock(100.0)
    watch = HangWatch(TIMEOUT, clock)
    beats = [100.0, 100.0]
    assert looking(clock, watch, beats, 110.0) == []  # silent for exactly the timeout: not yet
    clock.now += BEAT_INTERVAL
    beats[1] = clock.now  # worker 1 still beats, worker 0 stopped at 100
    ((worker, silent),) = watch.hung(beats)
    assert worker == 0 and silent == pytest.approx(TIMEOUT + BEAT_INTERVAL)


def test_workers_that_beat_are_never_hung_and_one_not_yet_beating_is_not_judged() -> None:
    clock = FakeClock(0.0)
    watch = HangWatch(TIMEOUT, clock)
    beats = [0.0, 0.0]  # worker 0 starting (no loop yet); worker 1 beats from t=1
    for _ in range(200):
        clock.now += BEAT_INTERVAL
        if clock.now >= 1.0:
            beats[1] = clock.now - BEAT_INTERVAL  # its last beat, up to an interval ago
        assert watch.hung(beats) == []


def test_a_late_look_judges_nothing_and_the_next_one_does() -> None:
    # The parent itself was not scheduled (a stalled machine, a paused VM): the workers could
    # not beat either, so their old beats are no evidence that round.
    clock = FakeClock(0.0)
    watch = HangWatch(TIMEOUT, clock)
    beats = [0.5]
    clock.now = 30.0
    assert watch.hung(beats) == []
    clock.now += BEAT_INTERVAL
    assert [w for w, _ in watch.hung(beats)] == [0]  # still silent on a punctual look: hung


def test_zero_is_off() -> None:
    clock = FakeClock(0.0)
    watch = HangWatch(0.0, clock)
    assert looking(clock, watch, [0.1], 100.0) == []


@pytest.mark.parametrize("timeout", [0.5, MIN_TIMEOUT - 0.1, -1.0])
def test_a_timeout_shorter_than_four_beats_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError):
        HangWatch(timeout, FakeClock(0.0))
