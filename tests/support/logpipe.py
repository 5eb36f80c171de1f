"""An access log written into a pipe the test reads back, line by line as JSON."""

from __future__ import annotations

import os
import time

import orjson


def read_log(fd: int, want: int, timeout: float = 3.0) -> list[dict[str, object]]:
    """Read the non-blocking pipe ``fd`` until ``want`` lines have come, or ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < want and time.monotonic() < deadline:
        try:
            data += os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.02)
    return [orjson.loads(line) for line in data.splitlines()]
