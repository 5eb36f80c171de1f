"""JSON lifecycle logs on stderr, and the one timestamp format all our log lines share.

Lifecycle lines (start-up, shutdown, breaker transitions, unexpected errors) go through stdlib
:mod:`logging` as one JSON object per line on **stderr**: ``time``, ``level``, ``logger``,
``message``, every ``extra=`` field, and ``exc`` with the formatted traceback. stdout belongs to
the access log alone, whose writer thread emits large batched writes; keeping the two streams
apart is what guarantees lifecycle lines never land in the middle of a batch.

These lines are rare, so they are written synchronously by a ``StreamHandler``; only the
per-request access log needs the non-blocking writer in :mod:`.accesslog`.

Several worker processes (``WORKERS`` > 1) and their parent share one stderr, in Kubernetes a
pipe to the container runtime. A pipe keeps a ``write(2)`` whole only up to ``PIPE_BUF`` (4 KiB):
a longer line (a traceback, a hook's message) written while the pipe is full goes in pieces as
the reader drains it, and another process's line can land between them. So each process is
given the pod's ``exclusive`` lock and holds it for the write of each line
(:class:`ExclusiveStream`).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import AbstractContextManager
from typing import Any, Final, TextIO

import orjson

_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))


class UtcTimestamps:
    """RFC 3339 UTC timestamps with milliseconds, e.g. ``2024-05-01T12:00:00.123Z``.

    ``time.strftime`` runs once per second of wall time; within the second a timestamp is one
    concatenation with a precomputed ``.mmmZ`` suffix (~0.2 us, against ~1.5 us for
    ``datetime.isoformat``). The cache is a single tuple so that a thread reading it while another
    replaces it never pairs one second's text with another second's number.
    """

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached = (-1, "")

    def format(self, wall: float) -> str:
        second = int(wall)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        return prefix + _MILLIS[int((wall - second) * 1000)]


# Attributes every LogRecord has (plus the two that Formatter.format adds, possibly in another
# handler's formatter); anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset((*logging.makeLogRecord({}).__dict__, "message", "asctime"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; values orjson cannot encode are logged as ``str(value)``."""

    def __init__(self) -> None:
        super().__init__()
        self._timestamps = UtcTimestamps()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._timestamps.format(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES}
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry, default=str).decode()


class ExclusiveStream:
    """``stream`` with each write made, and flushed, under ``exclusive``: a lock the other
    processes writing to the same stream hold too.

    The handler writes each record in one ``write()`` call (its message and newline together),
    and its own lock, held around that, orders this process's threads. The stream is wrapped
    rather than the handler subclassed: a compiled subclass of ``logging.Handler`` cannot be
    weakly referenced, which ``logging`` does to every handler.
    """

    __slots__ = ("_exclusive", "_stream")

    def __init__(self, stream: TextIO, exclusive: AbstractContextManager[object]) -> None:
        self._stream = stream
        self._exclusive = exclusive

    def write(self, text: str) -> int:
        stream = self._stream
        with self._exclusive:
            written = stream.write(text)
            stream.flush()
        return written

    def flush(self) -> None:
        self._stream.flush()


def configure_logging(level: str, exclusive: AbstractContextManager[object] | None = None) -> None:
    """Send every log record in the process to stderr as JSON, at ``level`` and above, each
    line written under ``exclusive`` when other processes share the stream (module docstring).

    The root logger is configured, not just ``sidecar_proxy``, so that asyncio's "exception was
    never retrieved" and warnings from libraries come out as JSON too. Our own loggers are named
    ``sidecar_proxy.<module>``. Calling it again replaces the handler it installed before and
    leaves other handlers (a test runner's capture, say) alone.
    """
    set_log_level(level)  # first: an unknown level changes nothing
    stream = sys.stderr if exclusive is None else ExclusiveStream(sys.stderr, exclusive)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)


def set_log_level(level: str) -> None:
    """Log records at ``level`` and above, from now on (also what a reload calls)."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    logging.getLogger().setLevel(numeric)
