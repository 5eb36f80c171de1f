"""Pod-wide policies for worker processes: one breaker, one retry budget, one in-flight limit,
one bound on the disk the request-body spools take; and each worker's heartbeat.

The state lives in one small region of shared memory: a ``memfd`` that the parent creates and
every worker maps ``MAP_SHARED`` (it is passed to each worker at start, so a restarted worker
maps the same region). The logic stays in the pure classes of :mod:`sidecar_proxy.policy`; each
class here keeps a private instance of one, loads the shared state into it, makes the call and
stores the state back, all under one pod-wide lock. The common calls never take the lock:

* Circuit breaker. :meth:`SharedCircuitBreaker.allow` while closed, and while open before the
  probe time, reads one or two words and returns (the state is one aligned 8-byte word, read in
  one load); a success while closed with no failures counted returns at once too, unless the
  slow-call rule is on (then every verdict is a call for the window, and takes the lock). These
  are exactly the calls in which :class:`~sidecar_proxy.policy.breaker.CircuitBreaker` changes
  nothing (tests/unit/test_workers_shared.py checks the equivalence over random call
  sequences), so the lock-free path decides what the locked one would. Failures, half-open
  probes and transitions take the lock: the breaker is exactly one breaker for the pod. Once
  one worker opens it, the next ``allow()`` of every worker reads "open": rejection is immediate.
  The one part that is not shared is the slow-call window: each worker judges its own calls
  (see :class:`SharedCircuitBreaker`).
* Retry budget. A deposit (every request) adds 1 to this worker's own counter in the region, a
  plain store only this worker makes. A withdrawal (a retry) takes the lock, books every
  worker's deposits made since the last booking into the shared ring, and asks the budget. The
  parent books them every :data:`BOOK_INTERVAL` as well (a round that finds the lock taken is
  skipped rather than waited for: see :meth:`SharedRetryBudget.book`), so a deposit is booked
  at most that late, twice that after a skipped round; it then expires that much later than in
  one process. The error bound: the pod may grant at most ``ratio`` times the requests of one
  ``BOOK_INTERVAL`` (two, after a skipped round) more than the single-process rule; it never
  refuses a retry the rule would grant.
* In-flight limit. Each worker counts its own requests in flight in its own word; a worker
  admits a request when the sum over all workers is under the limit. The check and the
  increment are two steps, so workers admitting at the same instant can each pass one check
  the others have not seen: at most ``limit + workers - 1`` requests are in flight, never more.
  A worker's count is its own to write, so no update is ever lost.
* Spool total (``RETRY_SPOOL_MAX_TOTAL``): the same rule in bytes. Each worker counts the bytes of
  its open spools in its own word, and takes a chunk when the sum over all workers leaves room
  for it. Workers that take at the same instant can each pass one check the others have not
  seen: the disk holds at most ``max_total`` plus one chunk per other worker (a read of the
  client's body, 64 KiB at most by default) more, never more.
* Heartbeats (``WORKER_HEARTBEAT_TIMEOUT``): one float per worker, its loop's last stamp of the
  monotonic clock, which only that worker writes and the parent reads
  (:mod:`sidecar_proxy.policy.liveness`).
* Rate limit (``RATE_LIMIT_RPS``): not in the region. Each worker keeps its own buckets for
  ``1/workers`` of the rate and of the burst (rounded up), so a request costs no lock. The pod
  never admits more than the rate plus ``workers - 1`` requests of burst rounding; it admits
  less when traffic is spread unevenly over the workers: a client whose requests all reach one
  worker (one keep-alive connection) gets that worker's share.

The lock is a lock on one byte of the memfd (:class:`PodLock`). It costs two system calls (2 to
4 us measured here, against ~0.1 us for a semaphore), which only the rare paths above pay, and
unlike a semaphore the kernel releases it when its holder dies: a worker killed while holding it
cannot wedge the pod. A second byte of the same memfd is the access log's write lock, and a
third the lock of the lines on stderr (:func:`sidecar_proxy.observe.logs.configure_logging`).

When a worker dies, the parent zeroes its in-flight count (those requests are gone), its spooled
bytes (its spool files had no name: they went with its descriptors) and its heartbeat, and, if
the breaker is half-open, frees the probe slots (the dead worker's probes will never report).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
from array import array
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from sidecar_proxy.config import Settings
from sidecar_proxy.policy.breaker import BreakerFields, BreakerState, OpenReason, Transition
from sidecar_proxy.policy.budget import BUDGET_FIELDS
from sidecar_proxy.policy.clock import Clock
from sidecar_proxy.policy.configured import new_breaker, new_budget, new_rate_limit
from sidecar_proxy.policy.interfaces import Breaker, Budget, Limiter, Quota
from sidecar_proxy.policy.ratelimit import RateLimit

T = TypeVar("T")

# How often the parent books the workers' deposits into the shared retry budget.
BOOK_INTERVAL = 0.05

_WORD = 8
# state, failures, probes, successes, slow probes, and how often it has opened (so each worker
# knows when its slow-call window is out of date); probe_at is the one float
_BREAKER_INTS = 6
_STATE, _FAILURES, _PROBES, _SUCCESSES, _SLOW_PROBES, _OPENINGS = range(_BREAKER_INTS)
_STATES = tuple(BreakerState)
_CLOSED, _OPEN, _HALF_OPEN = (int(s) for s in _STATES)
_POLICY_LOCK, _LOG_LOCK, _STDERR_LOCK = 0, 1, 2  # byte offsets locked in the memfd
# struct flock on 64-bit Linux: l_type, l_whence (shorts), l_start, l_len (off_t), l_pid (0 for
# an OFD lock), padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")


class PodLock:
    """An exclusive lock on one byte of the pod's memfd, shared by every process that maps it:
    ``with lock: ...``.

    Each ``PodLock`` opens the memfd afresh (through ``/proc/self/fd``), so it has an open file
    description of its own, and takes open-file-description locks (``F_OFD_SETLKW``, Linux
    3.15+). Those exclude every other description, in this process or another, and the kernel
    releases them when their holder dies. Classic POSIX record locks (``lockf``) belong to the
    whole process instead, and the kernel's deadlock detector cannot tell a process's threads
    apart: one worker's event loop waiting for the policy lock held by a second worker, whose
    access-log thread waits for the log lock that the first worker's access-log thread holds,
    made ``lockf`` fail with EDEADLK although nothing was deadlocked. OFD locks have no such
    detector.
    """

    __slots__ = ("_fd", "_lock", "_unlock")

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        self._lock = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        self._unlock = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0)

    def __enter__(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, self._lock)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it; ``False`` at once if someone does. A ``True``
        must be followed by :meth:`release`."""
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, self._lock)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def release(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, self._unlock)

    def close(self) -> None:
        os.close(self._fd)


