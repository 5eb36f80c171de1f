"""Bounded ``method`` and ``path`` label values for the request metrics.

Every distinct label value is a new time series in Prometheus, so raw request paths can never be
labels: ``/users/123`` and ``/users/124`` must be one series. :class:`PathLabeler` replaces
identifier-like segments with ``:id`` (the seed's rule for all-digit segments, extended to UUIDs,
long hex strings and base64-like tokens) and then caps the number of distinct labels: once
``limit`` labels exist, every new one is reported as ``other``. The worst case is therefore
``limit + 1`` path values no matter what clients send.

The labeler runs on the event loop for every request, so it caches raw path -> label: the common
case is one dict lookup (~40 ns). The cache is cleared when it fills, which keeps memory bounded
under a scan of random paths while costing nothing in steady state.
"""

from __future__ import annotations

import re
from typing import Final

ID: Final = ":id"
OTHER: Final = "other"

# A label longer than this is junk (scanners, path-traversal probes); it would also bloat every
# scrape and the label set held here, so it is reported as ``other``.
_MAX_LABEL_CHARS: Final = 256
# Paths longer than this are normalised every time rather than cached, so the cache holds at most
# _CACHE_SIZE short strings (a few MiB) even when every request has a huge random path.
_MAX_CACHED_PATH_CHARS: Final = 256
_CACHE_SIZE: Final = 10_000

_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_HEX: Final = re.compile(r"[0-9a-fA-F]{16,}")
# base64 and base64url alphabets plus padding; the digit requirement keeps long ordinary words
# ("internationalization") as they are.
_TOKEN: Final = re.compile(r"(?=[^0-9]*[0-9])[A-Za-z0-9+_=-]{20,}")

# RFC 9110 section 9 plus PATCH (RFC 5789). Anything else is one ``OTHER`` value, so a client
# inventing methods cannot create series.
_STANDARD_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


def method_label(method: str) -> str:
    """The ``method`` label value: the method itself if standard, else ``OTHER``."""
    return method if method in _STANDARD_METHODS else "OTHER"


def _is_id(segment: str) -> bool:
    if segment.isascii() and segment.isdigit():  # isdigit alone accepts "²" and other scripts
        return True
    if len(segment) < 16:
        return False
    return bool(_UUID.fullmatch(segment) or _HEX.fullmatch(segment) or _TOKEN.fullmatch(segment))


def normalise(path: str) -> str:
    """``path`` with every identifier-like segment replaced by ``:id``."""
    return "/".join([ID if _is_id(s) else s for s in path.split("/")])


class PathLabeler:
    """Maps raw request paths to at most ``limit`` distinct labels plus ``other``."""

    __slots__ = ("_cache", "_labels", "_limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"path label limit must be at least 1, got {limit}")
        self._limit = limit
        self._labels: set[str] = set()
        self._cache: dict[str, str] = {}

    @property
    def limit(self) -> int:
        return self._limit

    def label(self, path: str) -> str:
        label = self._cache.get(path)
        if label is not None:
            return label
        label = normalise(path)
        if label not in self._labels:
            if len(self._labels) >= self._limit or len(label) > _MAX_LABEL_CHARS:
                label = OTHER
            else:
                self._labels.add(label)
        if len(path) <= _MAX_CACHED_PATH_CHARS:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[path] = label
        return label


class GrpcLabeler:
    """Maps a gRPC call's path (``/package.Service/Method``) to its ``service`` and ``method``
    label values: at most ``limit`` distinct pairs (the path labels' cap), then ``other``; a path
    of another shape is ``other`` at once. gRPC paths name code, not data, so they are not
    normalised: a method called ``GetV2Token1234567890abcd`` stays itself."""

    __slots__ = ("_labels", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._labels: dict[str, tuple[str, str]] = {}

    def label(self, path: str) -> tuple[str, str]:
        labels = self._labels.get(path)
        if labels is not None:
            return labels
        service, sep, method = path[1:].partition("/")
        if (
            len(self._labels) >= self._limit
            or len(path) > _MAX_LABEL_CHARS
            or path[:1] != "/"
            or not (service and sep and method)
            or "/" in method
        ):
            return OTHER, OTHER
        labels = self._labels[path] = (service, method)
        return labels
