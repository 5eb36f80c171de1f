"""Reading the access log a proxy under test writes to a pipe."""

from __future__ import annotations

import os
import time

import orjson


def read_log(fd: int, want: int, timeout: float = 3.0) -> list[dict[str, object]]:
    """At least ``want`` lines from the non-blocking pipe ``fd``, parsed (fewer on timeout)."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < want and time.monotonic() < deadline:
        try:
            data += os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.02)
    return [orjson.loads(line) for line in data.splitlines()]