class PodMemory:
    """The shared region and its lay-out: 8-byte integers, then 8-byte floats.

    Integers: ``breaker`` (its counts), ``budget`` (the retry budget's fields), and one word per
    worker in each of ``deposited`` (requests it has seen: the budget deposits it made),
    ``booked`` (how many of those are in the budget), ``in_flight`` and ``spooled`` (bytes in
    its open spools). Floats: the breaker's ``probe_at``, and ``heartbeats``, one per worker
    (0 until its loop first beats).
    """

    def __init__(self, fd: int, workers: int) -> None:
        ints = _BREAKER_INTS + BUDGET_FIELDS + 4 * workers
        size = (ints + 1 + workers) * _WORD
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)  # a fresh memfd: the kernel fills it with zeros
        self.fd = fd
        self.workers = workers
        self._map = mmap.mmap(fd, size)
        words = memoryview(self._map)[: ints * _WORD].cast("q")
        at = 0

        def take(count: int) -> memoryview:
            nonlocal at
            view = words[at : at + count]
            at += count
            return view

        self.breaker = take(_BREAKER_INTS)
        self.budget = take(BUDGET_FIELDS)
        self.deposited = take(workers)
        self.booked = take(workers)
        self.in_flight = take(workers)
        self.spooled = take(workers)
        floats = memoryview(self._map)[ints * _WORD :].cast("d")
        self.probe_at = floats[:1]
        self.heartbeats = floats[1:]
        self._views: list[memoryview[int] | memoryview[float]] = [
            *(words, self.breaker, self.budget, self.deposited, self.booked, self.in_flight),
            *(self.spooled, floats, self.probe_at, self.heartbeats),
        ]
        self.policy_lock = PodLock(fd, _POLICY_LOCK)
        self.log_lock = PodLock(fd, _LOG_LOCK)
        self.stderr_lock = PodLock(fd, _STDERR_LOCK)

    @classmethod
    def create(cls, workers: int) -> PodMemory:
        """A new region (in the parent); it is passed to the workers by its :attr:`fd`."""
        return cls(os.memfd_create("sidecar-pod", flags=0), workers)

    def close(self) -> None:
        """Unmap the region and close its descriptors (the parent, when the pod stops)."""
        for view in self._views:
            view.release()
        self._map.close()
        self.policy_lock.close()
        self.log_lock.close()
        self.stderr_lock.close()
        os.close(self.fd)

    def worker_gone(self, worker: int) -> None:
        """Worker ``worker`` has exited: the requests it counted in flight and its spools went
        with it, and its replacement has not beaten yet."""
        self.in_flight[worker] = 0
        self.spooled[worker] = 0
        self.heartbeats[worker] = 0.0

    def beat(self, worker: int, now: float) -> None:
        """Worker ``worker``'s loop ran at ``now`` (its heartbeat)."""
        self.heartbeats[worker] = now

    def read_breaker(self) -> BreakerFields:
        b = self.breaker
        return (
            b[_STATE],
            b[_FAILURES],
            self.probe_at[0],
            b[_PROBES],
            b[_SUCCESSES],
            b[_SLOW_PROBES],
        )

    def write_breaker(self, fields: BreakerFields) -> None:
        b = self.breaker
        b[_STATE], b[_FAILURES], self.probe_at[0], b[_PROBES], b[_SUCCESSES], b[_SLOW_PROBES] = (
            fields
        )

    @property
    def breaker_state(self) -> BreakerState:
        return _STATES[self.breaker[_STATE]]


