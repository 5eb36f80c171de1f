"""A disk copy of a request body too large to keep in memory for a replay.

A replay-safe request (an idempotent method, or an ``Idempotency-Key``) can be retried only
while the proxy still holds its whole body. Bodies up to ``RETRY_BUFFER_LIMIT`` are held in
memory; a larger one is spooled: as it streams to the app, it is also written to a file, up to
``limit`` bytes, so a large PUT or a keyed upload can still go again after a reset or a 503.

* **The file never outlives its exchange.** It is created without a name (``O_TMPFILE``) or
  unlinked the moment it is made (filesystems without ``O_TMPFILE``), so the open descriptor is
  its only reference: closing it, or the process dying however it dies, returns the space.
  Nothing is left in the directory to clean up after a crash, and nothing can be opened there
  by name.
* **Bounded.** One body holds at most ``limit`` bytes; all the spools together at most what the
  ``quota`` allows (``RETRY_SPOOL_MAX_TOTAL``: the process's spools, or with several workers the
  whole pod's, since they share the disk). Past either bound the copy is dropped at once and the
  request streams on without one, as an unspooled large body does.
* **A disk error is never a failed request.** Creating, writing or reading a spool file that
  fails (disk full, quota, a read-only or missing directory, an I/O error) drops the copy, calls
  ``on_error`` (the metric) and logs a warning, at most one a minute for the same error, so a
  full disk under load does not flood the log. The request carries on: streamed on without a
  copy, or, when the copy fails while being read back for a retry, not retried.

I/O is plain synchronous ``os.write`` and ``os.pread`` on the event loop: writes land in the page
cache (a 64 KiB chunk costs tens of microseconds), the way nginx buffers a large request body
to ``client_body_temp_path``. The directory must therefore be a local disk, a Kubernetes
``emptyDir`` on the node's disk; an ``emptyDir`` with ``medium: Memory`` is RAM and defeats the
purpose.

Used by the event loop thread only; nothing here is shared with another thread.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterable

from sidecar_proxy.policy.clock import Clock
from sidecar_proxy.policy.interfaces import Quota

log = logging.getLogger("sidecar_proxy.spool")

WARN_INTERVAL = 60.0  # seconds between two warnings for the same error


def spool_directory(configured: str) -> str:
    """Where spool files go: RETRY_SPOOL_DIR, or the system temp dir when it is empty."""
    return configured or tempfile.gettempdir()


def open_unlinked(directory: str) -> int:
    """A read-write descriptor on a new, nameless file in ``directory``.

    ``O_TMPFILE`` where the filesystem supports it; otherwise a ``mkstemp`` file unlinked at
    once (the same fallback as :func:`tempfile.TemporaryFile`).
    """
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        # EOPNOTSUPP: the filesystem has no O_TMPFILE; EISDIR: a kernel older than 3.11 read
        # the flag as O_DIRECTORY. Anything else (ENOENT, EACCES, EROFS...) is the directory's.
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise
    fd, name = tempfile.mkstemp(prefix="sidecar-spool-", dir=directory)
    try:
        os.unlink(name)
    except OSError:
        os.close(fd)
        raise
    return fd


class SpoolArea:
    """The spool directory and the bound on all spools together (``quota``); one per proxy.

    ``on_error(exc)`` is called for every disk error (the metric); ``open_file(directory)``
    makes a spool file's descriptor (tests give it a file that fails on purpose).
    """

    __slots__ = (
        "_clock",
        "_directory",
        "_on_error",
        "_open_file",
        "_quota",
        "_warned",
        "limit",
    )

    def __init__(
        self,
        directory: str,
        limit: int,
        quota: Quota,
        clock: Clock,
        on_error: Callable[[OSError], None],
        *,
        open_file: Callable[[str], int] = open_unlinked,
    ) -> None:
        if not 0 < limit <= (quota.limit or limit):
            raise ValueError(f"spool limit must be > 0 and at most the quota's, not {limit!r}")
        self._directory = directory
        self.limit = limit
        self._quota = quota
        self._clock = clock
        self._on_error = on_error
        self._open_file = open_file
        self._warned: dict[tuple[str, int | None], float] = {}  # (what, errno) -> when

    @property
    def in_use(self) -> int:
        """Bytes in all open spools (with several workers, the pod's)."""
        return self._quota.in_use

    def start(self, held: Iterable[bytes]) -> Spool | None:
        """A spool for a body that has outgrown the memory buffer, holding ``held`` (the body
        so far); ``None`` when it cannot have one (over a bound, or the disk failed)."""
        try:
            fd = self._open_file(self._directory)
        except OSError as exc:
            self.failed("create", exc)
            return None
        spool = Spool(self, fd)
        for data in held:
            if not spool.append(data):
                return None
        return spool

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes of the total for a spool; ``False`` when they would exceed it."""
        return self._quota.try_take(size)

    def release(self, size: int) -> None:
        self._quota.give_back(size)

    def failed(self, what: str, exc: OSError) -> None:
        """A disk error while ``what`` (create, write, read) a spool: count it, and warn unless
        the same error was warned about within the last :data:`WARN_INTERVAL` seconds."""
        self._on_error(exc)
        key = (what, exc.errno)
        now = self._clock()
        last = self._warned.get(key)
        if last is not None and now - last < WARN_INTERVAL:
            return
        self._warned[key] = now
        log.warning(
            "request body spool failed; requests go on without a replay copy",
            extra={
                "action": what,
                "error": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                "detail": exc.strerror or str(exc),
                "directory": self._directory,
            },
        )


class Spool:
    """One body's copy on disk. :meth:`close` it when the exchange ends, whatever happened."""

    __slots__ = ("_area", "_fd", "size")

    def __init__(self, area: SpoolArea, fd: int) -> None:
        self._area = area
        self._fd = fd  # -1 once closed
        self.size = 0  # bytes written (and reserved from the area's total)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def append(self, data: bytes) -> bool:
        """Add the next bytes of the body; ``False`` when the copy has been dropped (over a
        bound, or a write failed) and the spool closed."""
        if self.closed:
            return False
        area = self._area
        n = len(data)
        if self.size + n > area.limit or not area.reserve(n):
            self.close()
            return False
        self.size += n
        view = memoryview(data)
        try:
            while view:
                # A regular file takes a whole write unless the disk fills up mid-way, which
                # raises on the next round; the loop is for the partial write before that.
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.close()
            area.failed("write", exc)
            return False
        return True

    def read(self, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes of the body from ``offset``, for a replay; ``None`` when reading
        failed (the copy is then dropped and the spool closed)."""
        if self.closed:
            return None
        try:
            return os.pread(self._fd, max(0, min(size, self.size - offset)), offset)
        except OSError as exc:
            self.close()
            self._area.failed("read", exc)
            return None

    def close(self) -> None:
        """Give the space back; the file goes with the descriptor. Safe to call again."""
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        self._area.release(self.size)
        self.size = 0
        os.close(fd)
