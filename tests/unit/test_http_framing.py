"""Message framing: who has a body (RFC 9110 §6.4.1), and chunked framing that llhttp reads back
as it was meant."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_proxy.http.framing import LAST_CHUNK, chunk_size_line, last_chunk, response_has_body


@pytest.mark.parametrize(
    ("size", "line"), [(0, b"0\r\n"), (255, b"ff\r\n"), (1 << 20, b"100000\r\n")]
)
def test_chunk_size_line_is_hex(size: int, line: bytes) -> None:
    assert chunk_size_line(size) == line


def test_last_chunk_carries_trailers_when_there_are_any() -> None:
    assert last_chunk([]) == LAST_CHUNK == b"0\r\n\r\n"
    assert (
        last_chunk([(b"X-Sum", b"5"), (b"X-Sig", b"ab")]) == b"0\r\nX-Sum: 5\r\nX-Sig: ab\r\n\r\n"
    )


@pytest.mark.parametrize("status", [100, 101, 103, 199, 204, 304])
def test_no_body_in_1xx_204_and_304(status: int) -> None:
    assert not response_has_body(b"GET", status)


@pytest.mark.parametrize("status", [200, 201, 206, 301, 404, 500, 503])
def test_a_body_in_every_other_response_to_get(status: int) -> None:
    assert response_has_body(b"GET", status)
    assert response_has_body(b"POST", status)


@pytest.mark.parametrize("status", [200, 404, 500])
def test_no_body_in_any_response_to_head(status: int) -> None:
    assert not response_has_body(b"HEAD", status)


class Collected:
    def __init__(self) -> None:
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.in_body = False

    def on_headers_complete(self) -> None:
        self.in_body = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:
            self.trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ,;=", max_size=20).map(
    lambda s: s.strip().encode()
)


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    trailers=st.lists(st.tuples(TOKEN.map(lambda t: b"x-" + t), VALUE), max_size=4),
)
def test_chunked_framing_reads_back_as_the_body_and_trailers_it_framed(
    chunks: list[bytes], trailers: list[tuple[bytes, bytes]]
) -> None:
    wire = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for data in chunks:
        wire += [chunk_size_line(len(data)), data, b"\r\n"]
    wire.append(last_chunk(trailers))
    got = Collected()
    httptools.HttpResponseParser(got).feed_data(b"".join(wire))
    assert got.complete
    assert got.body == b"".join(chunks)
    assert got.trailers == trailers