class SharedCircuitBreaker:
    """One :class:`~sidecar_proxy.policy.breaker.CircuitBreaker` for every worker of the pod.

    ``on_transition`` is called after the lock is released, in the worker that made the
    transition, once per transition for the whole pod.

    The slow-call window (when ``CIRCUIT_BREAKER_SLOW_CALL_DURATION`` is on) stays in each
    worker: it is not among the shared fields, and each worker judges its own last ``window``
    calls (docs/resilience.md gives the bound). An opening anywhere empties every worker's
    window, as it empties the one window of a single process: each worker notices at its next
    verdict, by the count of openings in the region. With the rule on, every verdict takes the
    lock, since every one of them is a call for the window.
    """

    __slots__ = (
        "_breaker",
        "_clock",
        "_memory",
        "_on_transition",
        "_openings",
        "_probe_at",
        "_seen",
        "_timed",
        "_words",
    )

    def __init__(
        self, memory: PodMemory, settings: Settings, clock: Clock, on_transition: Transition
    ) -> None:
        self._memory = memory
        self._words = memory.breaker  # the views the lock-free paths read, one load away
        self._probe_at = memory.probe_at
        self._clock = clock
        self._on_transition = on_transition
        self._seen: list[tuple[BreakerState, BreakerState, OpenReason | None]] = []
        self._breaker = new_breaker(settings, clock, self._note)
        self._timed = self._breaker.judges_speed
        self._openings = memory.breaker[_OPENINGS]  # as of this worker's window

    @property
    def state(self) -> BreakerState:
        return self._memory.breaker_state

    def allow(self) -> bool:
        state = self._words[_STATE]
        if state == _CLOSED:
            return True
        if state == _OPEN and self._clock() < self._probe_at[0]:
            return False
        return self._locked(self._breaker.allow)

    def record_success(self, started: float) -> None:
        words = self._words
        if words[_STATE] == _CLOSED and not words[_FAILURES] and not self._timed:
            return
        self._locked(self._breaker.record_success, started)

    def record_failure(self, started: float) -> None:
        if self._words[_STATE] != _OPEN:
            self._locked(self._breaker.record_failure, started)

    def release(self) -> None:
        if self._words[_STATE] == _HALF_OPEN:
            self._locked(self._breaker.release)

    def retry_after(self) -> float:
        # Read without the lock: a write in progress elsewhere can only skew this one answer's
        # Retry-After, and the 503 it goes on is cheap to send.
        self._breaker.import_fields(self._memory.read_breaker())
        return self._breaker.retry_after()

    def reconfigure(self, threshold: int, open_for: float, half_open_probes: int) -> None:
        """A reload: every worker applies it to the shared state, each with the same result
        (a run of failures past a lowered threshold is cut to it once, and stays so)."""
        self._locked(self._breaker.reconfigure, threshold, open_for, half_open_probes)

    def forget_probes(self) -> None:
        """A worker died: its probes will never report (see ``CircuitBreaker.forget_probes``)."""
        self._locked(self._breaker.forget_probes)

    def _locked(self, call: Callable[..., T], *args: object) -> T:
        memory = self._memory
        words = self._words
        breaker = self._breaker
        with memory.policy_lock:
            if words[_OPENINGS] != self._openings:
                breaker.forget_calls()  # it opened elsewhere since this window last counted
            breaker.import_fields(memory.read_breaker())
            result = call(*args)
            memory.write_breaker(breaker.export_fields())
            seen = self._seen
            if any(new is BreakerState.OPEN for _, new, _ in seen):
                words[_OPENINGS] += 1  # its own window was emptied by the opening itself
            self._openings = words[_OPENINGS]
        # Outside the lock: the callback logs, and a slow stderr must not hold up the pod.
        while seen:
            self._on_transition(*seen.pop(0))
        return result

    def _note(self, old: BreakerState, new: BreakerState, reason: OpenReason | None) -> None:
        self._seen.append((old, new, reason))


