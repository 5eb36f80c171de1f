"""The pod-wide policies in shared memory, driven by two "workers" in this process, and one
real second process where the point is the lock between processes."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fakeclock import FakeClock

from sidecar_proxy.config import Settings
from sidecar_proxy.policy.breaker import BreakerState, CircuitBreaker, OpenReason
from sidecar_proxy.policy.budget import RetryBudget
from sidecar_proxy.policy.configured import new_breaker
from sidecar_proxy.replay.spool import SpoolArea
from sidecar_proxy.workers.shared import (
    BOOK_INTERVAL,
    PodLock,
    PodMemory,
    SharedCircuitBreaker,
    SharedConcurrencyLimit,
    SharedPolicies,
    SharedRetryBudget,
)

OPEN_FOR = 30.0
SETTINGS = dataclasses.replace(
    Settings(),
    circuit_breaker_threshold=3,
    circuit_breaker_timeout=OPEN_FOR,
    circuit_breaker_half_open_requests=2,
)
SLOW = 1.0  # the slow-call duration of SLOW_SETTINGS
SLOW_SETTINGS = dataclasses.replace(
    SETTINGS,
    circuit_breaker_slow_call_duration=SLOW,
    circuit_breaker_slow_call_rate=0.5,
    circuit_breaker_window=4,
)
Transition = tuple[BreakerState, BreakerState, OpenReason | None]


@contextlib.contextmanager
def new_memory() -> Iterator[PodMemory]:
    memory = PodMemory.create(2)
    try:
        yield memory
    finally:
        memory.close()


@pytest.fixture
def memory() -> Iterator[PodMemory]:
    with new_memory() as fresh:
        yield fresh


def noting(
    seen: list[Transition],
) -> Callable[[BreakerState, BreakerState, OpenReason | None], None]:
    def note(old: BreakerState, new: BreakerState, reason: OpenReason | None) -> None:
        seen.append((old, new, reason))

    return note


def shared_breakers(
    clock: FakeClock, memory: PodMemory, seen: list[Transition], settings: Settings = SETTINGS
) -> list[SharedCircuitBreaker]:
    return [SharedCircuitBreaker(memory, settings, clock, noting(seen)) for _ in range(2)]


CALLS = ["allow", "success", "failure", "slow success", "slow failure", "release", "wait"]
OPS = st.lists(
    st.tuples(st.sampled_from(CALLS), st.integers(0, 1)),  # the call, and which worker makes it
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_two_workers_sharing_a_breaker_behave_exactly_as_one_breaker(
    ops: list[tuple[str, int]],
) -> None:
    # Each call goes to one of two workers' breakers; the same calls in the same order go to
    # one plain breaker. Answers, states and transitions must be identical, whichever worker
    # makes a call: this also proves that the lock-free shortcuts decide as the locked path.
    # The slow-call rule is off here (its window is each worker's own: see the test below).
    clock = FakeClock(1000.0)
    same_calls(clock, SETTINGS, ops)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CALLS), max_size=80))
def test_one_worker_with_the_slow_call_rule_behaves_exactly_as_one_breaker(
    calls: list[str],
) -> None:
    # With the slow-call rule on, a worker whose calls are all the pod's judges the same window
    # as one process, and the slow probes of half-open are in the shared state.
    same_calls(FakeClock(1000.0), SLOW_SETTINGS, [(call, 0) for call in calls])


def same_calls(clock: FakeClock, settings: Settings, ops: list[tuple[str, int]]) -> None:
    """Each call goes to one of two workers' breakers; the same calls in the same order go to
    one plain breaker. Answers, states and transitions must be identical."""
    plain_seen: list[Transition] = []
    shared_seen: list[Transition] = []
    plain = new_breaker(settings, clock, noting(plain_seen))
    with new_memory() as memory:
        workers = shared_breakers(clock, memory, shared_seen, settings)
        for op, worker in ops:
            apply(op, workers[worker], plain, clock)
            for each in workers:
                assert each.state is plain.state
                assert each.retry_after() == plain.retry_after()
            assert shared_seen == plain_seen


def apply(op: str, breaker: SharedCircuitBreaker, plain: CircuitBreaker, clock: FakeClock) -> None:
    """The same call on a worker's shared breaker and on the plain one."""
    started = clock.now - 2 * SLOW if op.startswith("slow") else clock.now
    if op == "allow":
        assert breaker.allow() == plain.allow()
    elif op.endswith("success"):
        breaker.record_success(started)
        plain.record_success(started)
    elif op.endswith("failure"):
        breaker.record_failure(started)
        plain.record_failure(started)
    elif op == "release":
        breaker.release()
        plain.release()
    else:
        clock.now += OPEN_FOR / 2


