"""Live reload: watch the TLS files, rebuild the context when they change, keep the last good one.

Kubernetes updates a mounted Secret by writing the new files into a fresh directory and swapping
the ``..data`` symlink in one ``rename(2)``; ``tls.crt`` is a symlink through ``..data``. inotify
on the file sees nothing (the file itself never changes), so the files are polled instead:
``os.stat`` follows the symlinks, and the swap shows up as a new inode. Comparing (device, inode,
size, mtime) of every file catches that, an in-place rewrite and a ``mv`` over the file alike. A
poll is a few ``stat`` calls a second (:data:`POLL_SECONDS`), so new handshakes use new material
within about a second of the swap.

A change that does not load (a half-written file, a key that does not match the certificate)
leaves the old context in service; the failure is reported once per state of the files, not on
every poll, and the next change is tried again. A load during which the files changed again is
discarded and retried on the next poll: the key and the certificate must come from one state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from sidecar_proxy.tls.material import Loaded, MaterialError

POLL_SECONDS = 1.0

Fingerprint = tuple[tuple[int, int, int, int] | str, ...]


def fingerprint(paths: tuple[str, ...]) -> Fingerprint:
    """What identifies the current content of each file, or why it cannot be read."""
    out: list[tuple[int, int, int, int] | str] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            out.append(exc.strerror or str(exc))
        else:
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one poll did: nothing, a reload (``loaded``), or a failed one (``error``)."""

    loaded: Loaded | None = None
    error: str | None = None


UNCHANGED = Outcome()


class Reloader:
    """One set of files and the context built from them; the first load raises."""

    __slots__ = ("_failed", "_load", "_paths", "_seen", "current")

    def __init__(self, paths: tuple[str, ...], load: Callable[[], Loaded]) -> None:
        self._paths = paths
        self._load = load
        self._seen = fingerprint(paths)
        self._failed: Fingerprint | None = None
        self.current = load()

    @property
    def failing(self) -> bool:
        """The files on disk were rejected; the material in service is older than them."""
        return self._failed is not None

    def poll(self) -> Outcome:
        before = fingerprint(self._paths)
        if before in (self._seen, self._failed):
            return UNCHANGED
        try:
            loaded = self._load()
        except MaterialError as exc:
            if fingerprint(self._paths) != before:
                return UNCHANGED  # still being written: judge the next state instead
            self._failed = before
            return Outcome(error=str(exc))
        if fingerprint(self._paths) != before:
            return UNCHANGED
        self._seen = before
        self._failed = None
        self.current = loaded
        return Outcome(loaded=loaded)
