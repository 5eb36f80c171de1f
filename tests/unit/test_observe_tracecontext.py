"""Trace id extraction: W3C traceparent first, then B3, then the request id."""

from __future__ import annotations

import pytest

from sidecar_proxy.observe.tracecontext import trace_id

TRACE = "0af7651916cd43dd8448eb211c80319c"
VALID = f"00-{TRACE}-b7ad6b7169203331-01".encode()
REQUEST_ID = "req-1"


def test_valid_traceparent() -> None:
    assert trace_id(VALID, None, REQUEST_ID) == (TRACE, True)


def test_traceparent_wins_over_b3() -> None:
    assert trace_id(VALID, b"463ac35c9f6413ad48485a3953bb6124", REQUEST_ID) == (TRACE, True)


def test_surrounding_whitespace_is_ignored() -> None:
    assert trace_id(b" " + VALID + b"\t", None, REQUEST_ID) == (TRACE, True)


@pytest.mark.parametrize(
    "header",
    [
        f"01-{TRACE}-b7ad6b7169203331-01".encode(),  # a later version, same layout
        f"cc-{TRACE}-b7ad6b7169203331-01-what-the-future-adds".encode(),  # ... plus new fields
        f"00-{TRACE}-b7ad6b7169203331-00".encode(),  # not sampled is still a trace
    ],
)
def test_accepted_traceparents(header: bytes) -> None:
    assert trace_id(header, None, REQUEST_ID) == (TRACE, True)


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"garbage",
        f"ff-{TRACE}-b7ad6b7169203331-01".encode(),  # version ff is forbidden
        f"00-{'0' * 32}-b7ad6b7169203331-01".encode(),  # all-zero trace id
        f"00-{TRACE}-0000000000000000-01".encode(),  # all-zero parent id
        f"00-{TRACE.upper()}-b7ad6b7169203331-01".encode(),  # uppercase hex
        f"00-{TRACE[:-1]}-b7ad6b7169203331-01".encode(),  # trace id too short
        f"00-{TRACE}0-b7ad6b7169203331-01".encode(),  # trace id too long
        f"00-{TRACE}-b7ad6b716920333-01".encode(),  # parent id too short
        f"00-{TRACE}-b7ad6b7169203331-1".encode(),  # flags too short
        f"00-{TRACE}-b7ad6b7169203331-01-extra".encode(),  # version 00 is exactly 55 chars
        f"01-{TRACE}-b7ad6b7169203331-01x".encode(),  # a later version needs "-" after flags
        f"0g-{TRACE}-b7ad6b7169203331-01".encode(),  # version not hex
        f"00-{TRACE[:-1]}z-b7ad6b7169203331-01".encode(),  # trace id not hex
        f"00_{TRACE}-b7ad6b7169203331-01".encode(),  # wrong separator
        f"00-{TRACE}-b7ad6b7169203331-0g".encode(),  # flags not hex
    ],
)
def test_rejected_traceparents_fall_back_to_request_id(header: bytes) -> None:
    assert trace_id(header, None, REQUEST_ID) == (REQUEST_ID, False)


@pytest.mark.parametrize(
    "b3", ["463ac35c9f6413ad48485a3953bb6124", "a3ce929d0e0e4736", " a3ce929d0e0e4736 "]
)
def test_valid_b3(b3: str) -> None:
    assert trace_id(None, b3.encode(), REQUEST_ID) == (b3.strip(), True)


def test_b3_used_when_traceparent_invalid() -> None:
    assert trace_id(b"nonsense", b"a3ce929d0e0e4736", REQUEST_ID) == ("a3ce929d0e0e4736", True)


@pytest.mark.parametrize(
    "b3",
    [
        b"",
        b"a3ce929d0e0e473",  # 15
        b"a3ce929d0e0e47361",  # 17
        b"A3CE929D0E0E4736",  # uppercase
        b"0000000000000000",  # all zero
        b"a3ce929d0e0e473g",
    ],
)
def test_invalid_b3_falls_back(b3: bytes) -> None:
    assert trace_id(None, b3, REQUEST_ID) == (REQUEST_ID, False)


def test_no_headers() -> None:
    assert trace_id(None, None, REQUEST_ID) == (REQUEST_ID, False)