class SharedRetryBudget:
    """One :class:`~sidecar_proxy.policy.budget.RetryBudget` for every worker of the pod.

    ``worker`` is the index of this worker's deposit counter; the parent, which only books,
    passes ``None``.
    """

    __slots__ = ("_budget", "_deposited", "_memory", "_worker")

    def __init__(
        self, memory: PodMemory, worker: int | None, settings: Settings, clock: Clock
    ) -> None:
        self._memory = memory
        self._worker = worker
        self._deposited = memory.deposited
        self._budget = new_budget(settings, clock)

    def initialise(self) -> None:
        """Write a fresh budget's state (its reserve) into the region: the parent, at start-up
        and when a reload changes the budget's settings (it then starts afresh, as in one
        process)."""
        memory = self._memory
        with memory.policy_lock:
            memory.budget[:] = array("q", self._budget.export_fields())

    def deposit(self) -> None:
        assert self._worker is not None, "the parent makes no requests"
        self._deposited[self._worker] += 1

    def try_withdraw(self) -> bool:
        return self._locked(self._budget.try_withdraw)

    def book(self) -> None:
        """Book the deposits the workers made since the last booking (the parent's timer).

        Skipped while someone else holds the lock: the parent's loop must never wait for it.
        A worker stopped while holding it (SIGSTOP) would otherwise stop the parent too, and
        with it the heartbeat watch that kills that worker and so frees the lock. A skipped
        round is booked by the next one, or by the holder's own withdrawal."""
        lock = self._memory.policy_lock
        if lock.try_acquire():
            try:
                self._booked(_nothing)
            finally:
                lock.release()

    def _locked(self, call: Callable[[], T]) -> T:
        with self._memory.policy_lock:
            return self._booked(call)

    def _booked(self, call: Callable[[], T]) -> T:
        """``call`` on the region's budget, with every deposit booked; under the lock."""
        memory = self._memory
        budget = self._budget
        budget.import_fields(tuple(memory.budget))
        requests = 0
        deposited, booked = memory.deposited, memory.booked
        for worker in range(memory.workers):
            made = deposited[worker]  # read once: the worker may add to it meanwhile
            requests += made - booked[worker]
            booked[worker] = made
        if requests:
            budget.deposit(requests)
        result = call()
        memory.budget[:] = array("q", budget.export_fields())
        return result


