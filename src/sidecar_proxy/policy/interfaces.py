"""What the data path asks of each policy it shares across requests, as interfaces.

One process uses the plain classes of this package (:class:`~.breaker.CircuitBreaker`,
:class:`~.budget.RetryBudget`, :class:`~.shedding.ConcurrencyLimit`,
:class:`~.allowance.Allowance`). Several worker processes that must behave as one sidecar use
implementations that keep the state in memory the workers share
(``sidecar_proxy.workers.shared``), built on these same classes. The data path sees only
these interfaces, so it is the same code either way; which one it gets is decided where the
context is built.
"""

from __future__ import annotations

from typing import Protocol

from sidecar_proxy.policy.breaker import BreakerState


class Breaker(Protocol):
    """:class:`~.breaker.CircuitBreaker`'s contract with the data path."""

    @property
    def state(self) -> BreakerState: ...

    def allow(self) -> bool: ...

    def record_success(self, started: float) -> None: ...

    def record_failure(self, started: float) -> None: ...

    def release(self) -> None: ...

    def retry_after(self) -> float: ...

    def reconfigure(self, threshold: int, open_for: float, half_open_probes: int) -> None: ...


class Budget(Protocol):
    """:class:`~.budget.RetryBudget`'s contract with the data path and the retry policy."""

    def deposit(self) -> None: ...

    def try_withdraw(self) -> bool: ...


class Limiter(Protocol):
    """:class:`~.shedding.ConcurrencyLimit`'s contract with the data path."""

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...

    def set_limit(self, limit: int) -> None: ...

    @property
    def in_flight(self) -> int: ...


class Quota(Protocol):
    """:class:`~.allowance.Allowance`'s contract with the request-body spools."""

    @property
    def limit(self) -> int: ...

    @property
    def in_use(self) -> int: ...

    def try_take(self, amount: int) -> bool: ...

    def give_back(self, amount: int) -> None: ...
