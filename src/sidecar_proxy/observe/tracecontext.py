"""The trace id a request belongs to, read (never modified) from its headers.

Sources, first valid one wins:

1. W3C Trace Context ``traceparent`` (https://www.w3.org/TR/trace-context/, "traceparent Header"):
   ``version "-" trace-id "-" parent-id "-" trace-flags``, all lowercase hex.
2. Zipkin B3 ``X-B3-TraceId``: 16 or 32 lowercase hex characters.
3. The request id, so every log line still has something to correlate on.

The boolean returned says whether the id came from a trace header; only such ids are worth
attaching to metrics as exemplars, because only they lead to a trace in a tracing backend.

No tracing SDK: the sidecar forwards trace headers untouched and only needs the id for logs and
exemplars. Invalid headers are ignored rather than rejected, as the specification asks of a
participant that does not own the trace.
"""

from __future__ import annotations

_HEX = b"0123456789abcdef"
_TRACEPARENT_LEN = 55  # "00-" + 32 + "-" + 16 + "-" + 2
_ZERO_TRACE_ID = b"0" * 32
_ZERO_PARENT_ID = b"0" * 16
_OWS = b" \t"


def _is_lower_hex(value: bytes) -> bool:
    # translate() deletes every hex digit in C; anything left over is not lowercase hex.
    return not value.translate(None, _HEX)


def _traceparent_trace_id(header: bytes) -> bytes | None:
    header = header.strip(_OWS)
    size = len(header)
    if size < _TRACEPARENT_LEN:
        return None
    version = header[:2]
    if not _is_lower_hex(version) or version == b"ff":  # the spec forbids version ff
        return None
    # Version 00 is exactly 55 characters. A later version may append fields after another "-";
    # "Versioning of traceparent" says to parse its first four fields the version-00 way.
    if size > _TRACEPARENT_LEN and (version == b"00" or header[55:56] != b"-"):
        return None
    if header[2:3] != b"-" or header[35:36] != b"-" or header[52:53] != b"-":
        return None
    trace_id = header[3:35]
    parent_id = header[36:52]
    if not (_is_lower_hex(trace_id) and _is_lower_hex(parent_id) and _is_lower_hex(header[53:55])):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:  # both all-zero are invalid
        return None
    return trace_id


def _b3_trace_id(header: bytes) -> bytes | None:
    header = header.strip(_OWS)
    if len(header) not in (16, 32) or not _is_lower_hex(header) or not header.strip(b"0"):
        return None
    return header


def trace_id(
    traceparent: bytes | None, b3_trace_id: bytes | None, request_id: str
) -> tuple[str, bool]:
    """``(trace id, came from a trace header)`` for a request; see the module docstring."""
    if traceparent is not None:
        found = _traceparent_trace_id(traceparent)
        if found is not None:
            return found.decode("ascii"), True
    if b3_trace_id is not None:
        found = _b3_trace_id(b3_trace_id)
        if found is not None:
            return found.decode("ascii"), True
    return request_id, False
