"""The one time source every policy reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

Clock: TypeAlias = Callable[[], float]
"""Monotonic seconds. The proxy passes ``loop.time``; tests pass a fake clock they advance by hand,
so every time-dependent rule can be checked at its exact boundary without sleeping."""
