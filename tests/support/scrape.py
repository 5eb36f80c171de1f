"""Reading a proxy's metrics the way Prometheus does: exposition text, parsed back.

Going through ``generate_latest`` rather than the metric objects checks what a scrape would
actually see (names, labels, gauge values at that instant), not what the code meant to set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def samples(registry: CollectorRegistry, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample called ``name`` (``..._total`` for counters), keyed by its label set."""
    text = generate_latest(registry).decode()
    out: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[frozenset(sample.labels.items())] = float(sample.value)
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of the one sample ``name{labels}``; 0 when no such series is exposed."""
    want = frozenset(labels.items())
    return samples(registry, name).get(want, 0.0)


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of every ``name`` sample whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for k, v in samples(registry, name).items() if want <= k)


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0, step: float = 0.005) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; returns its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(step)
    return True