def test_failures_from_both_workers_open_it_and_both_then_refuse(memory: PodMemory) -> None:
    clock = FakeClock(0.0)
    seen: list[Transition] = []
    a, b = shared_breakers(clock, memory, seen)
    for worker in (a, b, a):
        assert worker.allow()
        worker.record_failure(clock.now)
    # one transition for the pod
    assert seen == [(BreakerState.CLOSED, BreakerState.OPEN, OpenReason.FAILURES)]
    assert not a.allow() and not b.allow()
    clock.now = OPEN_FOR
    # Half-open: two probes for the whole pod, wherever they are sent from.
    assert a.allow() and b.allow()
    assert not a.allow() and not b.allow()


def test_forgetting_the_probes_of_a_dead_worker_lets_new_ones_go(memory: PodMemory) -> None:
    clock = FakeClock(0.0)
    a, b = shared_breakers(clock, memory, [])
    for _ in range(3):
        a.allow()
        a.record_failure(clock.now)
    clock.now = OPEN_FOR
    assert a.allow() and a.allow()  # worker a holds both probe slots, then dies
    assert not b.allow()
    parent = SharedCircuitBreaker(memory, SETTINGS, clock, noting([]))
    parent.forget_probes()
    assert b.allow()
    assert b.state is BreakerState.HALF_OPEN


def test_an_opening_anywhere_empties_every_workers_slow_call_window(memory: PodMemory) -> None:
    clock = FakeClock(0.0)
    seen: list[Transition] = []
    a, b = shared_breakers(clock, memory, seen, SLOW_SETTINGS)
    slow = -2 * SLOW
    for started in (slow, slow, 0.0):  # b's window: three calls of four, two of them slow
        assert b.allow()
        b.record_success(started)
    for _ in range(3):  # a opens the breaker on failures
        assert a.allow()
        a.record_failure(clock.now)
    clock.now = OPEN_FOR
    assert a.allow()
    a.record_success(clock.now)  # a fast probe
    assert a.allow()
    a.record_success(clock.now)  # and another: closed again
    assert b.state is BreakerState.CLOSED
    seen.clear()
    # Had b's window kept its three calls from before the opening, this slow call would fill it
    # with three slow of four and open the breaker again; it was emptied, so it is one of four.
    assert b.allow()
    b.record_success(clock.now + slow)
    assert seen == [] and b.state is BreakerState.CLOSED
    for started in (clock.now, clock.now):
        assert b.allow()
        b.record_success(started)
    assert seen == []
    assert b.allow()
    b.record_success(clock.now + slow)  # four calls, two slow: the rate of 0.5 is reached
    assert seen == [(BreakerState.CLOSED, BreakerState.OPEN, OpenReason.SLOW_CALLS)]
    assert not a.allow()


def test_a_reload_lowers_the_threshold_for_the_whole_pod(memory: PodMemory) -> None:
    clock = FakeClock(0.0)
    seen: list[Transition] = []
    a, b = shared_breakers(clock, memory, seen)  # threshold 3
    for worker in (a, b):
        assert worker.allow()
        worker.record_failure(clock.now)  # a run of two
    for worker in (a, b):
        worker.reconfigure(2, OPEN_FOR, 2)  # each worker applies the same reload
    assert seen == [] and a.state is BreakerState.CLOSED  # the reload itself is no evidence
    assert a.allow()
    a.record_failure(clock.now)  # the run was cut to one below the new threshold: this opens it
    assert seen == [(BreakerState.CLOSED, BreakerState.OPEN, OpenReason.FAILURES)]