class SharedAllowance:
    """At most ``limit`` units taken over every worker at once (0 = unlimited), each worker's
    in its own word of ``counts``, within the bound in the module docstring."""

    __slots__ = ("_counts", "_limit", "_worker")

    def __init__(self, counts: memoryview[int], worker: int, limit: int) -> None:
        self._counts = counts
        self._worker = worker
        self._limit = 0
        self.set_limit(limit)

    def set_limit(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 (0 = unlimited), not {limit!r}")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return sum(self._counts)

    def try_take(self, amount: int) -> bool:
        counts = self._counts
        if self._limit and sum(counts) + amount > self._limit:
            return False
        counts[self._worker] += amount
        return True

    def give_back(self, amount: int) -> None:
        counts = self._counts
        if amount > counts[self._worker]:
            raise RuntimeError(f"{type(self).__name__}: gave back more than this worker took")
        counts[self._worker] -= amount


class SharedConcurrencyLimit(SharedAllowance):
    """At most ``limit`` requests in flight over every worker (0 = unlimited): an allowance of
    one place per request."""

    __slots__ = ()

    def __init__(self, memory: PodMemory, worker: int, limit: int) -> None:
        super().__init__(memory.in_flight, worker, limit)

    def try_acquire(self) -> bool:
        return self.try_take(1)

    def release(self) -> None:
        self.give_back(1)

    @property
    def in_flight(self) -> int:
        return self.in_use


class SharedPolicies:
    """The :class:`~sidecar_proxy.policy.configured.Policies` of worker ``worker``. The rate
    limit is not shared: each worker keeps buckets of its own for an equal share of it (see
    :class:`~sidecar_proxy.policy.ratelimit.RateLimit`'s ``shares``)."""

    __slots__ = ("_clock", "_memory", "_worker")

    def __init__(self, memory: PodMemory, worker: int, clock: Clock) -> None:
        self._memory = memory
        self._worker = worker
        self._clock = clock

    def breaker(self, settings: Settings, on_transition: Transition) -> Breaker:
        return SharedCircuitBreaker(self._memory, settings, self._clock, on_transition)

    def budget(self, settings: Settings) -> Budget:
        return SharedRetryBudget(self._memory, self._worker, settings, self._clock)

    def limiter(self, settings: Settings) -> Limiter:
        return SharedConcurrencyLimit(self._memory, self._worker, settings.max_in_flight)

    def rate_limit(self, settings: Settings) -> RateLimit | None:
        return new_rate_limit(settings, self._clock, shares=self._memory.workers)

    def spool_quota(self, settings: Settings) -> Quota:
        return SharedAllowance(self._memory.spooled, self._worker, settings.retry_spool_max_total)


def _nothing() -> None:
    """The call of a booking that only books."""
