"""Responses the sidecar writes itself: errors, rejections and health answers.

Rare-path code, so clarity over speed; the common status lines are still precomputed.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

_STATUS_LINES: Final = {
    s.value: b"HTTP/1.1 %d %b\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}
# The same lines keyed by (status, reason): apps nearly always send the standard phrase, and a
# lookup is cheaper than formatting a status line for every response.
_LINES_BY_REASON: Final = {(s.value, s.phrase.encode()): _STATUS_LINES[s.value] for s in HTTPStatus}


_BODILESS: Final = frozenset({204, 304})


def status_line(status: int, reason: bytes = b"") -> bytes:
    if reason:
        line = _LINES_BY_REASON.get((status, reason))
        return line if line is not None else b"HTTP/1.1 %d %b\r\n" % (status, reason)
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


def local_reply(
    status: int,
    body: bytes,
    *,
    request_id_line: bytes | None,
    close: bool,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
) -> bytes:
    """A complete response with a Content-Length body; a 204 or 304 (only a hook's local
    answer is one) has neither body nor Content-Length (RFC 9110 §8.6, §15.3.5)."""
    if status in _BODILESS:
        lines = [status_line(status)]
    else:
        lines = [
            status_line(status),
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: %d\r\n" % len(body),
        ]
    if request_id_line:
        lines.append(request_id_line)
    for name, value in extra or ():
        lines += [name, b": ", value, b"\r\n"]
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only and status not in _BODILESS:
        lines.append(body)
    return b"".join(lines)


def error_body(status: int, detail: str) -> bytes:
    """A short plain-text body: the status phrase and what happened, for humans and curl."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return f"{status} {phrase}: {detail}\n".encode()
