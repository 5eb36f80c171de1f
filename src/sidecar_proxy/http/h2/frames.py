"""HTTP/2 frames on the wire (RFC 9113 §4, §6): the numbers, and the frames the proxy writes.

Reading is done in :mod:`sidecar_proxy.http.h2.connection`, inline in its read loop, because a
call per frame is a measurable share of a small exchange; what lives here is what both sides
write. Every builder returns ready bytes: the connection gathers them and writes once per read.
"""

from __future__ import annotations

import struct
from typing import Final

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4, what a client sends first

# frame types (RFC 9113 §6)
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# error codes (RFC 9113 §7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
CONNECT_ERROR: Final = 0xA
ENHANCE_YOUR_CALM: Final = 0xB
INADEQUATE_SECURITY: Final = 0xC
HTTP_1_1_REQUIRED: Final = 0xD

# settings (RFC 9113 §6.5.2)
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_WINDOW: Final = 65_535
DEFAULT_FRAME_SIZE: Final = 16_384  # the proxy never asks for larger frames than this
MAX_WINDOW: Final = 2**31 - 1
MAX_FRAME_SIZE_LIMIT: Final = 2**24 - 1
MAX_STREAM_ID: Final = 2**31 - 1

# length (24 bits, as a high byte and a low 16 bits), type, flags, stream id (the R bit masked)
HEAD: Final = struct.Struct(">BHBBL")
_U32: Final = struct.Struct(">L")
_SETTING: Final = struct.Struct(">HL")


def preface_kind(data: bytes) -> bool | None:
    """Whether a connection's first bytes are HTTP/2's preface: True, False, or None while they
    are too few to tell."""
    if len(data) >= len(PREFACE):
        return data.startswith(PREFACE)
    return None if PREFACE.startswith(data) else False


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return HEAD.pack(size >> 16, size & 0xFFFF, ftype, flags, stream_id) + payload


def settings(values: list[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The identifier-value pairs of a SETTINGS payload whose length is a multiple of six."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


SETTINGS_ACK: Final = frame(SETTINGS, ACK, 0)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + debug)


def ping(payload: bytes, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, payload)


def u32(payload: bytes, offset: int = 0) -> int:
    """A 31-bit stream id or window increment (the reserved high bit masked off)."""
    return int(_U32.unpack_from(payload, offset)[0]) & 0x7FFFFFFF


def u32_full(payload: bytes, offset: int = 0) -> int:
    """A full 32-bit value: an error code."""
    return int(_U32.unpack_from(payload, offset)[0])


def header_block(
    stream_id: int, block: bytes, end_stream: bool, max_frame: int, out: list[bytes]
) -> None:
    """A HEADERS frame and, when the block is larger than one frame may be, CONTINUATIONs."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        out.append(frame(HEADERS, flags | END_HEADERS, stream_id, block))
        return
    out.append(frame(HEADERS, flags, stream_id, block[:max_frame]))
    pos = max_frame
    while pos < len(block):
        part = block[pos : pos + max_frame]
        pos += max_frame
        out.append(frame(CONTINUATION, END_HEADERS if pos >= len(block) else 0, stream_id, part))