def test_rate_limit_is_a_worker_share_and_the_limit_follows_a_reload(memory: PodMemory) -> None:
    clock = FakeClock(0.0)
    policies = SharedPolicies(memory, 0, clock)
    assert policies.rate_limit(SETTINGS) is None  # off
    limit = policies.rate_limit(dataclasses.replace(SETTINGS, rate_limit_rps=4.0))
    assert limit is not None
    assert [limit.check(b"p", b"") is None for _ in range(3)] == [True, True, False]  # 4/2
    in_flight = policies.limiter(dataclasses.replace(SETTINGS, max_in_flight=2))
    assert in_flight.try_acquire() and in_flight.try_acquire()
    in_flight.set_limit(3)
    assert in_flight.try_acquire() and not in_flight.try_acquire()


def holder(memory: PodMemory, then: str = "") -> subprocess.Popen[str]:
    """A second process that takes the pod's policy lock, says so, runs ``then`` and sleeps."""
    code = (
        "import sys, time\n"
        "from sidecar_proxy.workers.shared import PodMemory\n"
        "memory = PodMemory(int(sys.argv[1]), 2)\n"
        "memory.policy_lock.__enter__()\n"
        "print('locked', flush=True)\n"
        f"{then}\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(memory.fd)],
        pass_fds=(memory.fd,),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process


@pytest.fixture
def lock_held_elsewhere(memory: PodMemory) -> Iterator[tuple[PodMemory, subprocess.Popen[str]]]:
    """A second process holding the pod's policy lock until it is killed."""
    process = holder(memory)
    yield memory, process
    process.kill()
    process.wait()


def test_the_common_calls_never_wait_for_the_lock_and_a_dead_holder_frees_it(
    lock_held_elsewhere: tuple[PodMemory, subprocess.Popen[str]],
) -> None:
    memory, holder = lock_held_elsewhere
    clock = FakeClock(0.0)
    breaker, _ = shared_breakers(clock, memory, [])
    budget = SharedRetryBudget(memory, 0, SETTINGS, clock)
    limit = SharedConcurrencyLimit(memory, 0, 10)
    parent = SharedRetryBudget(memory, None, SETTINGS, clock)
    started = time.monotonic()
    for _ in range(100):  # what every request does while the breaker is closed
        assert breaker.allow()
        breaker.record_success(clock.now)
        budget.deposit()
        assert limit.try_acquire()
        limit.release()
        parent.book()  # the parent's timer skips a round rather than wait
    assert time.monotonic() - started < 1.0
    assert list(memory.booked) == [0, 0]  # nothing was booked while the lock was held

    failed = threading.Event()

    def fail() -> None:
        breaker.record_failure(clock.now)  # takes the lock: waits for the holder
        failed.set()

    thread = threading.Thread(target=fail, daemon=True)
    thread.start()
    assert not failed.wait(0.3)
    holder.kill()  # dies holding the lock: the kernel releases it
    assert failed.wait(5.0)


def test_budget_shared_by_two_workers_grants_what_one_budget_would(memory: PodMemory) -> None:
    # The failure storm of tests/unit/test_policy_budget.py, its requests and retries spread
    # over two workers, the parent booking deposits every BOOK_INTERVAL.
    ratio, floor, rate, seconds, ttl = 0.2, 10, 100, 30, 10.0
    settings = dataclasses.replace(
        SETTINGS,
        retry_budget_ratio=ratio,
        retry_budget_min_per_second=floor,
        retry_budget_ttl=ttl,
    )
    clock = FakeClock(50.0)
    parent = SharedRetryBudget(memory, None, settings, clock)
    parent.initialise()
    workers = [SharedRetryBudget(memory, w, settings, clock) for w in range(2)]
    admitted = 0
    booked_at = clock.now
    for i in range(rate * seconds):
        clock.now = 50.0 + i / rate
        if clock.now - booked_at >= BOOK_INTERVAL:
            parent.book()
            booked_at = clock.now
        workers[i % 2].deposit()
        for retry in range(3):
            admitted += workers[(i + retry) % 2].try_withdraw()
    allowed = ratio * rate * seconds + floor * seconds
    assert 0.98 * allowed <= admitted <= allowed + ratio * rate * BOOK_INTERVAL


def test_budget_deposits_are_booked_by_the_next_withdrawal_wherever_made(
    memory: PodMemory,
) -> None:
    clock = FakeClock(0.0)
    settings = dataclasses.replace(SETTINGS, retry_budget_ratio=0.5, retry_budget_min_per_second=0)
    SharedRetryBudget(memory, None, settings, clock).initialise()
    a, b = (SharedRetryBudget(memory, w, settings, clock) for w in range(2))
    plain = RetryBudget(0.5, 0, settings.retry_budget_ttl, clock)
    for budget in (a, a, b, b, plain, plain, plain, plain):
        budget.deposit()
    assert [b.try_withdraw() for _ in range(3)] == [plain.try_withdraw() for _ in range(3)]
    assert [a.try_withdraw() for _ in range(2)] == [False, False]


def test_the_locks_wait_where_process_owned_locks_would_report_a_false_deadlock(
    memory: PodMemory,
) -> None:
    # Process-owned POSIX locks failed this with EDEADLK: this process holds the log lock in one
    # thread and waits for the policy lock in another, while the other process, which holds the
    # policy lock, waits for the log lock. Nothing is deadlocked: the log lock is let go.
    got: list[str] = []
    with memory.log_lock:
        other = holder(memory, then="memory.log_lock.__enter__(); print('logged', flush=True)")
        time.sleep(0.2)  # the other process now waits for the log lock

        def take_policy_lock() -> None:
            with memory.policy_lock:
                got.append("policy")

        waiter = threading.Thread(target=take_policy_lock)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not got
    assert other.stdout is not None and other.stdout.readline() == "logged\n"
    other.kill()  # it dies holding the policy lock: the kernel lets it go
    other.wait()
    waiter.join(5)
    assert got == ["policy"]


def test_two_threads_of_one_process_exclude_each_other(memory: PodMemory) -> None:
    same_byte = PodLock(memory.fd, 0)  # another description of the policy lock's byte
    with memory.policy_lock:
        blocked = threading.Thread(target=same_byte.__enter__, daemon=True)
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive()
    blocked.join(5)
    assert not blocked.is_alive()
    same_byte.close()


def test_in_flight_limit_counts_every_worker(memory: PodMemory) -> None:
    a, b = (SharedConcurrencyLimit(memory, w, 3) for w in range(2))
    assert a.try_acquire() and b.try_acquire() and a.try_acquire()
    assert not b.try_acquire() and not a.try_acquire()
    assert a.in_flight == b.in_flight == 3
    b.release()
    assert a.try_acquire()
    b_unlimited = SharedConcurrencyLimit(memory, 1, 0)
    assert all(b_unlimited.try_acquire() for _ in range(10))
    with pytest.raises(RuntimeError):
        for _ in range(12):
            b.release()


def test_spool_total_is_the_pods_and_a_dead_workers_spools_are_given_back(
    memory: PodMemory, tmp_path: Path
) -> None:
    # Worker 1 maps the region as a second process does: its own mapping of the same memfd.
    other = PodMemory(os.dup(memory.fd), memory.workers)
    try:
        total = dataclasses.replace(SETTINGS, retry_spool_max_total=100)
        a = SharedPolicies(memory, 0, time.monotonic).spool_quota(total)
        b = SharedPolicies(other, 1, time.monotonic).spool_quota(total)
        assert a.try_take(60)
        assert not b.try_take(41)  # one process of its own would have had room for 100
        assert b.try_take(40) and a.in_use == b.in_use == 100
        assert not a.try_take(1)
        with pytest.raises(RuntimeError):
            b.give_back(41)  # more than this worker took
        memory.worker_gone(1)  # its spool files went with its descriptors
        assert a.in_use == 60 and a.try_take(40)
        # A spool area over the pod's quota: what the data path sees.
        area = SpoolArea(str(tmp_path), 50, b, time.monotonic, lambda exc: None)
        assert area.start([b"x"]) is None and area.in_use == 100
    finally:
        other.close()


def test_a_heartbeat_written_by_one_process_is_read_by_the_parent(memory: PodMemory) -> None:
    child = PodMemory(os.dup(memory.fd), memory.workers)
    try:
        assert list(memory.heartbeats) == [0.0, 0.0]  # no worker has beaten yet
        child.beat(1, 1234.5)
        assert list(memory.heartbeats) == [0.0, 1234.5]
        memory.worker_gone(1)  # its replacement has not beaten yet
        assert list(child.heartbeats) == [0.0, 0.0]
    finally:
        child.close()
